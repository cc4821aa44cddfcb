"""The checkpoint and export formats: the one module that writes, reads and checks them.

Two kinds of model file:

- **Training checkpoints** (``.ckpt``, written by Lightning for ``avvsr-train``): Lightning's
  dictionary, read with ``weights_only=True``, plus :data:`MODEL_CONFIG_KEY`: the plain model
  config (``conf/model/``) the LightningModule was built from, with its ``audio_features``.
- **Exports** (``.safetensors``, written by :func:`write_export`): the network's tensors alone,
  with the model config as JSON under :data:`MODEL_CONFIG_KEY` in the metadata.

A model config read from a file is data, never code: :func:`checked_model_config` accepts it
only when every ``_target_`` at every nesting level is one of avvsr's own model classes
(:data:`ALLOWED_TARGETS`), every other Hydra key is ``_partial_`` (a bool) or ``_args_`` (a
list, checked the same way), and no string holds an interpolation; training-only entries
(optimizer, start weights, localisation loss) are dropped. Only then is anything built.
Every problem with a file is a :class:`~avvsr.errors.WeightsError` naming it; weights load
strictly (every tensor of the model and of the file, with its shape) unless a partial load is
asked for.

:func:`read_weights` reads the start weights of ``model.init_weights``: any of the above, a
plain state dict, or a BasicSR / mmagic checkpoint (converted by :mod:`avvsr.models.convert`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avvsr.config import LIT_MODULE_TARGET, build_lit_module
from avvsr.data.audio_features import AudioFeatureSettings
from avvsr.errors import MissingFileError, WeightsError

log = logging.getLogger(__name__)

MODEL_CONFIG_KEY = "avvsr_model_config"
EXPORT_SUFFIX = ".safetensors"
EXPORT_FORMAT = "avvsr-net/2"
# Written before the audio-feature settings joined the model config (read, never written).
LEGACY_EXPORT_FORMAT = "avvsr-net/1"
LEGACY_AUDIO_FEATURES_KEY = "avvsr_audio_features"

ALLOWED_TARGETS = frozenset({
    LIT_MODULE_TARGET,
    "avvsr.models.backbones.basicvsr.BasicVSR",
    "avvsr.models.backbones.basicvsrpp.BasicVSRPlusPlus",
    "avvsr.models.backbones.edvr.EDVR",
    "avvsr.models.backbones.iconvsr.IconVSR",
    "avvsr.models.audio_encoder.AudioEncoder",
    "avvsr.models.fusion.MSAVF",
    "avvsr.data.audio_features.AudioFeatureSettings",
})
# Where a class that moved used to live (old dotted path -> new), so that files written before
# the move still load. Each entry's target must be in ALLOWED_TARGETS.
MOVED_TARGETS: dict[str, str] = {}
# Entries of a model config that only training uses; a loaded model does without them (the
# localisation term is a training loss without weights).
TRAINING_ONLY_KEYS = ("optimizer", "init_weights", "init_weights_partial", "localisation")
HYDRA_KEYS = ("_target_", "_partial_", "_args_")
NET_PREFIX = "net."  # the LightningModule's attribute holding the AVVSRNet


# --------------------------------------------------------------------------- model configs
def checked_model_config(source: str | Path, config: Any) -> dict[str, Any]:
    """The model config read from ``source``, checked as the module docstring says and
    without its training-only entries; raise :class:`WeightsError` on anything else."""
    if not isinstance(config, Mapping):
        raise WeightsError(source, f"its model config is not a mapping ({type(config).__name__})")
    target = config.get("_target_")
    if not isinstance(target, str) or MOVED_TARGETS.get(target, target) != LIT_MODULE_TARGET:
        raise WeightsError(source, f"model._target_: {target!r} is not {LIT_MODULE_TARGET} "
                           "(refused)")
    kept = {key: value for key, value in config.items() if key not in TRAINING_ONLY_KEYS}
    return _checked_node(source, kept, "model")


def _checked_node(source: str | Path, node: Any, where: str) -> Any:
    if isinstance(node, Mapping):
        checked = {}
        for key, value in node.items():
            if not isinstance(key, str):
                raise WeightsError(source, f"{where}: key {key!r} is not a string")
            checked[key] = _checked_entry(source, key, value, f"{where}.{key}")
        return checked
    if isinstance(node, list | tuple):
        return [_checked_node(source, item, f"{where}[{i}]") for i, item in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        raise WeightsError(source, f"{where}: interpolations are not allowed ({node!r})")
    if node is None or isinstance(node, bool | int | float | str):
        return node
    raise WeightsError(source, f"{where}: a {type(node).__name__} is not a config value")


def _checked_entry(source: str | Path, key: str, value: Any, where: str) -> Any:
    if key == "_target_":
        target = MOVED_TARGETS.get(value, value) if isinstance(value, str) else None
        if target not in ALLOWED_TARGETS:
            raise WeightsError(
                source, f"{where}: {value!r} is not one of avvsr's model classes (refused)"
            )
        return target
    if key == "_partial_" and not isinstance(value, bool):
        raise WeightsError(source, f"{where}: must be true or false, got {value!r}")
    if key == "_args_" and not isinstance(value, list | tuple):
        raise WeightsError(source, f"{where}: must be a list, got {value!r}")
    if key.startswith("_") and key.endswith("_") and key not in HYDRA_KEYS:
        raise WeightsError(source, f"{where}: Hydra key {key} is not allowed in a model file")
    return _checked_node(source, value, where)


def _build_checked(source: Path, model_config: dict[str, Any], overrides: Mapping[str, Any]):
    try:
        return build_lit_module(model_config, optimizer=None, init_weights=None, **overrides)
    except Exception as error:  # wrong-typed or missing arguments of an allowed class
        raise WeightsError(source, f"its model config does not build ({error})") from error


# --------------------------------------------------------------------------- reading files
def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure told as what the file is."""
    if path.stat().st_size == 0:
        raise WeightsError(path, "empty file (0 bytes): not a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error).lower():
            raise WeightsError(
                path, "holds Python objects other than tensors and plain containers; refused, "
                "since loading it could run code"
            ) from None
        raise WeightsError(path, "not a PyTorch checkpoint (not a pickle or zip file)") from None
    except (EOFError, zipfile.BadZipFile) as error:
        raise WeightsError(path, f"truncated or damaged checkpoint ({error})") from None
    except RuntimeError as error:
        reason = "truncated or damaged checkpoint" if "zip" in str(error) else "unreadable"
        raise WeightsError(path, f"{reason} ({str(error).splitlines()[0]})") from None
    except Exception as error:  # anything else PyTorch raises on a file it cannot read
        raise WeightsError(path, f"not a readable checkpoint ({type(error).__name__})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(path, f"not a readable safetensors file ({error})") from None
    return tensors, metadata


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "model file not found" if not path.is_dir() else
                               "is a folder, not a model file")
    return path


def _state_dict_of(path: Path, blob: Any) -> dict[str, Tensor]:
    state = blob.get("state_dict", blob) if isinstance(blob, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(path, "holds no state dict of tensors")
    bad = [key for key, value in state.items() if not isinstance(value, Tensor)]
    if bad:
        raise WeightsError(path, f"state dict entries that are not tensors: {bad[:5]}")
    return dict(state)


@dataclass
class ModelFile:
    """A model file read once: the network's tensors (``AVVSRNet`` keys) and its checked
    model config."""

    path: Path
    state: dict[str, Tensor]
    model_config: dict[str, Any]


def _read_file(path: Path) -> tuple[Any, ModelFile | None]:
    """The contents of a weights file, read once: the raw object (a state dict, a checkpoint
    dictionary, or an export's tensors) and, for an avvsr model file, its :class:`ModelFile`."""
    if path.suffix == EXPORT_SUFFIX:
        tensors, metadata = _read_safetensors(path)
        if "format" not in metadata:
            return tensors, None
        if metadata["format"] not in (EXPORT_FORMAT, LEGACY_EXPORT_FORMAT):
            raise WeightsError(path, f"unknown export format {metadata['format']!r}")
        try:
            config = json.loads(metadata[MODEL_CONFIG_KEY])
            legacy_features = json.loads(metadata.get(LEGACY_AUDIO_FEATURES_KEY, "null"))
        except (KeyError, json.JSONDecodeError) as error:
            raise WeightsError(path, f"its metadata is not valid avvsr JSON ({error})") from None
        return tensors, _model_file(path, tensors, config, legacy_features)
    blob = _torch_load(path)
    if not isinstance(blob, Mapping) or MODEL_CONFIG_KEY not in blob:
        return blob, None
    state = _net_state(path, _state_dict_of(path, blob))
    return blob, _model_file(path, state, blob[MODEL_CONFIG_KEY],
                             blob.get(LEGACY_AUDIO_FEATURES_KEY))


def _model_file(path: Path, state: dict[str, Tensor], config: Any, legacy_features: Any):
    if isinstance(config, Mapping) and "audio_features" not in config and legacy_features:
        config = {**config, "audio_features": {
            "_target_": "avvsr.data.audio_features.AudioFeatureSettings", **legacy_features
        }}
    return ModelFile(path, state, checked_model_config(path, config))


def read_model_file(path: str | Path) -> ModelFile:
    """Read a training checkpoint or an export once, check its model config, keep its
    network's tensors (the ``net.`` prefix removed)."""
    path = _existing(path)
    _, model_file = _read_file(path)
    if model_file is None:
        what = "an avvsr-export file" if path.suffix == EXPORT_SUFFIX else "a checkpoint " \
            "written by avvsr-train"
        raise WeightsError(path, f"no avvsr model config inside: not {what} (published "
                           "BasicSR / mmagic weights: convert them with avvsr-convert)")
    return model_file


def _net_state(path: Path, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``net.`` tensors of a LightningModule state dict, the prefix removed."""
    others = [key for key in state if not key.startswith(NET_PREFIX)]
    if others:
        raise WeightsError(path, f"tensors outside the network: {others[:5]}")
    return {key.removeprefix(NET_PREFIX): value for key, value in state.items()}


# --------------------------------------------------------------------------- loading weights
def load_weights(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str | Path,
    partial: bool = False,
    part_state: bool = False,
) -> list[str]:
    """Copy ``state`` into ``model``; return the model keys left at their current values.

    Strict unless ``partial``: every key of each side must be in the other, with the same
    shape, else :class:`WeightsError` lists the differences. With ``part_state`` (start
    weights), a state of one part of the model loads into that part, strictly: keys all under
    one submodule's prefix (``backbone.``, ``backbone.spynet.``), or without the prefix a
    state of the backbone alone. That is how a fusion model starts from a plain backbone (its
    fusion at identity) or a backbone from published flow weights. With ``partial`` the tensors
    that fit load and a warning lists the rest.
    """
    prefix = _part_prefix(model, state) if part_state else ""
    target = model.get_submodule(prefix.rstrip(".")) if prefix else model
    state = {key.removeprefix(prefix): value for key, value in state.items()}
    own_state = target.state_dict()
    missing = sorted(set(own_state) - set(state))
    unexpected = sorted(set(state) - set(own_state))
    wrong_shape = sorted(
        f"{key} {tuple(state[key].shape)} (model {tuple(own_state[key].shape)})"
        for key in set(state) & set(own_state) if state[key].shape != own_state[key].shape
    )
    problems = {"missing in the file": missing, "not in the model": unexpected,
                "of another shape": wrong_shape}
    summary = "; ".join(
        f"{len(keys)} {what}: {', '.join(prefix + k for k in keys[:6])}"
        f"{', ...' if len(keys) > 6 else ''}"
        for what, keys in problems.items() if keys
    )
    if summary and not partial:
        raise WeightsError(source, f"the weights do not fit the model ({summary}); "
                           "ask for a partial load to load what fits")
    fitting = {k: v for k, v in state.items() if k in own_state and v.shape == own_state[k].shape}
    if not fitting:
        raise WeightsError(source, "no tensor fits the model (wrong model?)")
    target.load_state_dict(fitting, strict=not summary)
    if summary:
        log.warning("%s: partial load, %d tensors loaded; %s", source, len(fitting), summary)
    return sorted(set(model.state_dict()) - {prefix + key for key in fitting})


def _part_prefix(model: nn.Module, state: Mapping[str, Tensor]) -> str:
    """The prefix (``"backbone."``, ...) of the part of ``model`` that ``state`` covers: the
    longest submodule prefix shared by every key, or ``backbone.`` for keys that are none of
    the model's but some of its backbone's; ``""`` for the whole model."""
    own = set(model.state_dict())
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module) and not set(state) & own \
            and set(state) & set(backbone.state_dict()):
        return "backbone."
    modules = dict(model.named_modules())
    shared = os.path.commonprefix([key.split(".")[:-1] for key in state])  # element-wise
    while shared and ".".join(shared) not in modules:
        shared = shared[:-1]
    return ".".join(shared) + "." if shared else ""


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a file of start weights (``model.init_weights``), with ``AVVSRNet`` key
    names: an avvsr checkpoint or export, a published BasicSR / mmagic / SPyNet checkpoint
    (converted, :func:`read_published`; its keys under ``backbone.`` or ``backbone.spynet.``),
    or a plain state dict (a dictionary of tensors, or one under ``state_dict``)."""
    path = _existing(path)
    blob, model_file = _read_file(path)
    if model_file is not None:
        return model_file.state
    if is_published(blob):
        converted = _convert(path, blob)
        prefix = "backbone.spynet." if converted.backbone == "spynet" else "backbone."
        if converted.backbone_overrides:
            settings = " ".join(
                f"model.backbone.{key}={value}"
                for key, value in converted.backbone_overrides.items()
            )
            log.warning("%s: %s weights that expect %s", path, converted.backbone, settings)
        return {prefix + key: value for key, value in converted.state.items()}
    return _state_dict_of(path, blob)


def is_published(blob: Any) -> bool:
    """Whether ``blob`` is laid out as a model zoo saves its checkpoints: BasicSR's ``params``
    / ``params_ema``, mmagic's ``state_dict`` of ``generator.`` keys, or SPyNet's
    ``basic_module.*`` tensors."""
    if not isinstance(blob, Mapping) or not blob:
        return False
    if any(isinstance(blob.get(key), Mapping) for key in ("params", "params_ema")):
        return True
    state = blob.get("state_dict")
    if isinstance(state, Mapping):
        return any(str(key).startswith("generator.") for key in state)
    return all(str(key).startswith("basic_module.") for key in blob)


def _convert(path: Path, blob: Any):
    from avvsr.models.convert import convert_state_dict

    return convert_state_dict(blob, source=str(path))


def read_published(path: str | Path):
    """A published checkpoint read once and converted
    (:class:`~avvsr.models.convert.ConvertedWeights`); a file that is not one is a
    :class:`WeightsError` naming it."""
    path = _existing(path)
    blob, model_file = _read_file(path)
    if model_file is not None:
        raise WeightsError(path, "is an avvsr model file already: use it as it is")
    if not is_published(blob):
        raise WeightsError(path, "not a BasicSR (params / params_ema), mmagic (state_dict of "
                           "generator.*) or SPyNet (basic_module.*) checkpoint")
    return _convert(path, blob)


def convert_to_export(source: str | Path, destination: str | Path, *,
                      overwrite: bool = False):
    """Write the published checkpoint ``source`` as an avvsr export of its backbone (no
    fusion) at ``destination``; return the conversion. SPyNet alone has no model config: its
    export is a plain safetensors file of ``backbone.spynet.*`` tensors (start weights)."""
    from safetensors.torch import save_file

    from avvsr.atomic import atomic_write, refuse_existing
    from avvsr.config import compose, plain_container

    destination = Path(destination)
    _check_export_name(destination)
    refuse_existing(destination, overwrite)
    converted = read_published(source)
    if converted.backbone == "spynet":
        tensors = {f"backbone.spynet.{k}": v.contiguous() for k, v in converted.state.items()}
        with atomic_write(destination) as temporary:
            save_file(tensors, str(temporary))
        return converted
    config = plain_container(compose("train", [
        f"model/backbone={converted.backbone}", "model/fusion=none", "model.scale=4",
    ]).model)
    config["backbone"].update(converted.backbone_overrides)
    lit_module = build_lit_module(config, optimizer=None)
    load_weights(lit_module.net.backbone, converted.state, source=source)
    model = LoadedModel(lit_module.net.eval(), lit_module.model_config,
                        lit_module.audio_features, Path(source))
    write_export(model, destination, overwrite=overwrite)
    return converted


def _check_export_name(destination: Path) -> None:
    if destination.suffix != EXPORT_SUFFIX:
        raise WeightsError(destination, f"exports are safetensors files; name it *{EXPORT_SUFFIX}")


# --------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """A network ready for inference and how its inputs are made."""

    net: nn.Module  # AVVSRNet, in eval mode
    model_config: dict[str, Any]  # the checked model config (training-only entries dropped)
    audio_features: AudioFeatureSettings | None  # None only for models without fusion
    source: Path

    @property
    def scale(self) -> int:
        return self.net.scale

    @property
    def uses_audio(self) -> bool:
        return self.net.uses_audio


def load_lit_module(path: str | Path, *, partial: bool = False, **overrides: Any):
    """The LightningModule of a training checkpoint or export, with its weights (strict unless
    ``partial``). ``overrides`` replace entries of the stored model config (e.g.
    ``audio_controls``)."""
    model_file = read_model_file(path)
    lit_module = _build_checked(model_file.path, model_file.model_config, overrides)
    load_weights(lit_module.net, model_file.state, source=model_file.path, partial=partial)
    return lit_module


def load_model(path: str | Path) -> LoadedModel:
    """Load a model file for inference (``avvsr-upscale``, ``avvsr-export``,
    ``avvsr-visualize``). A fusion model must say how its log-mel features were made."""
    lit_module = load_lit_module(path)
    if lit_module.net.uses_audio and lit_module.audio_features is None:
        raise WeightsError(
            path, "the model fuses audio but the file does not say how its log-mel features "
            "were made (no audio_features in its model config)"
        )
    return LoadedModel(
        lit_module.net.eval(), lit_module.model_config, lit_module.audio_features, Path(path)
    )


def add_model_config(checkpoint: dict[str, Any], model_config: Mapping[str, Any] | None) -> None:
    """Store a LightningModule's model config in the ``checkpoint`` Lightning is saving."""
    if model_config is not None:
        checkpoint[MODEL_CONFIG_KEY] = dict(model_config)


def write_checkpoint(lit_module, destination: str | Path) -> Path:
    """Write ``lit_module`` (built by :func:`avvsr.config.build_lit_module`) as a checkpoint
    the loaders read, without a trainer (benchmarks, tools): its ``state_dict`` and model
    config, as the checkpoints Lightning writes for ``avvsr-train`` hold them."""
    from avvsr.atomic import atomic_write

    checkpoint = {"state_dict": lit_module.state_dict()}
    add_model_config(checkpoint, lit_module.model_config)
    if MODEL_CONFIG_KEY not in checkpoint:
        raise ValueError("the module has no model config: build it with build_lit_module")
    with atomic_write(destination) as temporary:
        torch.save(checkpoint, temporary)
    return Path(destination)


def write_export(model: LoadedModel, destination: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model``'s network tensors with its model config (JSON metadata) to
    ``destination`` (``.safetensors``), under a temporary name renamed when complete."""
    from safetensors.torch import save_file

    from avvsr.atomic import atomic_write, refuse_existing

    destination = Path(destination)
    _check_export_name(destination)
    refuse_existing(destination, overwrite)
    metadata = {"format": EXPORT_FORMAT, MODEL_CONFIG_KEY: json.dumps(model.model_config)}
    tensors = {key: value.contiguous() for key, value in model.net.state_dict().items()}
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(destination) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return destination
