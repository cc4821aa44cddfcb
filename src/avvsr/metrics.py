"""Video metrics as the VSR community computes them (BasicSR ``psnr_ssim.py``), as torchmetrics
``Metric``s whose states are sums (per-clip values and clip counts), so they are exact under DDP.

Every ``update`` takes one batch of whole clips, ``(B, T, C, H, W)`` RGB in [0, 1] (masks
``(B, T, 1, H, W)``); each of the B rows is one clip. Per frame, before any formula:

- clamp to [0, 1] and scale to [0, 255] in float64 (optionally round to 8-bit levels first, as
  BasicSR's ``tensor2img`` does before its metrics: ``quantize=True``);
- optionally keep only the ITU-R BT.601 luma of RGB in [0, 1], in [0, 255] units:
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (BasicSR's ``to_y_channel``);
- crop ``crop_border`` pixels from each side.

PSNR is ``10 log10(255^2 / MSE)`` (MSE over pixels and channels), capped at
:data:`PSNR_CAP_DB`: BasicSR returns ``inf`` for identical images, which would make a clip's
mean infinite; the cap equals BasicSR's value wherever that is below 100 dB.
SSIM uses an 11x11 Gaussian (sigma 1.5) over the valid region (no padding),
``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``, averaged over pixels and channels.
Video scores are the mean over frames within each clip, then the mean over clips.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc

PSNR_CAP_DB = 100.0
MAX_PIXEL = 255.0
BT601_LUMA_WEIGHTS = (65.481, 128.553, 24.966)
BT601_LUMA_OFFSET = 16.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * MAX_PIXEL) ** 2
SSIM_C2 = (0.03 * MAX_PIXEL) ** 2


def check_video_pair(preds: Tensor, target: Tensor) -> None:
    """Both ``(B, T, C, H, W)``, same shape; raise ``ValueError`` otherwise."""
    if preds.ndim != 5 or preds.shape != target.shape:
        raise ValueError(
            f"expected two (B, T, C, H, W) tensors of one shape, got {tuple(preds.shape)} "
            f"and {tuple(target.shape)}"
        )


def to_metric_space(
    frames: Tensor, crop_border: int = 0, test_y_channel: bool = False, quantize: bool = False
) -> Tensor:
    """``(..., 3, H, W)`` RGB in [0, 1] -> float64 ``(..., C', H - 2b, W - 2b)`` in [0, 255].

    ``C' = 1`` (BT.601 luma) with ``test_y_channel``, else the input channels.
    """
    pixels = frames.to(torch.float64).clamp(0, 1) * MAX_PIXEL
    if quantize:
        pixels = pixels.round()
    if test_y_channel:
        weights = pixels.new_tensor(BT601_LUMA_WEIGHTS)[:, None, None] / MAX_PIXEL
        pixels = BT601_LUMA_OFFSET + (pixels * weights).sum(dim=-3, keepdim=True)
    return crop(pixels, crop_border)


def crop(frames: Tensor, border: int) -> Tensor:
    """Remove ``border`` pixels from each side of the last two dimensions."""
    height, width = frames.shape[-2:]
    if border < 0 or height <= 2 * border or width <= 2 * border:
        raise ValueError(f"cannot crop {border} px from each side of a {height}x{width} frame")
    return frames[..., border : height - border, border : width - border] if border else frames


def psnr_from_mse(mse: Tensor) -> Tensor:
    """``10 log10(255^2 / mse)`` in dB, capped at :data:`PSNR_CAP_DB` (finite for mse = 0)."""
    mse_floor = MAX_PIXEL**2 * 10 ** (-PSNR_CAP_DB / 10)
    return 10 * torch.log10(MAX_PIXEL**2 / mse.clamp_min(mse_floor))


def gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The normalised 1-D Gaussian of :data:`SSIM_WINDOW` taps, sigma :data:`SSIM_SIGMA`."""
    offsets = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    weights = torch.exp(-offsets.square() / (2 * SSIM_SIGMA**2))
    return weights / weights.sum()


def frame_ssim(preds: Tensor, target: Tensor) -> Tensor:
    """SSIM of each frame of ``(B, T, C, H, W)`` pairs already in metric space -> (B, T).

    Frames must be at least 11x11 (the valid region of the Gaussian window is non-empty).
    """
    batch, frames = preds.shape[:2]
    height, width = preds.shape[-2:]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    window = gaussian_window(preds.dtype, preds.device)
    rows, columns = window.view(1, 1, -1, 1), window.view(1, 1, 1, -1)

    def local_mean(x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, rows), columns)

    x = preds.reshape(-1, 1, height, width)
    y = target.reshape(-1, 1, height, width)
    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mean_x.square()
    var_y = local_mean(y * y) - mean_y.square()
    covariance = local_mean(x * y) - mean_x * mean_y
    ssim_map = ((2 * mean_x * mean_y + SSIM_C1) * (2 * covariance + SSIM_C2)) / (
        (mean_x.square() + mean_y.square() + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )
    return ssim_map.reshape(batch, frames, -1).mean(dim=-1)


class ClipMeanMetric(Metric):
    """Mean over clips of a per-clip score, in the metric space set by ``crop_border``,
    ``test_y_channel`` and ``quantize`` (module docstring). States: the sum of the clip scores
    and the clip count."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self, crop_border: int = 0, test_y_channel: bool = False, quantize: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.crop_border = crop_border
        self.test_y_channel = test_y_channel
        self.quantize = quantize
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def squared_error(self, preds: Tensor, target: Tensor) -> Tensor:
        """Squared error per pixel of ``(B, T, 3, H, W)`` pairs in [0, 1], in metric space."""
        check_video_pair(preds, target)
        return (self.to_metric_space(preds) - self.to_metric_space(target)).square()

    def to_metric_space(self, frames: Tensor) -> Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] -> float64 ``(B, T, C', H', W')`` in [0, 255]."""
        return to_metric_space(frames, self.crop_border, self.test_y_channel, self.quantize)

    def add_clip_scores(self, clip_scores: Tensor) -> None:
        """Accumulate ``(K,)`` per-clip scores."""
        self.score_sum += clip_scores.sum()
        self.clips += clip_scores.numel()

    def compute(self) -> Tensor:
        """The mean over all clips seen (NaN before any clip)."""
        return self.score_sum / self.clips


class VideoPSNR(ClipMeanMetric):
    """PSNR (dB): per frame, mean over each clip's frames, mean over clips.

    ``update(preds, target)``, both ``(B, T, 3, H, W)`` RGB in [0, 1]; see the module docstring
    for ``crop_border``, ``test_y_channel`` (BT.601 luma) and ``quantize`` (8-bit levels).
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        mse = self.squared_error(preds, target).mean(dim=(2, 3, 4))
        self.add_clip_scores(psnr_from_mse(mse).mean(dim=1))


class VideoSSIM(ClipMeanMetric):
    """SSIM: per frame (mean over channels), mean over each clip's frames, mean over clips.

    Same arguments as :class:`VideoPSNR`; frames (after cropping) must be at least 11x11.
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        check_video_pair(preds, target)
        ssim = frame_ssim(self.to_metric_space(preds), self.to_metric_space(target))
        self.add_clip_scores(ssim.mean(dim=1))


class RegionPSNR(ClipMeanMetric):
    """PSNR (dB) inside or outside the sound-source mask: per clip over all its frames' pixels
    of the region (and all channels), then the mean over clips.

    ``update(preds, target, mask)``: frames ``(B, T, 3, H, W)`` in [0, 1], ``mask``
    ``(B, T, 1, H, W)`` (1 = sound source; binarised at 0.5). ``region="inside"`` scores the
    pixels where the mask is 1, ``"outside"`` where it is 0. A clip whose region is empty is
    skipped and counted in the ``skipped`` state. Other arguments as :class:`VideoPSNR`.
    """

    def __init__(self, region: Literal["inside", "outside"] = "inside", **kwargs) -> None:
        super().__init__(**kwargs)
        if region not in ("inside", "outside"):
            raise ValueError(f"region must be 'inside' or 'outside', got {region!r}")
        self.region = region
        self.add_state("skipped", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, mask: Tensor) -> None:
        if mask.shape != (*preds.shape[:2], 1, *preds.shape[3:]):
            raise ValueError(f"mask {tuple(mask.shape)} does not match frames {tuple(preds.shape)}")
        squared_error = self.squared_error(preds, target)
        in_region = crop(mask, self.crop_border) >= 0.5
        if self.region == "outside":
            in_region = ~in_region
        weights = in_region.expand_as(squared_error).to(squared_error.dtype)
        region_size = weights.sum(dim=(1, 2, 3, 4))
        scored = region_size > 0
        mse = (squared_error * weights).sum(dim=(1, 2, 3, 4))[scored] / region_size[scored]
        self.add_clip_scores(psnr_from_mse(mse))
        self.skipped += (~scored).sum()


def check_attention(attention: Tensor, target: Tensor) -> None:
    """``attention`` ``(B, T, 1, h, w)`` and ``target`` ``(B, T, 1, H, W)``; ``ValueError``
    otherwise."""
    if attention.ndim != 5 or target.ndim != 5 or attention.shape[:3] != target.shape[:3]:
        raise ValueError(
            f"expected attention (B, T, 1, h, w) and target (B, T, 1, H, W), got "
            f"{tuple(attention.shape)} and {tuple(target.shape)}"
        )


def upsample_attention(attention: Tensor, target: Tensor) -> Tensor:
    """``attention`` ``(B, T, 1, h, w)`` bilinearly upsampled to the size of ``target``
    ``(B, T, 1, H, W)`` -> float32 ``(B, T * H * W)``, one row of pixel scores per clip."""
    check_attention(attention, target)
    return F.interpolate(
        attention.flatten(0, 1).float(), size=target.shape[-2:], mode="bilinear",
        align_corners=False,
    ).reshape(target.shape[0], -1)


class MaskAgreement(Metric):
    """Agreement of attention masks with sound-source masks: IoU at 0.5 and ROC AUC over pixels.

    ``update(attention, target)``: ``attention`` ``(B, T, 1, h, w)`` in [0, 1] (one fusion
    scale) is upsampled bilinearly to the size of ``target`` ``(B, T, 1, H, W)`` (binarised at
    0.5). Per clip, over all its frames' pixels: IoU of ``attention > 0.5`` with the target, and
    the AUC of the attention values as scores of the target (ties count half, so a constant
    attention scores 0.5). ``compute()`` returns ``{"iou", "auc"}``, the means over clips. Clips
    whose target is all 0 or all 1 (AUC undefined) are skipped and counted in ``skipped``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("iou_sum", "auc_sum"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("clips", "skipped"):
            self.add_state(name, torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, attention: Tensor, target: Tensor) -> None:
        batch = target.shape[0]
        upsampled = upsample_attention(attention, target)
        positive = (target >= 0.5).reshape(batch, -1)
        predicted = upsampled > 0.5
        for scores, labels, prediction in zip(upsampled, positive, predicted, strict=True):
            if labels.all() or not labels.any():
                self.skipped += 1
                continue
            union = (prediction | labels).sum()
            self.iou_sum += (prediction & labels).sum() / union
            self.auc_sum += binary_auroc(scores, labels.long(), thresholds=None)
            self.clips += 1

    def compute(self) -> dict[str, Tensor]:
        """``{"iou": mean IoU, "auc": mean AUC}`` over the scored clips (NaN before any)."""
        return {"iou": self.iou_sum / self.clips, "auc": self.auc_sum / self.clips}


class SourceDistractorAUC(Metric):
    """Does the attention prefer the sounding objects to the silent ones? ROC AUC over object
    pixels only.

    ``update(attention, source, distractors)``: ``attention`` ``(B, T, 1, h, w)`` in [0, 1] (one
    fusion scale) is upsampled bilinearly to the size of the masks ``(B, T, 1, H, W)``
    (binarised at 0.5; a pixel in both counts as source). Per clip, over all its frames'
    pixels that lie in the source or in a distractor: the AUC of the attention values as scores
    of "source" against "distractor" (ties count half: 0.5 = no preference, 1 = every source
    pixel above every distractor pixel, 0 = the reverse). ``compute()`` returns ``{"auc"}``,
    the mean over clips;
    clips without a source or without a distractor pixel are skipped and counted in
    ``skipped``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("auc_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("clips", "skipped"):
            self.add_state(name, torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, attention: Tensor, source: Tensor, distractors: Tensor) -> None:
        if source.shape != distractors.shape:
            raise ValueError(
                f"source {tuple(source.shape)} and distractor {tuple(distractors.shape)} masks "
                "differ in shape"
            )
        scores = upsample_attention(attention, source)
        sounding = (source >= 0.5).reshape(source.shape[0], -1)
        silent = (distractors >= 0.5).reshape(source.shape[0], -1) & ~sounding
        for clip_scores, positive, negative in zip(scores, sounding, silent, strict=True):
            if not positive.any() or not negative.any():
                self.skipped += 1
                continue
            objects = positive | negative
            self.auc_sum += binary_auroc(
                clip_scores[objects], positive[objects].long(), thresholds=None
            )
            self.clips += 1

    def compute(self) -> dict[str, Tensor]:
        """``{"auc": mean AUC}`` over the scored clips (NaN before any)."""
        return {"auc": self.auc_sum / self.clips}
