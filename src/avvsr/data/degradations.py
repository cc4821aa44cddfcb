"""How LR frames are made from HR frames: BI (bicubic) and BD (Gaussian blur) degradations.

All functions take float tensors ``(..., C, H, W)`` (any leading dims, e.g. ``(B, T, C, H, W)``)
and return float tensors of the same dtype. Values are not clamped: bicubic overshoots a
little at edges, and the data pipeline clamps to [0, 1] where it needs to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEGRADATIONS = ("BI", "BD")


def crop_to_scale(hr: Tensor, scale: int) -> Tensor:
    """Crop ``(..., H, W)`` to ``(..., H - H % scale, W - W % scale)``, keeping the top-left."""
    _check_scale(scale)
    height, width = hr.shape[-2:]
    return hr[..., : height - height % scale, : width - width % scale]


def _check_scale(scale: int) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")


def _check_image(hr: Tensor, scale: int) -> None:
    _check_scale(scale)
    if hr.ndim < 3:
        raise ValueError(f"expected a (..., C, H, W) tensor, got shape {tuple(hr.shape)}")
    if not hr.is_floating_point():
        raise ValueError(f"expected a floating-point tensor, got {hr.dtype}")
    if min(hr.shape[-2:]) < scale:
        raise ValueError(f"image {tuple(hr.shape[-2:])} is smaller than the scale {scale}")


def _padding_indices(size: int, pad: int, edge_repeated: bool, device: torch.device) -> Tensor:
    """Source index of each position of a length-``size`` axis padded by ``pad`` on both sides.

    ``edge_repeated=True`` mirrors with the edge sample repeated (numpy ``symmetric``, MATLAB
    ``imresize``); ``False`` mirrors about the edge sample (numpy/torch ``reflect``). Works for
    any ``pad``, also larger than ``size`` (the mirror image repeats).
    """
    positions = torch.arange(-pad, size + pad, device=device)
    period = 2 * size if edge_repeated else 2 * (size - 1)
    if period == 0:  # a single sample reflects onto itself
        return torch.zeros_like(positions)
    folded = positions.remainder(period)
    mirrored = period - folded - (1 if edge_repeated else 0)
    return torch.where(folded < size, folded, mirrored)


def _mirror_pad(image: Tensor, pad: int, edge_repeated: bool) -> Tensor:
    """Mirror-pad the last two dims of ``(..., H, W)`` by ``pad`` pixels on every side."""
    height, width = image.shape[-2:]
    rows = _padding_indices(height, pad, edge_repeated, image.device)
    cols = _padding_indices(width, pad, edge_repeated, image.device)
    return image.index_select(-2, rows).index_select(-1, cols)


def _as_batch(image: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """Fold leading dims: ``(..., C, H, W)`` -> ``(N, C, H, W)``, and the leading shape."""
    leading = tuple(image.shape[:-3])
    return image.reshape(-1, *image.shape[-3:]), leading


def bicubic_downsample(hr: Tensor, scale: int) -> Tensor:
    """BI: MATLAB ``imresize(hr, 1/scale)`` (bicubic a=-0.5, antialiased) on ``(..., C, H, W)``.

    HR is cropped to a multiple of the scale, padded symmetrically (edge pixel repeated, as
    MATLAB does) by ``2 * scale`` pixels, resized with PyTorch's antialiased bicubic, and the
    2 LR pixels that came from the padding are cropped off each side.
    Returns ``(..., C, H // scale, W // scale)``.
    """
    _check_image(hr, scale)
    hr = crop_to_scale(hr, scale)
    if scale == 1:
        return hr.clone()
    margin_lr = 2
    padded = _mirror_pad(hr, margin_lr * scale, edge_repeated=True)
    batch, leading = _as_batch(padded)
    lr_height, lr_width = hr.shape[-2] // scale, hr.shape[-1] // scale
    resized = F.interpolate(
        batch,
        size=(lr_height + 2 * margin_lr, lr_width + 2 * margin_lr),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )
    lr = resized[..., margin_lr : margin_lr + lr_height, margin_lr : margin_lr + lr_width]
    return lr.reshape(*leading, *lr.shape[-3:])


def gaussian_kernel_1d(sigma: float, kernel_size: int, dtype=torch.float32) -> Tensor:
    """Normalised samples of a Gaussian at integer offsets ``-(k//2) ... k//2``: ``(k,)``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    offsets = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return (weights / weights.sum()).to(dtype)


def blur_downsample(hr: Tensor, scale: int, sigma: float = 1.6, kernel_size: int = 13) -> Tensor:
    """BD: Gaussian blur (separable, ``kernel_size`` taps, reflect padding), keep every
    ``scale``-th pixel. ``(..., C, H, W)`` -> ``(..., C, H // scale, W // scale)``.

    The kept pixels are HR rows/columns ``0, scale, 2*scale, ...`` (phase 0), as BasicSR's
    ``duf_downsample`` (the DUF BD protocol) keeps them. The default sigma 1.6 is its value
    for x4 (``0.4 * scale``).
    """
    _check_image(hr, scale)
    hr = crop_to_scale(hr, scale)
    batch, leading = _as_batch(hr)
    channels = batch.shape[1]
    padded = _mirror_pad(batch, kernel_size // 2, edge_repeated=False)
    taps = gaussian_kernel_1d(sigma, kernel_size, dtype=batch.dtype).to(batch.device)
    horizontal = taps.view(1, 1, 1, kernel_size).expand(channels, 1, 1, kernel_size)
    vertical = taps.view(1, 1, kernel_size, 1).expand(channels, 1, kernel_size, 1)
    blurred = F.conv2d(padded, horizontal, stride=(1, scale), groups=channels)
    lr = F.conv2d(blurred, vertical, stride=(scale, 1), groups=channels)
    return lr.reshape(*leading, *lr.shape[-3:])


def degrade(hr: Tensor, scale: int, kind: str = "BI") -> Tensor:
    """Crop ``(..., C, H, W)`` to a multiple of ``scale`` and degrade it: ``kind`` BI or BD."""
    if kind == "BI":
        return bicubic_downsample(hr, scale)
    if kind == "BD":
        return blur_downsample(hr, scale)
    raise ValueError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS}")
