"""Published VSR checkpoints (BasicSR's and mmagic's model zoos) as avvsr backbone state dicts.

Pure functions on state dicts; nothing here reads or writes a file::

    converted = convert_state_dict(torch.load(path, weights_only=True), source=str(path))
    converted.backbone            # conf/model/backbone option: "basicvsr", "edvr_l", ...
    converted.backbone_overrides  # config values the weights imply that differ from its yaml
    converted.state               # avvsr keys of the backbone module (no "backbone." prefix)

Formats (``source_format``):

- ``"basicsr"``: BasicSR's ``{"params": ..., "params_ema": ...}`` (either or both; with both,
  ``params_ema`` is taken: the averaged weights are the ones BasicSR's trainings keep for
  evaluation) or a bare state dict with BasicSR's key names.
- ``"mmagic"``: mmagic's / mmediting's ``{"state_dict": {"generator.<key>": ...}, "meta": ...}``
  (or a bare generator state dict with mmagic's key names). Keys outside the generator
  (discriminators, data preprocessors, losses) are reported in ``dropped``, never converted.
- ``"spynet"``: SPyNet alone, as BasicSR's ``spynet_sintel_final-3d2a1287.pth`` lays it out
  (``basic_module.N.basic_module.M``) or mmagic's (``basic_module.N.basic_module.M.conv``);
  the state then has the keys of :class:`~avvsr.models.backbones.blocks.SPyNet`.

Detection reads the key names only; the architecture's sizes (channels, blocks, window,
deformable groups, SPyNet's levels and widths) come from the tensors' shapes, and every tensor
is checked against an avvsr backbone built from that config. Anything the conversion cannot
place, any avvsr tensor left without a source, and any shape that differs raise a
:class:`~avvsr.errors.ConversionError` naming the file and every such key: a zoo file never
loads partially. The SPyNet normalisation buffers (``mean``, ``std``: constants, not learned)
are taken from the avvsr module when a file lacks them (the published SPyNet files do).

EDVR's and IconVSR's published weights expect BasicSR's clip-end convention, so their
``backbone_overrides`` hold ``clip_ends: basicsr`` (:data:`avvsr.models.backbones.edvr.CLIP_ENDS`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from avvsr.errors import ConversionError

SOURCE_FORMATS = ("basicsr", "mmagic", "spynet")
BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")
PCD_LEVELS = ("l3", "l2", "l1")  # BasicSR's level names, coarsest first like avvsr's indices
DEFORM_TAPS = 9  # 3x3 deformable kernels: an offset conv predicts 3 * 9 channels per group


@dataclass(frozen=True)
class ConvertedWeights:
    """A published checkpoint converted to an avvsr backbone.

    Attributes:
        backbone: the ``conf/model/backbone`` option the weights fit ("basicvsr", "iconvsr",
            "basicvsrpp", "edvr", "edvr_l"), or "spynet" for SPyNet alone.
        source_format: "basicsr", "mmagic" or "spynet".
        backbone_overrides: config values of the backbone that the weights imply and that
            differ from the option's yaml (sizes read from the shapes, ``clip_ends``).
        state: avvsr key -> tensor for the backbone module itself (no ``backbone.`` prefix);
            loads with ``strict=True`` into the backbone built with the overrides.
        unplaced: source keys that could not be placed (empty unless ``strict=False``).
        missing: avvsr keys with no source tensor (empty unless ``strict=False``).
        dropped: keys of a checkpoint's other networks (not the generator), ignored.
        wrapper_key: the checkpoint entry the tensors came from ("params_ema", "params",
            "state_dict"), or "" for a bare state dict.
    """

    backbone: str
    source_format: str
    backbone_overrides: dict[str, Any]
    state: dict[str, Tensor]
    unplaced: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    wrapper_key: str = ""


@dataclass
class _Table:
    """avvsr module path -> source module path, per format; built from a backbone's config."""

    basicsr: dict[str, str] = field(default_factory=dict)
    mmagic: dict[str, str] = field(default_factory=dict)

    def add(self, avvsr: str, basicsr: str, mmagic: str | None = None) -> None:
        self.basicsr[avvsr] = basicsr
        self.mmagic[avvsr] = basicsr if mmagic is None else mmagic


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ----------------------------------------------------------------------------------------
# avvsr module path -> source module path, block by block


