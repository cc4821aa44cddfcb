"""Log-mel features: shapes, silence, power scaling, and where a tone's energy lands."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avvsr.data.audio_features import LOG_EPS, SILENCE_LOG_MEL, LogMel


def hz_to_htk_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def htk_mel_to_hz(mel: float) -> float:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def band_centre_hz(band: int, n_mels: int, f_min: float, f_max: float) -> float:
    """Centre of triangular band ``band``: the bands' corners are ``n_mels + 2`` points evenly
    spaced on the HTK mel scale from ``f_min`` to ``f_max``; band ``m`` peaks at point m+1."""
    low, high = hz_to_htk_mel(f_min), hz_to_htk_mel(f_max)
    return htk_mel_to_hz(low + (band + 1) * (high - low) / (n_mels + 1))


def sine(frequency_hz: float, num_samples: int, sample_rate: int, amplitude: float = 0.5):
    times = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    return (amplitude * torch.sin(2 * math.pi * frequency_hz * times)).float()


def test_silence_is_the_constant_log_eps() -> None:
    assert SILENCE_LOG_MEL == math.log(LOG_EPS)
    features = LogMel()(torch.zeros(2, 5, 3200))
    assert torch.isfinite(features).all()
    torch.testing.assert_close(
        features, torch.full_like(features, SILENCE_LOG_MEL), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("num_samples", [100, 512, 3200, 3201])
def test_shapes_follow_leading_dims_and_num_frames(num_samples: int) -> None:
    log_mel = LogMel(n_mels=40, hop_length=160)
    windows = torch.randn(2, 3, num_samples) * 0.1
    features = log_mel(windows)
    assert features.shape == (2, 3, 40, log_mel.num_frames(num_samples))
    assert log_mel.num_frames(num_samples) == 1 + num_samples // 160  # centred frames
    assert features.dtype == torch.float32 and torch.isfinite(features).all()


def test_features_are_finite_for_full_scale_noise() -> None:
    noise = torch.rand(4, 1600) * 2 - 1
    assert torch.isfinite(LogMel()(noise)).all()


@pytest.mark.parametrize(
    "sample_rate, n_mels, f_min, f_max, band",
    [(16000, 64, 0.0, None, 10), (16000, 64, 0.0, None, 40), (8000, 40, 50.0, 3800.0, 25)],
)
def test_a_tone_peaks_in_its_mel_band(sample_rate, n_mels, f_min, f_max, band) -> None:
    log_mel = LogMel(sample_rate=sample_rate, n_mels=n_mels, f_min=f_min, f_max=f_max)
    top = f_max if f_max is not None else sample_rate / 2
    frequency = band_centre_hz(band, n_mels, f_min, top)
    features = log_mel(sine(frequency, sample_rate // 2, sample_rate))
    middle = features[:, features.shape[-1] // 2]  # a frame away from the zero-padded ends
    assert int(middle.argmax()) == band


def test_power_two_scaling() -> None:
    """Doubling the amplitude multiplies the mel power by 4: +log(4) where power >> LOG_EPS."""
    log_mel = LogMel()
    quiet = log_mel(sine(1000.0, 3200, 16000, amplitude=0.2))
    loud = log_mel(sine(1000.0, 3200, 16000, amplitude=0.4))
    strong = quiet > math.log(LOG_EPS) + 12  # power at least ~1.6e5 times LOG_EPS
    assert strong.sum() > 10
    np.testing.assert_allclose((loud - quiet)[strong].numpy(), math.log(4.0), atol=1e-3)
