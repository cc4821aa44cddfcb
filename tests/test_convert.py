"""Converting published checkpoints (BasicSR, mmagic, SPyNet) to avvsr backbones.

The reference key names and shapes are in ``tests/data/reference_keys.json``, written by
``benchmarks/reference_parity.py --dump-keys`` from BasicSR's networks (mmagic's: BasicSR's
renamed with mmagic's names, see that script; its parity section checks these keys and shapes
against mmagic 1.2.0's own networks, the "fixture keys" column).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avvsr.errors import ConversionError, WeightsError
from avvsr.models.convert import (
    build_backbone,
    convert_state_dict,
    to_source_state_dict,
)

REFERENCE = json.loads((Path(__file__).parent / "data" / "reference_keys.json").read_text())
BACKBONES = ["basicvsr", "iconvsr", "basicvsrpp", "edvr", "edvr_l"]
CASES = [(fmt, name) for fmt in ("basicsr", "mmagic") for name in BACKBONES]
CASES.append(("spynet", "spynet"))
WINDOWED = {"iconvsr", "edvr", "edvr_l"}  # published weights expect BasicSR's clip ends
SMALL = {  # reduced sizes, to check that the sizes are read from the shapes
    "basicvsr": {"num_feat": 16, "num_blocks": 2, "spynet": {"num_levels": 3, "channels": [8, 4]}},
    "iconvsr": {"num_feat": 16, "num_blocks": 1, "num_frames": 3, "deformable_groups": 2,
                "num_extract_blocks": 2},
    "basicvsrpp": {"num_feat": 16, "num_blocks": 1, "num_extract_blocks": 2,
                   "num_reconstruct_blocks": 1, "deformable_groups": 4},
    "edvr": {"num_feat": 16, "num_frames": 3, "deformable_groups": 2, "num_extract_blocks": 1,
             "num_reconstruct_blocks": 2},
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def random_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def zoo_blob(fmt: str, state: dict[str, torch.Tensor]) -> dict:
    """``state`` wrapped as the zoo of ``fmt`` saves it."""
    if fmt == "mmagic":
        return {"meta": {}, "state_dict": {f"generator.{k}": v for k, v in state.items()}}
    return {"params": state}


@pytest.mark.parametrize(("fmt", "name"), CASES)
def test_every_reference_tensor_is_placed_and_loads_strictly(fmt: str, name: str) -> None:
    state = random_state(REFERENCE[fmt][name])
    converted = convert_state_dict(zoo_blob(fmt, state), source=f"{name}.pth")
    assert (converted.backbone, converted.source_format) == (name, fmt)
    assert converted.unplaced == converted.missing == converted.dropped == ()
    assert converted.backbone_overrides == ({"clip_ends": "basicsr"} if name in WINDOWED else {})
    placed = {id(tensor) for tensor in converted.state.values()}
    assert all(id(tensor) in placed for tensor in state.values())  # each one, unchanged
    model = build_backbone(converted.backbone, converted.backbone_overrides)
    model.load_state_dict(converted.state, strict=True)
    assert len(converted.state) == len(model.state_dict())


@pytest.mark.parametrize(("fmt", "name"), CASES)
def test_renaming_back_gives_the_reference_keys(fmt: str, name: str) -> None:
    state = random_state(REFERENCE[fmt][name])
    converted = convert_state_dict(zoo_blob(fmt, state), source=f"{name}.pth")
    back = to_source_state_dict(converted.state, name, fmt, converted.backbone_overrides)
    filled = {"mean", "std"} if fmt == "spynet" else set()  # the published file has no buffers
    assert set(back) == set(state) | filled
    assert all(back[key] is tensor for key, tensor in state.items())


@pytest.mark.parametrize("fmt", ["basicsr", "mmagic"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_sizes_are_read_from_the_shapes(fmt: str, name: str) -> None:
    model = build_backbone(name, SMALL[name])
    source = to_source_state_dict(model.state_dict(), name, fmt, SMALL[name])
    converted = convert_state_dict(zoo_blob(fmt, source), source="small.pth")
    rebuilt = build_backbone(converted.backbone, converted.backbone_overrides)
    rebuilt.load_state_dict(converted.state, strict=True)
    for key, value in SMALL[name].items():
        if key == "spynet":
            assert converted.backbone_overrides["spynet"] == {**value, "kernel_size": 7}
        else:
            assert converted.backbone_overrides[key] == value


def test_params_ema_is_preferred_and_recorded() -> None:
    ema = random_state(REFERENCE["basicsr"]["basicvsr"])
    plain = {key: torch.zeros_like(value) for key, value in ema.items()}
    converted = convert_state_dict({"params": plain, "params_ema": ema}, source="both.pth")
    assert converted.wrapper_key == "params_ema"
    assert converted.state["fusion.weight"] is ema["fusion.weight"]


def test_other_networks_of_an_mmagic_checkpoint_are_dropped() -> None:
    blob = zoo_blob("mmagic", random_state(REFERENCE["mmagic"]["edvr"]))
    blob["state_dict"]["discriminator.conv.weight"] = torch.zeros(1)
    converted = convert_state_dict(blob, source="gan.pth")
    assert converted.dropped == ("discriminator.conv.weight",)


def broken(name: str, change) -> dict:
    state = random_state(REFERENCE["basicsr"][name])
    change(state)
    return {"params": state}


@pytest.mark.parametrize("name", BACKBONES)
def test_a_wrong_shape_is_named(name: str) -> None:
    def widen(state):
        state["conv_last.weight"] = torch.zeros(3, 65, 3, 3)

    with pytest.raises(ConversionError, match=r"wrong\.pth: .*conv_last\.weight \(3, 65, 3, 3\)"):
        convert_state_dict(broken(name, widen), source="wrong.pth")


@pytest.mark.parametrize("name", BACKBONES)
def test_an_unknown_key_is_named(name: str) -> None:
    def add(state):
        state["extra_head.weight"] = torch.zeros(3)

    with pytest.raises(ConversionError, match=r"extra\.pth: .*not placed.*extra_head\.weight"):
        convert_state_dict(broken(name, add), source="extra.pth")
    converted = convert_state_dict(broken(name, add), source="extra.pth", strict=False)
    assert converted.unplaced == ("extra_head.weight",)


@pytest.mark.parametrize("name", BACKBONES)
def test_a_missing_key_is_named(name: str) -> None:
    def drop(state):
        del state["conv_hr.bias"]

    with pytest.raises(ConversionError, match=r"short\.pth: .*missing: conv_hr\.bias"):
        convert_state_dict(broken(name, drop), source="short.pth")


def test_basicvsrpp_built_without_cuda_is_refused() -> None:
    def strip_alignment(state):
        for key in [k for k in state if k.startswith("deform_align.")]:
            del state[key]

    with pytest.raises(ConversionError, match="cpu.pth: .*deform_align.*CUDA"):
        convert_state_dict(broken("basicvsrpp", strip_alignment), source="cpu.pth")


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        ([1, 2], "not a checkpoint dict"),
        ({"params": {"a": 1}}, "not tensors: a"),
        ({"params": {}}, "no tensors"),
        ({"head.weight": torch.zeros(1)}, "no known VSR network"),
    ],
)
def test_files_that_are_no_vsr_checkpoint(blob, reason: str) -> None:
    with pytest.raises(ConversionError, match=f"odd.pth: .*{reason}") as caught:
        convert_state_dict(blob, source="odd.pth")
    assert isinstance(caught.value, WeightsError) and caught.value.path == "odd.pth"
