"""Pictures of what a model does: LR input, output, HR, and attention masks over the frame.

Shared by the W&B/CSV sample logging callback, ``avvsr-visualize`` and the study's figure
(:func:`attention_grid`). All images are float tensors ``(3, H, W)`` in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MASK_COLOUR = (1.0, 0.15, 0.1)
OUTLINE_COLOUR = (0.1, 1.0, 0.2)  # the sound source
DISTRACTOR_COLOUR = (0.15, 0.75, 1.0)  # the silent objects
FIGURE_BACKGROUND = 255  # white, 8-bit
FIGURE_GAP_PX = 6  # between panels
FIGURE_FONT_PX = 22


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


def draw_outline(
    image: Tensor, region: Tensor, colour: Sequence[float] = OUTLINE_COLOUR, width: int = 1
) -> Tensor:
    """Paint the ``width``-pixel inner outline of a binary ``region`` (1, H, W) onto ``image``
    (3, H, W) in ``colour`` (RGB in [0, 1])."""
    inside = region.float()[None]
    eroded = -F.max_pool2d(-inside, kernel_size=2 * width + 1, stride=1, padding=width)
    edge = (inside - eroded)[0] > 0
    paint = torch.tensor(colour, dtype=image.dtype, device=image.device)[:, None, None]
    return torch.where(edge, paint, image)


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
    save_rgb_png(to_uint8(image), path)


def to_uint8(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` in [0, 1] -> uint8 ``(H, W, 3)``."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@dataclass
class Prediction:
    """A model's output on one frame with one audio: ``sr`` (3, H, W) and its attention masks
    [(1, h_s, w_s)], finest first."""

    sr: Tensor
    masks: Sequence[Tensor]


def attention_row(
    lq: Tensor,
    gt: Tensor,
    predictions: Mapping[str, Prediction],
    source_mask: Tensor | None,
    distractor_mask: Tensor | None,
    zoom: int = 3,
) -> list[tuple[str, Tensor]]:
    """One frame as titled panels, each enlarged ``zoom`` times (pixel repetition):
    LR | HR | then per audio (the keys of ``predictions``, e.g. ``true``, ``shuffled``):
    output | the attention mask of each scale over the output, with the outlines of the
    sound source (green) and the silent distractors (blue).

    ``lq`` (3, h, w); ``gt`` (3, H, W); masks (1, H, W) or None. Returns
    ``[(title, (3, zoom H, zoom W))]``.
    """
    size = tuple(gt.shape[-2:])
    big = (size[0] * zoom, size[1] * zoom)
    outline = max(1, zoom - 1)

    def enlarge(image: Tensor) -> Tensor:
        return resize_nearest(image, big).clamp(0, 1)

    def outlined(image: Tensor) -> Tensor:
        for region, colour in ((distractor_mask, DISTRACTOR_COLOUR), (source_mask, OUTLINE_COLOUR)):
            if region is not None:
                image = draw_outline(image, resize_nearest(region.float(), big) > 0.5, colour,
                                     outline)
        return image

    panels = [(f"LR ({lq.shape[-1]}x{lq.shape[-2]}, nearest)", enlarge(lq)),
              (f"HR ({size[1]}x{size[0]})", outlined(enlarge(gt)))]
    for audio, prediction in predictions.items():
        sr = enlarge(prediction.sr)
        panels.append((f"output, {audio} audio", sr))
        for scale, mask in enumerate(prediction.masks, start=1):
            title = f"mask s{scale} ({mask.shape[-1]}x{mask.shape[-2]}), {audio}"
            panels.append((title, outlined(overlay_mask(sr, mask))))
    return panels


def attention_grid(
    rows: Sequence[Sequence[tuple[str, Tensor]]],
    row_labels: Sequence[str],
    legend: str,
) -> np.ndarray:
    """Lay out rows of titled panels (:func:`attention_row`) as a figure: the first row's
    titles above the columns, each row's label above it, ``legend`` at the bottom; white
    background. Returns uint8 ``(H, W, 3)``."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=FIGURE_FONT_PX)
    line = FIGURE_FONT_PX + 10
    columns = max(len(row) for row in rows)
    panel_h = max(image.shape[-2] for row in rows for _, image in row)
    panel_w = max(image.shape[-1] for row in rows for _, image in row)
    width = columns * panel_w + (columns + 1) * FIGURE_GAP_PX
    height = line + len(rows) * (line + panel_h + FIGURE_GAP_PX) + line
    canvas = Image.new("RGB", (width, height), (FIGURE_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    for column, (title, _) in enumerate(rows[0]):
        draw.text((FIGURE_GAP_PX + column * (panel_w + FIGURE_GAP_PX), 4), title,
                  fill=(0, 0, 0), font=font)
    top = line
    for row, label in zip(rows, row_labels, strict=True):
        draw.text((FIGURE_GAP_PX, top + 4), label, fill=(60, 60, 60), font=font)
        top += line
        for column, (_, image) in enumerate(row):
            canvas.paste(Image.fromarray(to_uint8(image)),
                         (FIGURE_GAP_PX + column * (panel_w + FIGURE_GAP_PX), top))
        top += panel_h + FIGURE_GAP_PX
    draw.text((FIGURE_GAP_PX, top + 4), legend, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_rgb_png(pixels: np.ndarray, path) -> None:
    """Write uint8 ``(H, W, 3)`` as a PNG (through a temporary file)."""
    from PIL import Image

    from avvsr.atomic import atomic_write

    with atomic_write(path) as temporary:
        Image.fromarray(pixels).save(temporary, format="PNG")