def _conv_residual_blocks(table: _Table, avvsr: str, source: str, mmagic: str, blocks: int) -> None:
    """avvsr ConvResidualBlocks (flat) <-> BasicSR ConvResidualBlocks / mmagic
    ResidualBlocksWithInputConv (``main.0`` conv, ``main.2.<i>`` residual blocks)."""
    table.add(f"{avvsr}.0", f"{source}.main.0", f"{mmagic}.main.0")
    for index in range(blocks):
        for conv in ("conv1", "conv2"):
            table.add(
                f"{avvsr}.{2 + index}.{conv}",
                f"{source}.main.2.{index}.{conv}",
                f"{mmagic}.main.2.{index}.{conv}",
            )


def _residual_blocks(table: _Table, avvsr: str, source: str, blocks: int) -> None:
    for index in range(blocks):
        for conv in ("conv1", "conv2"):
            name = f"{index}.{conv}"
            table.add(_join(avvsr, name), _join(source, name))


def _spynet(table: _Table, avvsr: str, source: str, num_levels: int, num_convs: int) -> None:
    """avvsr SPyNet ``refiners.<l>.<2j>`` <-> BasicSR ``basic_module.<l>.basic_module.<2j>``
    / mmagic ``basic_module.<l>.basic_module.<j>.conv`` (ConvModules); buffers as they are."""
    table.add(avvsr, source)
    for level in range(num_levels):
        for conv in range(num_convs):
            table.add(
                _join(avvsr, f"refiners.{level}.{2 * conv}"),
                _join(source, f"basic_module.{level}.basic_module.{2 * conv}"),
                _join(source, f"basic_module.{level}.basic_module.{conv}.conv"),
            )


def _head(table: _Table) -> None:
    """The x4 pixel-shuffle head (two x2 stages: conv, shuffle, ReLU each)."""
    table.add("head.upsample.0", "upconv1", "upsample1.upsample_conv")
    table.add("head.upsample.3", "upconv2", "upsample2.upsample_conv")
    table.add("head.conv_hr", "conv_hr")
    table.add("head.conv_last", "conv_last")


def _window_fusion(table: _Table, avvsr: str, source: str, extract_blocks: int) -> None:
    """avvsr WindowFusion <-> EDVR's front end (BasicSR ``EDVR`` / ``EDVRFeatureExtractor``,
    mmagic ``EDVRNet`` / ``EDVRFeatureExtractor``)."""
    table.add(f"{avvsr}.feat_extract.0", _join(source, "conv_first"))
    for index in range(extract_blocks):
        for conv in ("conv1", "conv2"):
            table.add(
                f"{avvsr}.feat_extract.{2 + index}.{conv}",
                _join(source, f"feature_extraction.{index}.{conv}"),
            )
    for level in (2, 3):
        for step, layer in ((1, 0), (2, 2)):
            table.add(
                f"{avvsr}.downsample.{level - 2}.{layer}",
                _join(source, f"conv_l{level}_{step}"),
                _join(source, f"feat_l{level}_conv{step}.conv"),
            )
    pcd, pcd_bsr, pcd_mm = (
        f"{avvsr}.pcd_align",
        _join(source, "pcd_align"),
        _join(source, "pcd_alignment"),
    )

    def add_pcd(avvsr_name: str, bsr_name: str, conv_module: bool = True) -> None:
        mm_name = f"{bsr_name}.conv" if conv_module else bsr_name
        table.add(f"{pcd}.{avvsr_name}", f"{pcd_bsr}.{bsr_name}", f"{pcd_mm}.{mm_name}")

    for index, level in enumerate(PCD_LEVELS):
        add_pcd(f"offset_in.{index}.0", f"offset_conv1.{level}")
        add_pcd(f"offset_refine.{index}.0", f"offset_conv2.{level}")
        if index > 0:
            add_pcd(f"offset_refine.{index}.2", f"offset_conv3.{level}")
            add_pcd(f"merge.{index - 1}", f"feat_conv.{level}")
        add_pcd(f"deform.{index}.deform", f"dcn_pack.{level}", conv_module=False)
        add_pcd(f"deform.{index}.conv_offset", f"dcn_pack.{level}.conv_offset", conv_module=False)
    add_pcd("cascade_offset.0", "cas_offset_conv1")
    add_pcd("cascade_offset.2", "cas_offset_conv2")
    add_pcd("cascade_deform.deform", "cas_dcnpack", conv_module=False)
    add_pcd("cascade_deform.conv_offset", "cas_dcnpack.conv_offset", conv_module=False)
    tsa, tsa_src = f"{avvsr}.tsa_fusion", _join(source, "fusion")
    for avvsr_name, src_name, conv_module in (
        ("embed_centre", "temporal_attn1", False),
        ("embed_neighbour", "temporal_attn2", False),
        ("fuse", "feat_fusion", True),
        ("attn_in", "spatial_attn1", True),
        ("attn_pooled", "spatial_attn2", True),
        ("attn_level_in", "spatial_attn_l1", True),
        ("attn_level_pooled", "spatial_attn_l2", True),
        ("attn_level_out", "spatial_attn_l3", True),
        ("attn_mid", "spatial_attn3", True),
        ("attn_mid_1x1", "spatial_attn4", True),
        ("attn_out", "spatial_attn5", False),
        ("attn_add.0", "spatial_attn_add1", True),
        ("attn_add.2", "spatial_attn_add2", False),
    ):
        mm_name = f"{src_name}.conv" if conv_module else src_name
        table.add(f"{tsa}.{avvsr_name}", f"{tsa_src}.{src_name}", f"{tsa_src}.{mm_name}")


