"""Pictures of what a model does: LR input, output, HR, and attention masks over the frame.

Shared by the W&B/CSV sample logging callback and ``avvsr-visualize``. All images are float
tensors ``(3, H, W)`` in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MASK_COLOUR = (1.0, 0.15, 0.1)
OUTLINE_COLOUR = (0.1, 1.0, 0.2)


def resize_nearest(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``(C, h, w)`` -> ``(C, *size)`` by pixel repetition (shows the LR pixels as they are)."""
    return F.interpolate(image[None], size=size, mode="nearest")[0]


def overlay_mask(frame: Tensor, mask: Tensor, alpha: float = 0.6) -> Tensor:
    """Blend an attention mask ``(1, h, w)`` in [0, 1] as a red heat over a grey ``frame``
    ``(3, H, W)``; the mask is bilinearly upsampled to the frame."""
    heat = F.interpolate(
        mask[None].float(), size=frame.shape[-2:], mode="bilinear", align_corners=False
    )[0]
    grey = frame.mean(0, keepdim=True).expand_as(frame)
    colour = torch.tensor(MASK_COLOUR, dtype=frame.dtype, device=frame.device)[:, None, None]
    weight = alpha * heat.clamp(0, 1)
    return grey * (1 - weight) + colour * weight


def draw_outline(image: Tensor, region: Tensor) -> Tensor:
    """Paint the 1-pixel outline of a binary ``region`` (1, H, W) onto ``image`` (3, H, W)."""
    inside = region.float()[None]
    eroded = -F.max_pool2d(-inside, kernel_size=3, stride=1, padding=1)
    edge = (inside - eroded)[0] > 0
    colour = torch.tensor(OUTLINE_COLOUR, dtype=image.dtype, device=image.device)[:, None, None]
    return torch.where(edge, colour, image)


def sample_panel(
    lq: Tensor, sr: Tensor, gt: Tensor | None, masks: list[Tensor], source_mask: Tensor | None
) -> Tensor:
    """One frame as a row: LR (nearest) | output | HR | each scale's mask over the output.

    ``lq`` (3, h, w), ``sr`` and ``gt`` (3, H, W), ``masks`` [(1, h_s, w_s)], ``source_mask``
    (1, H, W) or None (its outline is drawn on the mask panels). Returns ``(3, H, W * n)``.
    """
    size = tuple(sr.shape[-2:])
    panels = [resize_nearest(lq, size), sr]
    if gt is not None:
        panels.append(gt)
    for mask in masks:
        panel = overlay_mask(sr, mask)
        panels.append(draw_outline(panel, source_mask) if source_mask is not None else panel)
    return torch.cat([p.clamp(0, 1) for p in panels], dim=-1)


def save_png(image: Tensor, path) -> None:
    """Write ``(3, H, W)`` in [0, 1] as an 8-bit PNG (through a temporary file)."""
    from PIL import Image

    from avvsr.atomic import atomic_write

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    with atomic_write(path) as temporary:
        Image.fromarray(pixels).save(temporary, format="PNG")
