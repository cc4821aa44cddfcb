"""Log-mel features of per-frame audio windows (torchaudio).

``LogMel()(windows)`` maps waveforms ``(..., N)`` at ``sample_rate`` Hz to
``log(mel_power + LOG_EPS)`` of shape ``(..., n_mels, n_frames)``; silence maps to the
constant :data:`SILENCE_LOG_MEL` everywhere, so missing audio has a well-defined feature.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_EPS = 1e-6
SILENCE_LOG_MEL = math.log(LOG_EPS)


class LogMel(torch.nn.Module):
    """Log mel power spectrogram: ``(..., N)`` samples -> ``(..., n_mels, n_frames)``.

    STFT of ``n_fft`` samples (Hann window) every ``hop_length`` samples, centred frames with
    zero padding at the ends (so any window length works, and padding adds no energy), mel
    filter bank of ``n_mels`` bands between ``f_min`` and ``f_max`` Hz (HTK scale), power 2.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
    ) -> None:
        super().__init__()
        from torchaudio.transforms import MelSpectrogram

        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.hop_length = hop_length
        self.mel = MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
            power=2.0,
            center=True,
            pad_mode="constant",
        )

    def forward(self, windows: Tensor) -> Tensor:
        """``(..., N)`` float waveforms -> ``(..., n_mels, num_frames(N))`` log mel power."""
        return torch.log(self.mel(windows) + LOG_EPS)

    def num_frames(self, num_samples: int) -> int:
        """STFT frames produced for a window of ``num_samples`` samples."""
        return num_samples // self.hop_length + 1
