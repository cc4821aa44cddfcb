"""Starting from a published checkpoint: ``avvsr-convert`` and ``model.init_weights`` take the
BasicSR / mmagic / SPyNet files (random tensors with the reference key names and shapes of
``tests/data/reference_keys.json``, saved as the zoos save them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from avvsr.checkpoint import load_model, read_weights
from avvsr.cli import convert as convert_cli
from avvsr.cli import upscale as upscale_cli
from avvsr.config import build_lit_module, compose
from avvsr.data.io import probe_video
from media import write_test_video

REFERENCE = json.loads((Path(__file__).parent / "data" / "reference_keys.json").read_text())


pytestmark = pytest.mark.usefixtures("one_thread")


def published(path: Path, fmt: str, name: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint of ``name`` as the zoo of ``fmt`` saves it, random tensors."""
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator) * 0.05
             for key, shape in REFERENCE[fmt][name].items()}
    if fmt == "mmagic":
        blob = {"meta": {}, "state_dict": {f"generator.{k}": v for k, v in state.items()}}
    elif fmt == "basicsr":
        blob = {"params": state}
    else:
        blob = state
    torch.save(blob, path)
    return path, state


def fusion_model(backbone: str, *overrides: str):
    config = compose("train", [f"model/backbone={backbone}", "model/fusion=msavf", *overrides])
    return build_lit_module(config.model)


def test_a_basicsr_checkpoint_converts_upscales_and_starts_a_fusion_model(tmp_path, capsys):
    source, state = published(tmp_path / "BasicVSR_REDS4.pth", "basicsr", "basicvsr")
    exported = tmp_path / "basicvsr.safetensors"
    assert convert_cli.main([str(source), str(exported)]) == 0
    printed = capsys.readouterr().err
    assert "basicsr basicvsr (params)" in printed
    assert f"model/backbone=basicvsr model/fusion=msavf model.init_weights={exported}" in printed

    model = load_model(exported)
    assert not model.uses_audio and len(model.net.backbone.state_dict()) == len(state)
    video = write_test_video(tmp_path / "clip.mp4", num_frames=3, height=16, width=16)
    out = tmp_path / "up.mp4"
    assert upscale_cli.main([str(video), str(out), "--ckpt", str(exported), "--quiet"]) == 0
    assert (probe_video(out).width, probe_video(out).num_frames) == (64, 3)

    lq, audio = torch.rand(1, 3, 3, 16, 16), torch.randn(1, 3, 64, 33)
    with torch.no_grad():
        reference = model.net(lq).sr
        for start in (exported, source):  # the export, or the published file itself
            fused = fusion_model("basicvsr", f"model.init_weights={start}").net.eval()
            assert torch.equal(fused(lq, audio).sr, reference), start  # MS-AVF at identity


def test_an_mmagic_edvr_keeps_basicsrs_clip_ends(tmp_path, capsys):
    source, _ = published(tmp_path / "edvrm.pth", "mmagic", "edvr")
    exported = tmp_path / "edvr.safetensors"
    assert convert_cli.main([str(source), str(exported)]) == 0
    assert "model.backbone.clip_ends=basicsr" in capsys.readouterr().err
    assert load_model(exported).model_config["backbone"]["clip_ends"] == "basicsr"


def test_spynet_weights_fill_the_flow_network(tmp_path):
    source, state = published(tmp_path / "spynet_sintel_final.pth", "spynet", "spynet")
    model = fusion_model("basicvsr", f"model.init_weights={source}")
    spynet = model.net.backbone.spynet.state_dict()
    weights = read_weights(source)
    assert all(key.startswith("backbone.spynet.") for key in weights)
    for key, value in weights.items():
        assert torch.equal(spynet[key.removeprefix("backbone.spynet.")], value), key
    exported = tmp_path / "spynet.safetensors"
    assert convert_cli.main([str(source), str(exported)]) == 0
    assert read_weights(exported).keys() == weights.keys()


def test_files_that_do_not_convert_are_refused_with_the_reason(tmp_path, capsys):
    wrong, state = published(tmp_path / "wrong.pth", "basicsr", "basicvsr")
    key = next(k for k in state if k.endswith("weight"))
    torch.save({"params": {**state, key: torch.zeros(3)}}, wrong)
    other = tmp_path / "other.pth"
    torch.save({"params": {"layer.weight": torch.zeros(3)}}, other)
    plain = tmp_path / "plain.pth"
    torch.save({"layer.weight": torch.zeros(3)}, plain)
    exists = tmp_path / "exists.safetensors"
    exists.write_bytes(b"keep")
    cases = [
        (wrong, tmp_path / "a.safetensors", f"wrong.pth: .*shapes differ: {key}"),
        (other, tmp_path / "b.safetensors", "other.pth: no known VSR network"),
        (plain, tmp_path / "c.safetensors", "plain.pth: not a BasicSR"),
        (wrong, tmp_path / "d.pt", "d.pt: exports are safetensors files"),
        (plain, exists, "exists.safetensors: exists already"),
    ]
    for source, output, reason in cases:
        with pytest.raises(SystemExit) as exit_info:
            convert_cli.main([str(source), str(output)])
        assert exit_info.value.code == 2
        assert re.search(f"avvsr-convert: .*{reason}", capsys.readouterr().err), reason
    assert exists.read_bytes() == b"keep"
    assert not any(p.name.startswith(("a.", "b.", "c.", "d.")) for p in tmp_path.iterdir())
