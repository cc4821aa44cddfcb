"""Audio-visual synchrony: where the frames' brightness moves in step with the sound's loudness.

The classic cue of sound-source localisation without learning (Hershey and Movellan, "Audio
Vision", NIPS 1999; Kidron et al., "Pixels that sound", CVPR 2005): a pixel of a sounding object
tends to change as the sound's loudness does, a pixel elsewhere does not. Per frame ``t`` and LR
pixel, over the ``window`` frames centred on ``t`` (fewer at the clip's ends), the Pearson
correlation of the pixel's luma with the audio's loudness::

    synchrony = AudioVisualSynchrony(window=5)(lq, log_mel)
    # lq (B, T, 3, h, w) in [0, 1], log-mel (B, T, n_mels, n_frames) -> (B, T, 1, h, w) in [-1, 1]

It sees what a per-frame fusion cannot: how each frame relates to its neighbours in both
streams. MS-AVF can add it to its masks' logits (``MSAVF(synchrony_window=...)``).

- Luma: BT.601 Y in grey levels (0-255) of the LR frames.
- Loudness: the natural log of each frame's mean mel power (its log-mel window's
  ``logsumexp`` less the log of the bin count), so silence is the constant ``log(1e-6)``.
- Both variances get a floor (``luma_floor_grey`` grey levels, ``loudness_floor`` natural-log
  units, squared) before the division, so the sensor noise of a flat region or the jitter of a
  steady tone does not become a correlation of +-1: a constant stream (silence, a still pixel)
  gives 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvsr.metrics import BT601_LUMA_WEIGHTS


class AudioVisualSynchrony(nn.Module):
    """Per-pixel correlation of the LR luma with the audio loudness over a sliding window of
    frames (see the module docstring). No parameters.

    Args:
        window: frames per window, odd, >= 3.
        luma_floor_grey: added to the luma's standard deviation (in quadrature), grey levels.
        loudness_floor: added to the loudness's standard deviation (in quadrature), natural-log
            units of mel power (0.1 is about 0.4 dB).
    """

    def __init__(
        self, window: int = 5, luma_floor_grey: float = 2.0, loudness_floor: float = 0.1
    ) -> None:
        super().__init__()
        if window < 3 or window % 2 == 0:
            raise ValueError(f"synchrony window must be an odd number of frames >= 3, got {window}")
        if luma_floor_grey <= 0 or loudness_floor <= 0:
            raise ValueError("the synchrony's variance floors must be > 0")
        self.window = window
        self.luma_floor_grey = luma_floor_grey
        self.loudness_floor = loudness_floor

    def forward(self, lq: Tensor, log_mel: Tensor) -> Tensor:
        """``lq`` (B, T, 3, h, w) in [0, 1], ``log_mel`` (B, T, n_mels, n_frames) ->
        ``(B, T, 1, h, w)`` in [-1, 1], float32 at least."""
        return self.statistics(lq, log_mel)[0]

    def statistics(self, lq: Tensor, log_mel: Tensor) -> tuple[Tensor, Tensor]:
        """The synchrony (as :meth:`forward`) and, over the same windows, the standard
        deviation of each pixel's luma in grey levels (unfloored): both ``(B, T, 1, h, w)``.
        A pixel whose luma varies but not in step with the sound is what a silent moving or
        pulsing object looks like."""
        if lq.ndim != 5 or log_mel.ndim != 4 or lq.shape[:2] != log_mel.shape[:2]:
            raise ValueError(
                f"expected frames (B, T, 3, h, w) and log-mel (B, T, n_mels, n_frames) of the "
                f"same B and T, got {tuple(lq.shape)} and {tuple(log_mel.shape)}"
            )
        precision = torch.promote_types(lq.dtype, torch.float32)
        # In float32 at least under autocast too: a bfloat16 luma keeps 8 bits, about a grey
        # level at mid-grey, the size of the changes the correlation follows.
        with torch.autocast(device_type=lq.device.type, enabled=False):
            weights = torch.tensor(BT601_LUMA_WEIGHTS, dtype=precision, device=lq.device)
            luma = torch.einsum("btchw,c->bthw", lq.to(precision), weights)  # grey levels
            bins = log_mel.flatten(2).to(precision)
            loudness = torch.logsumexp(bins, dim=2) - math.log(bins.shape[2])  # (B, T)
            # Centred on the clip's means (the correlation does not change), so that the
            # windowed second moments below do not cancel in float32.
            luma = luma - luma.mean(dim=1, keepdim=True)
            loudness = loudness - loudness.mean(dim=1, keepdim=True)
            correlation, luma_var = self.correlation(luma, loudness[:, :, None, None])
            return correlation.unsqueeze(2), luma_var.sqrt().unsqueeze(2)

    def correlation(self, luma: Tensor, loudness: Tensor) -> tuple[Tensor, Tensor]:
        """Windowed Pearson correlation of ``luma`` (B, T, h, w) with ``loudness``
        (B, T, 1, 1), both floored, and the luma's windowed variance (unfloored):
        ``(B, T, h, w)`` each."""

        half = self.window // 2

        def window_sum(x: Tensor) -> Tensor:  # (B, T, ...) -> the sum over each t's window
            padded = F.pad(x.unsqueeze(1), (0, 0, 0, 0, half, half))  # zeros beyond the clip
            return F.avg_pool3d(padded, (self.window, 1, 1), stride=1).squeeze(1) * self.window

        frames_in_window = window_sum(torch.ones_like(loudness))  # fewer at the clip's ends

        def windowed_mean(x: Tensor) -> Tensor:
            return window_sum(x) / frames_in_window

        luma_mean, loudness_mean = windowed_mean(luma), windowed_mean(loudness)
        covariance = windowed_mean(luma * loudness) - luma_mean * loudness_mean
        luma_var = (windowed_mean(luma.square()) - luma_mean.square()).clamp_min(0)
        loudness_var = (windowed_mean(loudness.square()) - loudness_mean.square()).clamp_min(0)
        scale = torch.sqrt(
            (luma_var + self.luma_floor_grey**2) * (loudness_var + self.loudness_floor**2)
        )
        return covariance / scale, luma_var
