"""The audio-visual synchrony map and MS-AVF masks that see it."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch

from avvsr.data.audio_features import SILENCE_LOG_MEL
from avvsr.metrics import BT601_LUMA_WEIGHTS
from avvsr.models.fusion import MSAVF
from avvsr.models.synchrony import AudioVisualSynchrony

N_MELS, N_FRAMES = 8, 5


def log_mel_of(loudness: torch.Tensor) -> torch.Tensor:
    """Log-mel windows ``(B, T, N_MELS, N_FRAMES)`` whose every bin is ``loudness`` (B, T):
    their mean power is ``exp(loudness)``."""
    return loudness[:, :, None, None].expand(-1, -1, N_MELS, N_FRAMES).clone()


def reference_synchrony(
    lq: np.ndarray, loudness: np.ndarray, window: int, luma_floor: float, loudness_floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """The definition, frame by frame in float64: ``lq`` (T, 3, h, w), ``loudness`` (T,) ->
    the synchrony and the luma's standard deviation over each window, (T, h, w) each."""
    luma = np.einsum("tchw,c->thw", lq.astype(np.float64), np.array(BT601_LUMA_WEIGHTS))
    half, frames = window // 2, len(loudness)
    out, spread = np.empty_like(luma), np.empty_like(luma)
    for t in range(frames):
        around = slice(max(0, t - half), min(frames, t + half + 1))
        x, y = luma[around], loudness[around]
        covariance = ((x - x.mean(0)) * (y - y.mean())[:, None, None]).mean(0)
        out[t] = covariance / np.sqrt((x.var(0) + luma_floor**2) * (y.var() + loudness_floor**2))
        spread[t] = x.std(0)
    return out, spread


@pytest.mark.parametrize("window", [3, 5, 9, 41])  # 41: longer than the clip
def test_the_map_is_the_windowed_correlation_of_luma_and_loudness(window: int) -> None:
    generator = torch.Generator().manual_seed(0)
    lq = torch.rand(2, 11, 3, 4, 5, generator=generator)
    loudness = torch.randn(2, 11, generator=generator)
    synchrony = AudioVisualSynchrony(window, luma_floor_grey=2.0, loudness_floor=0.1)
    got = synchrony(lq, log_mel_of(loudness))
    assert got.shape == (2, 11, 1, 4, 5) and got.dtype == torch.float32
    same, luma_std = synchrony.statistics(lq, log_mel_of(loudness))
    assert torch.equal(same, got) and luma_std.shape == got.shape
    for clip in range(2):
        expected, expected_std = reference_synchrony(
            lq[clip].numpy(), loudness[clip].numpy(), window, 2.0, 0.1
        )
        np.testing.assert_allclose(got[clip, :, 0].numpy(), expected, atol=2e-5)
        np.testing.assert_allclose(luma_std[clip, :, 0].numpy(), expected_std, rtol=1e-4,
                                   atol=1e-3)


def test_the_map_is_float32_under_bfloat16_autocast() -> None:
    generator = torch.Generator().manual_seed(4)
    lq, loudness = torch.rand(1, 8, 3, 4, 4, generator=generator), torch.randn(1, 8)
    synchrony = AudioVisualSynchrony(5)
    expected = synchrony(lq, log_mel_of(loudness))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = synchrony(lq, log_mel_of(loudness))
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-6)


def test_pixels_in_step_with_the_sound_score_high_and_others_zero() -> None:
    frames = 16
    envelope = torch.rand(1, frames, generator=torch.Generator().manual_seed(1))
    lq = torch.full((1, frames, 3, 3, 4), 0.5)
    lq[:, :, :, 0] += 0.3 * envelope[:, :, None, None]  # row 0: brighter when louder
    lq[:, :, :, 1] -= 0.3 * envelope[:, :, None, None]  # row 1: darker when louder
    loud = log_mel_of(2 * torch.log(0.2 + 0.8 * envelope))  # a tone's power, in natural log
    silent = torch.full_like(loud, SILENCE_LOG_MEL)
    synchrony = AudioVisualSynchrony(window=5)
    sounding = synchrony(lq, loud)[0, :, 0]
    assert sounding[:, 0].min() > 0.8 and sounding[:, 1].max() < -0.8
    assert sounding[:, 2].abs().max() < 1e-4  # a still row
    assert synchrony(lq, silent).abs().max() < 1e-4  # silence moves nothing


def test_invalid_windows_and_inputs_are_refused() -> None:
    for window in (1, 4):
        with pytest.raises(ValueError, match="odd number of frames"):
            AudioVisualSynchrony(window)
    with pytest.raises(ValueError, match="floors"):
        AudioVisualSynchrony(5, luma_floor_grey=0)
    with pytest.raises(ValueError, match="same B and T"):
        AudioVisualSynchrony(5)(torch.rand(1, 4, 3, 2, 2), torch.zeros(1, 3, N_MELS, N_FRAMES))


