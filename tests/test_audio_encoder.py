"""The audio encoder: shapes, silence, per-window independence, configs."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from avvsr.config import compose
from avvsr.models.audio_encoder import AudioEncoder

SILENCE = math.log(1e-6)  # log(mel_power + 1e-6) of zero power, in every bin


def small_encoder(**options) -> AudioEncoder:
    return AudioEncoder(**{"embed_dim": 12, "widths": (8, 16), **options})


@pytest.mark.parametrize("n_mels, n_frames", [(64, 33), (40, 17), (1, 1), (7, 3)])
def test_embedding_shape(n_mels: int, n_frames: int) -> None:
    encoder = small_encoder()
    embedding = encoder(torch.randn(2, 3, n_mels, n_frames))
    assert embedding.shape == (2, 3, encoder.embed_dim) == (2, 3, 12)


@pytest.mark.parametrize("norm_groups", [8, None])
def test_silence_has_a_finite_embedding_and_finite_gradients(norm_groups: int | None) -> None:
    encoder = small_encoder(norm_groups=norm_groups)
    silence = torch.full((2, 3, 64, 33), SILENCE, requires_grad=True)
    embedding = encoder(silence)
    assert torch.isfinite(embedding).all()
    assert torch.allclose(embedding, embedding[:1, :1].expand_as(embedding))
    embedding.square().sum().backward()
    gradients = [silence.grad, *(p.grad for p in encoder.parameters() if p.grad is not None)]
    assert all(torch.isfinite(g).all() for g in gradients)


@pytest.mark.parametrize("quiet", [torch.full((1, 1, 64, 33), SILENCE), torch.randn(1, 1, 64, 33)])
def test_loudness_is_kept(quiet: torch.Tensor) -> None:
    """A window 20 times louder (+3 in every log bin) has another embedding; per-window
    standardisation would map both to the same image, up to rounding noise (so the change
    must exceed 1% of the embedding's norm, far above rounding)."""
    encoder = small_encoder()
    change = (encoder(quiet + 3.0) - encoder(quiet)).norm()
    assert change > 0.01 * encoder(quiet).norm()


def test_each_window_is_encoded_independently_of_the_batch() -> None:
    """No batch statistics (no BatchNorm): mixing in silent clips changes nothing, in training."""
    encoder = small_encoder().train()
    sounding = torch.randn(1, 4, 64, 33)
    mixed = torch.cat([sounding, torch.full_like(sounding, SILENCE)])
    torch.testing.assert_close(encoder(mixed)[:1], encoder(sounding))


def test_bad_inputs_and_options_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(B, T, n_mels, n_frames\)"):
        small_encoder()(torch.randn(3, 64, 33))
    with pytest.raises(ValueError, match="divisible"):
        small_encoder(widths=(12,), norm_groups=8)
    with pytest.raises(ValueError, match="stage"):
        small_encoder(widths=())


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_configs_build_an_encoder_of_the_configured_size(name: str) -> None:
    config = compose("train", [f"model/audio_encoder={name}"]).model.audio_encoder
    encoder = instantiate(config)
    assert isinstance(encoder, AudioEncoder)
    assert encoder.embed_dim == config.embed_dim
    assert encoder(torch.randn(1, 2, 64, 33)).shape == (1, 2, config.embed_dim)
