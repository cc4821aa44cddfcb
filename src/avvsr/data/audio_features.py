"""Per-frame audio features: how they are made (:class:`AudioFeatureSettings`) and the
log-mel transform itself (:class:`LogMel`, torchaudio).

:class:`AudioFeatureSettings` is the one home of the feature settings: the ``audio`` config
node (``conf/audio/``) is instantiated into it and read both by the data (the DataModule's
``audio``) and by the model (the LightningModule's ``audio_features``, stored with its config
in every checkpoint and export), so a trained model always says how its features were made.

``LogMel()(windows)`` maps waveforms ``(..., N)`` at ``sample_rate`` Hz to
``log(mel_power + LOG_EPS)`` of shape ``(..., n_mels, n_frames)``; silence maps to the
constant :data:`SILENCE_LOG_MEL` everywhere, so missing audio has a well-defined feature.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

LOG_EPS = 1e-6
SILENCE_LOG_MEL = math.log(LOG_EPS)


@dataclass(frozen=True)
class AudioFeatureSettings:
    """How each frame's audio feature is made: the ``window_s`` seconds of mono audio centred
    on the frame's timestamp, resampled to ``sample_rate`` Hz, as a log-mel spectrogram
    (``n_fft``-sample Hann STFT every ``hop_length`` samples, ``n_mels`` bands)."""

    sample_rate: int = 16000  # Hz
    window_s: float = 0.32  # seconds of audio per frame
    n_fft: int = 512  # samples
    hop_length: int = 160  # samples
    n_mels: int = 64

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            wanted = numbers.Integral if item.type == "int" else numbers.Real
            if isinstance(value, bool) or not isinstance(value, wanted) or value <= 0:
                raise ValueError(f"audio feature setting {item.name} must be a positive "
                                 f"{item.type}, got {value!r}")

    @property
    def window_samples(self) -> int:
        """Samples in each frame's window."""
        return round(self.window_s * self.sample_rate)

    def log_mel(self) -> LogMel:
        """The :class:`LogMel` transform of these settings."""
        return LogMel(self.sample_rate, self.n_fft, self.hop_length, self.n_mels)


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