def fusion_with_synchrony(weight: float = 2.0, **options) -> MSAVF:
    return MSAVF(visual_channels=8, audio_dim=6, scales=3, hidden_channels=8, embed_dim=4,
                 synchrony_window=5, initial_synchrony_weight=weight, **options)


def test_each_mask_adds_the_weighted_synchrony_at_its_scale_to_its_logit() -> None:
    fusion = fusion_with_synchrony(weight=4.0)
    feat, audio = torch.randn(1, 8, 4, 8), torch.randn(1, 6)
    synchrony = torch.zeros(1, 1, 4, 8)
    synchrony[..., :4] = 1.0  # the left half in step with the sound
    fused, masks = fusion(feat, audio, synchrony=synchrony)
    assert torch.equal(fused, feat)  # still the identity at initialisation
    _, masks_out_of_step = fusion(feat, audio, synchrony=torch.zeros_like(synchrony))
    added = [torch.logit(m.double()) - torch.logit(o.double())
             for m, o in zip(masks, masks_out_of_step, strict=True)]
    assert torch.allclose(added[0], 4.0 * synchrony.double(), atol=1e-4)  # 4x8: as given
    assert torch.allclose(added[2], torch.tensor([[[[4.0, 0.0]]]], dtype=torch.float64),
                          atol=1e-4)  # 1x2: each half area-averaged
    assert fusion.fuse[0].synchrony_weight.item() == pytest.approx(4.0)


def test_the_synchrony_weight_gets_gradients_and_follows_the_scalar_rate() -> None:
    fusion = fusion_with_synchrony(weight=2.0, scalar_rate=10.0)
    attention = fusion.fuse[0]
    assert attention.stored_synchrony_weight.item() == pytest.approx(0.2)
    torch.nn.init.normal_(fusion.out_proj.weight, std=0.1)
    feat, audio, synchrony = torch.randn(2, 8, 6, 6), torch.randn(2, 6), torch.rand(2, 1, 6, 6)
    fusion(feat, audio, synchrony=synchrony)[0].square().mean().backward()
    for scale in fusion.fuse:
        assert scale.stored_synchrony_weight.grad.abs() > 0


def test_the_synchrony_is_required_exactly_when_the_fusion_uses_it() -> None:
    feat, audio, synchrony = torch.randn(1, 8, 4, 4), torch.randn(1, 6), torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="pass `synchrony`"):
        fusion_with_synchrony()(feat, audio)
    plain = MSAVF(visual_channels=8, audio_dim=6, hidden_channels=8)
    assert plain.synchrony is None and plain.fuse[0].synchrony_weight is None
    with pytest.raises(ValueError, match="without synchrony_window"):
        plain(feat, audio, synchrony=synchrony)
    with pytest.raises(ValueError, match="needs attention"):
        MSAVF(visual_channels=8, audio_dim=6, attention=False, synchrony_window=5)


def test_grouped_inference_gives_the_whole_clips_output() -> None:
    """The map is computed once per clip and sliced per group of hooked frames, so inference
    (one group per frame) equals training's single call."""
    from avvsr.models.audio_encoder import AudioEncoder
    from avvsr.models.avvsr_net import AVVSRNet
    from avvsr.models.backbones.basicvsr import BasicVSR

    net = AVVSRNet(
        BasicVSR(num_feat=8, num_blocks=1, hr_channels=8, spynet={"num_levels": 2}),
        AudioEncoder(embed_dim=6, widths=(8,), frequency_bands=2),
        partial(MSAVF, hidden_channels=8, synchrony_window=5),
    ).eval()
    torch.nn.init.normal_(net.fusion.out_proj.weight, std=0.1)
    lq = torch.rand(1, 6, 3, 8, 8)
    audio = log_mel_of(torch.randn(1, 6))
    whole = net(lq, audio)  # autograd records: one hook call for all frames
    with torch.no_grad():
        grouped = net(lq, audio)
    assert torch.allclose(whole.sr, grouped.sr, atol=1e-5)
    for whole_mask, grouped_mask in zip(whole.masks, grouped.masks, strict=True):
        assert torch.allclose(whole_mask, grouped_mask, atol=1e-6)


def test_loudness_is_the_log_of_the_mean_mel_power() -> None:
    """A window twice as loud in power moves the loudness by ln 2 whatever the bin layout:
    the map is the same for bins that are uniform or concentrated at the same mean power."""
    frames = 7
    loudness = torch.randn(1, frames, generator=torch.Generator().manual_seed(2))
    uniform = log_mel_of(loudness)
    concentrated = torch.full_like(uniform, -math.inf)
    concentrated[..., 0, 0] = loudness + math.log(N_MELS * N_FRAMES)  # all power in one bin
    lq = torch.rand(1, frames, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    synchrony = AudioVisualSynchrony(5)
    assert torch.allclose(synchrony(lq, uniform), synchrony(lq, concentrated), atol=1e-5)