def _table(backbone: str, config: Mapping[str, Any]) -> _Table:
    """The module-path table of ``backbone`` built with ``config`` (its sizes)."""
    table = _Table()
    if backbone == "spynet":
        _spynet(table, "", "", config["num_levels"], len(config["channels"]) + 1)
        return table
    spynet = config.get("spynet") or {}
    if backbone in ("basicvsr", "iconvsr", "basicvsrpp"):
        channels = spynet.get("channels", (32, 64, 32, 16))
        _spynet(table, "spynet", "spynet", spynet.get("num_levels", 6), len(channels) + 1)
    if backbone in ("basicvsr", "iconvsr"):
        for direction in ("backward", "forward"):
            _conv_residual_blocks(
                table,
                f"{direction}_trunk",
                f"{direction}_trunk",
                f"{direction}_resblocks",
                config["num_blocks"],
            )
    if backbone == "basicvsr":
        table.add("fusion", "fusion")
    elif backbone == "iconvsr":
        _window_fusion(table, "keyframe_fusion", "edvr", config["num_extract_blocks"])
        table.add("backward_refill", "backward_fusion")
        table.add("forward_refill", "forward_fusion")
    elif backbone == "basicvsrpp":
        _conv_residual_blocks(
            table, "feat_extract", "feat_extract", "feat_extract", config["num_extract_blocks"]
        )
        for name in BRANCHES:
            table.add(f"align.{name}.deform", f"deform_align.{name}")
            for layer in (0, 2, 4, 6):
                table.add(
                    f"align.{name}.offset_net.{layer}", f"deform_align.{name}.conv_offset.{layer}"
                )
            trunk = f"backbone.{name}"
            _conv_residual_blocks(table, f"trunks.{name}", trunk, trunk, config["num_blocks"])
        blocks = config["num_reconstruct_blocks"]
        _conv_residual_blocks(table, "reconstruction", "reconstruction", "reconstruction", blocks)
    else:  # edvr, edvr_l
        _window_fusion(table, "window_fusion", "", config["num_extract_blocks"])
        _residual_blocks(
            table, "reconstruction", "reconstruction", config["num_reconstruct_blocks"]
        )
    _head(table)
    return table


# ----------------------------------------------------------------------------------------
# unwrapping and detection


def _unwrap(blob: Mapping[str, Any], source: str) -> tuple[dict[str, Tensor], str, str, list[str]]:
    """``(tensors, wrapper_key, hinted_format, dropped_keys)`` of a checkpoint object."""
    if not isinstance(blob, Mapping):
        raise ConversionError(source, f"holds a {type(blob).__name__}, not a checkpoint dict")
    for key in ("params_ema", "params"):
        if isinstance(blob.get(key), Mapping):
            return _tensors(blob[key], source, key), key, "basicsr", []
    if isinstance(blob.get("state_dict"), Mapping):
        state = _tensors(blob["state_dict"], source, "state_dict")
        if any(key.startswith("generator.") for key in state):
            generator = {
                k.removeprefix("generator."): v
                for k, v in state.items()
                if k.startswith("generator.")
            }
            dropped = sorted(k for k in state if not k.startswith("generator."))
            return generator, "state_dict", "mmagic", dropped
        return state, "state_dict", "", []
    return _tensors(blob, source, ""), "", "", []


