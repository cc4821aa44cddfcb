"""Loading weights from local files: whole models, partial loads, and plain exports.

No weights are ever downloaded; every function reads a file the user names. Checkpoints are
loaded with ``weights_only=True`` so a file cannot run code on load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from avvsr.errors import MissingFileError, WeightsError

log = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a weights file: a Lightning checkpoint, a plain state dict, or safetensors.

    Lightning checkpoints keep the network under ``state_dict`` with a ``net.`` prefix (the
    LightningModule's attribute); the prefix is removed so keys read as ``AVVSRNet`` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, truncated files, non-weights objects
        raise WeightsError(path, f"not a loadable weights file ({error})") from error
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(path, "holds no state dict of tensors")
    return {key.removeprefix("net."): value for key, value in state.items()}


def load_partial(model: nn.Module, state: dict[str, Tensor], *, source: str = "") -> list[str]:
    """Copy into ``model`` every tensor of ``state`` whose key and shape match; return the
    model keys left at their current values.

    A backbone-only state (keys without the ``backbone.`` prefix) loads into the backbone of an
    ``AVVSRNet``: that is how a fusion model starts from a trained plain backbone.
    """
    own = model.state_dict()
    if not any(key in own for key in state) and any(f"backbone.{key}" in own for key in state):
        state = {f"backbone.{key}": value for key, value in state.items()}
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(matched))
    if not matched:
        raise WeightsError(source or "<state dict>", "no tensor matches the model (wrong model?)")
    model.load_state_dict(matched, strict=False)
    missing = sorted(set(own) - set(matched))
    log.info(
        "loaded %d tensors from %s; %d model tensors kept their values; %d file tensors unused",
        len(matched),
        source or "a state dict",
        len(missing),
        len(skipped),
    )
    return missing