def _tensors(state: Mapping[str, Any], source: str, where: str) -> dict[str, Tensor]:
    others = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if others:
        place = f" under {where!r}" if where else ""
        raise ConversionError(source, f"entries{place} that are not tensors: {', '.join(others)}")
    if not state:
        raise ConversionError(source, "holds no tensors")
    return dict(state)


def _looks_mmagic(keys: set[str]) -> bool:
    """mmagic's names: ``upsample1.upsample_conv``, ``*_resblocks``, ConvModules' ``.conv.``."""
    return any(
        k.startswith("upsample1.upsample_conv")
        or "_resblocks." in k
        or ".conv.weight" in k
        or k.startswith("pcd_alignment.")
        or ".pcd_alignment." in k
        for k in keys
    )


def _detect_backbone(keys: set[str], source: str) -> str:
    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in keys)

    if all(key.startswith("basic_module.") for key in keys):
        return "spynet"
    if has("edvr.") and has("backward_fusion."):
        return "iconvsr"
    if has("backbone.backward_1."):
        if not has("deform_align."):
            raise ConversionError(
                source,
                "a BasicVSR++ checkpoint without its deformable alignment (deform_align.*): "
                "BasicSR builds BasicVSR++ without it when CUDA is not available, and such "
                "weights are not the published network",
            )
        return "basicvsrpp"
    if has("spynet.") and (has("backward_trunk.") or has("backward_resblocks.")) and has("fusion."):
        return "basicvsr"
    if (has("pcd_align.") or has("pcd_alignment.")) and has("reconstruction."):
        return "edvr"
    sample = ", ".join(sorted(keys)[:5])
    raise ConversionError(
        source,
        f"no known VSR network (BasicVSR, IconVSR, BasicVSR++, EDVR, SPyNet) has the "
        f"keys {sample}, ...",
    )


def _count(keys: set[str], pattern: str) -> int:
    """1 + the largest index captured by ``pattern`` in ``keys`` (0 if none)."""
    found = [int(m.group(1)) for key in keys if (m := re.fullmatch(pattern, key))]
    return max(found, default=-1) + 1


def _shape(state: Mapping[str, Tensor], source: str, *candidates: str) -> tuple[int, ...]:
    for key in candidates:
        if key in state:
            return tuple(state[key].shape)
    raise ConversionError(source, f"missing {candidates[0]} (needed to read the network's size)")


def _spynet_config(state: Mapping[str, Tensor], prefix: str, source: str) -> dict[str, Any]:
    keys = set(state)
    levels = _count(keys, rf"{re.escape(prefix)}basic_module\.(\d+)\..*")
    first = f"{prefix}basic_module.0.basic_module."
    widths = []
    for conv in range(16):
        key = f"{first}{2 * conv}.weight"
        mm_key = f"{first}{conv}.conv.weight"
        if key not in state and mm_key not in state:
            break
        widths.append(_shape(state, source, key, mm_key))
    if not widths:
        raise ConversionError(source, f"no SPyNet convolution under {first}")
    return {
        "num_levels": levels,
        "channels": [shape[0] for shape in widths[:-1]],
        "kernel_size": widths[0][-1],
    }


def _detect_config(backbone: str, state: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """The avvsr constructor arguments that the shapes determine."""
    keys = set(state)
    if backbone == "spynet":
        return _spynet_config(state, "", source)
    config: dict[str, Any] = {}
    if backbone in ("basicvsr", "iconvsr", "basicvsrpp"):
        config["spynet"] = _spynet_config(state, "spynet.", source)
    if backbone in ("basicvsr", "iconvsr"):
        config["num_blocks"] = _count(keys, r"backward_(?:trunk|resblocks)\.main\.2\.(\d+)\..*")
        trunk = _shape(
            state, source, "backward_trunk.main.0.weight", "backward_resblocks.main.0.weight"
        )
        config["num_feat"] = trunk[0]
    if backbone in ("iconvsr", "edvr"):
        prefix = "edvr." if backbone == "iconvsr" else ""
        config["num_feat"] = _shape(state, source, f"{prefix}conv_first.weight")[0]
        fuse = _shape(
            state,
            source,
            f"{prefix}fusion.feat_fusion.weight",
            f"{prefix}fusion.feat_fusion.conv.weight",
        )
        config["num_frames"] = fuse[1] // config["num_feat"]
        offset = _shape(
            state,
            source,
            f"{prefix}pcd_align.dcn_pack.l3.conv_offset.weight",
            f"{prefix}pcd_alignment.dcn_pack.l3.conv_offset.weight",
        )
        config["deformable_groups"] = offset[0] // (3 * DEFORM_TAPS)
        config["num_extract_blocks"] = _count(
            keys, rf"{re.escape(prefix)}feature_extraction\.(\d+)\..*"
        )
        config["clip_ends"] = "basicsr"
    if backbone == "edvr":
        config["num_reconstruct_blocks"] = _count(keys, r"reconstruction\.(\d+)\..*")
    if backbone == "basicvsrpp":
        config["num_feat"] = _shape(state, source, "feat_extract.main.0.weight")[0]
        config["num_blocks"] = _count(keys, r"backbone\.backward_1\.main\.2\.(\d+)\..*")
        config["num_extract_blocks"] = _count(keys, r"feat_extract\.main\.2\.(\d+)\..*")
        config["num_reconstruct_blocks"] = _count(keys, r"reconstruction\.main\.2\.(\d+)\..*")
        offset = _shape(state, source, "deform_align.backward_1.conv_offset.6.weight")
        config["deformable_groups"] = offset[0] // (3 * DEFORM_TAPS)
    config["hr_channels"] = _shape(state, source, "conv_hr.weight")[0]
    return config


def _backbone_config(backbone: str):
    """``model.backbone`` of the ``train`` config composed with ``model/backbone=<backbone>``
    at scale 4 (the zoo's networks are x4)."""
    from avvsr.config import compose

    return compose("train", [f"model/backbone={backbone}", "model.scale=4"]).model.backbone


def _option_yaml(backbone: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(_backbone_config(backbone), resolve=True)
    config.pop("scale", None)
    return config


def _option_for(backbone: str, config: Mapping[str, Any]) -> str:
    """EDVR-M and EDVR-L are one network at two sizes: the option whose yaml is closer."""
    if backbone != "edvr":
        return backbone

    def distance(option: str) -> int:
        yaml = _option_yaml(option)
        return sum(yaml.get(key) != value for key, value in config.items())

    return min(("edvr", "edvr_l"), key=distance)


def _overrides(backbone: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``config`` that differ from the option's yaml. A ``spynet`` entry is
    compared with the yaml's (None there: the default SPyNet)."""
    yaml = _option_yaml(backbone)
    overrides = {}
    for key, value in config.items():
        wanted = yaml.get(key)
        if key == "spynet":
            wanted = {
                **SPYNET_DEFAULTS,
                **{k: v for k, v in (wanted or {}).items() if k in SPYNET_DEFAULTS},
            }
        if wanted != value:
            overrides[key] = value
    return overrides


SPYNET_DEFAULTS = {"num_levels": 6, "channels": [32, 64, 32, 16], "kernel_size": 7}
"""The paper-size SPyNet (``blocks.SPyNet``'s defaults)."""


def build_backbone(backbone: str, overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """The avvsr module of option ``backbone`` (``conf/model/backbone/<name>.yaml`` at scale 4,
    or SPyNet for "spynet") with ``overrides`` merged into its config."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from avvsr.models.backbones.blocks import SPyNet

    if backbone == "spynet":
        return SPyNet(**{**SPYNET_DEFAULTS, **(overrides or {})})
    config = OmegaConf.merge(_backbone_config(backbone), OmegaConf.create(dict(overrides or {})))
    if config.get("spynet") is not None:  # a yaml's weights_path would read another file
        config.spynet.weights_path = None
    return instantiate(config, _convert_="all")


# ----------------------------------------------------------------------------------------
# the conversion


def convert_state_dict(
    blob: Mapping[str, Any], source: str = "<state dict>", *, strict: bool = True
) -> ConvertedWeights:
    """Convert a BasicSR / mmagic / SPyNet checkpoint object (as ``torch.load`` returns it)
    to an avvsr backbone state dict; see the module docstring.

    ``source`` names the file in error messages. With ``strict`` (the default) a key that
    cannot be placed, an avvsr key without a source, or a shape that differs raises
    :class:`~avvsr.errors.ConversionError` listing all of them; with ``strict=False`` a shape
    mismatch still raises, and the unplaced / missing keys are returned instead.
    """
    tensors, wrapper_key, hinted, dropped = _unwrap(blob, source)
    keys = set(tensors)
    backbone = _detect_backbone(keys, source)
    if backbone == "spynet":
        source_format = "spynet"
        naming = "mmagic" if _looks_mmagic(keys) else "basicsr"
    else:
        source_format = hinted or ("mmagic" if _looks_mmagic(keys) else "basicsr")
        naming = source_format
    config = _detect_config(backbone, tensors, source)
    option = _option_for(backbone, config)
    overrides = (
        _overrides(option, config)
        if option != "spynet"
        else {k: v for k, v in config.items() if SPYNET_DEFAULTS.get(k) != v}
    )
    module = build_backbone(option, overrides)
    own = module.state_dict()
    renames = dict(_source_keys(backbone, config, own, naming))  # avvsr key -> source key
    buffers = {name for name, _ in module.named_buffers()}

    state: dict[str, Tensor] = {}
    missing, mismatched = [], []
    for avvsr_key, source_key in renames.items():
        if source_key not in tensors:
            if avvsr_key in buffers:  # constants (SPyNet's mean/std), not in every file
                state[avvsr_key] = own[avvsr_key].clone()
            else:
                missing.append(source_key)
            continue
        tensor = tensors[source_key]
        if tensor.shape != own[avvsr_key].shape:
            mismatched.append(
                f"{source_key} {tuple(tensor.shape)} (avvsr {avvsr_key} wants "
                f"{tuple(own[avvsr_key].shape)})"
            )
            continue
        state[avvsr_key] = tensor
    unplaced = sorted(keys - set(renames.values()))
    unmapped = sorted(set(own) - set(renames))  # avvsr keys the table has no source for
    problems = []
    if mismatched:
        problems.append(f"shapes differ: {'; '.join(mismatched)}")
    if strict and unplaced:
        problems.append(f"keys not placed in avvsr's {option}: {', '.join(unplaced)}")
    if strict and (missing or unmapped):
        problems.append(
            f"keys of the {source_format} {option} missing: {', '.join(sorted(missing) + unmapped)}"
        )
    if problems:
        raise ConversionError(
            source, f"not a complete {source_format} {option} checkpoint: " + " | ".join(problems)
        )
    return ConvertedWeights(
        backbone=option,
        source_format=source_format,
        backbone_overrides=overrides,
        state=state,
        unplaced=tuple(unplaced),
        missing=tuple(sorted(missing) + unmapped),
        dropped=tuple(dropped),
        wrapper_key=wrapper_key,
    )


def _source_keys(
    backbone: str, config: Mapping[str, Any], own: Mapping[str, Tensor], naming: str
) -> Iterator[tuple[str, str]]:
    """``(avvsr key, source key)`` for every avvsr key the table covers."""
    table = getattr(_table(backbone, config), naming)
    for key in own:
        module, _, leaf = key.rpartition(".")
        if module in table:
            yield key, _join(table[module], leaf)


def to_source_state_dict(
    state: Mapping[str, Tensor],
    backbone: str,
    source_format: str,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """The inverse renaming: the ``state`` of avvsr backbone option ``backbone`` built with
    ``overrides`` (as :func:`build_backbone`) under the key names of ``source_format``
    ("basicsr", "mmagic"; "spynet": BasicSR's SPyNet layout). No wrapper, no ``generator.``
    prefix. A key it cannot name raises ``ValueError``."""
    if source_format not in SOURCE_FORMATS:
        raise ValueError(f"source_format must be one of {SOURCE_FORMATS}, got {source_format!r}")
    naming = "basicsr" if source_format == "spynet" else source_format
    detected = "edvr" if backbone == "edvr_l" else backbone
    base = SPYNET_DEFAULTS if backbone == "spynet" else _option_yaml(backbone)
    config = {**base, **(overrides or {})}
    renames = dict(_source_keys(detected, config, state, naming))
    unmapped = sorted(set(state) - set(renames))
    if unmapped:
        raise ValueError(f"avvsr keys with no {source_format} name: {', '.join(unmapped)}")
    return {renames[key]: value for key, value in state.items()}
