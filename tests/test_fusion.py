"""MS-AVF and its ablation variants: shapes, identity at initialisation, gradients, configs."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from avvsr.config import compose
from avvsr.models.audio_encoder import AudioEncoder
from avvsr.models.fusion import MSAVF

VARIANTS = {
    "msavf": {"top_down": True, "attention": True},
    "no_topdown": {"top_down": False, "attention": True},
    "concat": {"top_down": True, "attention": False},
    "concat_no_topdown": {"top_down": False, "attention": False},
}
ODD_SIZES = [(5, 7), (9, 3), (1, 1)]


def pyramid_sizes(height: int, width: int, scales: int) -> list[tuple[int, int]]:
    """Scale 0 is the input size; each next scale halves it, rounding up."""
    sizes = [(height, width)]
    for _ in range(scales - 1):
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    return sizes


def randomise_output_projection(fusion: MSAVF) -> None:
    """Make the zero-initialised last projection non-zero, as training would."""
    nn.init.normal_(fusion.out_proj.weight, std=0.1)
    nn.init.normal_(fusion.out_proj.bias, std=0.1)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scales", [1, 2, 3, 4])
@pytest.mark.parametrize("size", ODD_SIZES)
def test_shapes_masks_and_identity_at_init(variant: str, scales: int, size: tuple) -> None:
    fusion = MSAVF(visual_channels=8, audio_dim=6, scales=scales, hidden_channels=8,
                   embed_dim=4, **VARIANTS[variant])
    feat, audio = torch.randn(3, 8, *size), torch.randn(3, 6)
    fused, masks = fusion(feat, audio)
    assert torch.equal(fused, feat), "the zero-initialised residual must give the input exactly"
    if not VARIANTS[variant]["attention"]:
        assert masks == []
        return
    expected = [(3, 1, h, w) for h, w in pyramid_sizes(*size, scales)]
    assert [tuple(m.shape) for m in masks] == expected
    for mask in masks:
        assert mask.min() >= 0 and mask.max() <= 1


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scales", [1, 3, 4])
def test_gradients_reach_every_parameter_once_output_is_nonzero(variant: str, scales: int) -> None:
    encoder = AudioEncoder(embed_dim=6, widths=(8,), frequency_bands=2)
    fusion = MSAVF(visual_channels=8, audio_dim=6, scales=scales, hidden_channels=8,
                   embed_dim=4, **VARIANTS[variant])
    randomise_output_projection(fusion)
    log_mel = torch.randn(2, 1, 16, 9)
    feat = torch.randn(2, 8, 9, 11)
    fused, masks = fusion(feat, encoder(log_mel).flatten(0, 1))
    loss = (fused * torch.randn_like(fused)).sum() + sum(m.sum() for m in masks)
    loss.backward()
    no_gradient = [
        name
        for name, parameter in [*fusion.named_parameters(), *encoder.named_parameters()]
        if parameter.grad is None or not parameter.grad.abs().sum() > 0
    ]
    assert no_gradient == []


def test_masks_depend_on_audio_and_stay_in_unit_interval_when_saturated() -> None:
    fusion = MSAVF(visual_channels=8, audio_dim=6, scales=2, hidden_channels=8, embed_dim=4)
    feat = torch.randn(2, 8, 7, 5)
    masks_a = fusion(feat, torch.randn(2, 6))[1]
    masks_b = fusion(feat, torch.randn(2, 6))[1]
    assert not torch.allclose(masks_a[0], masks_b[0])
    with torch.no_grad():
        fusion.fuse[0].log_temperature.fill_(10.0)  # temperature e^10: sigmoid saturates
    saturated = fusion(feat * 1e3, torch.randn(2, 6) * 1e3)[1][0]
    assert torch.isfinite(saturated).all() and saturated.min() >= 0 and saturated.max() <= 1


def test_masks_start_undecided_whatever_the_seed() -> None:
    """A mask that starts closed over an object gates the audio out there, and with it the
    gradient that would open it: at the old initial temperature of 10, some seeds started with
    whole masks near 0 or 1 (and on the study's set only the seed whose mask started open
    took the audio up)."""
    for seed in range(10):
        torch.manual_seed(seed)
        fusion = MSAVF(visual_channels=16, audio_dim=32, scales=3)
        # Features after a LeakyReLU, as at the backbone's fusion point: their common
        # positive part gives every pixel's key a shared direction.
        feat = nn.functional.leaky_relu(torch.randn(4, 16, 16, 16), 0.1)
        for mask in fusion(feat, torch.randn(4, 32))[1]:
            frame_means = mask.mean(dim=(1, 2, 3))
            assert frame_means.min() > 0.25 and frame_means.max() < 0.75, (seed, frame_means)


def test_scalar_rate_speeds_up_the_temperature_and_bias_but_starts_the_same() -> None:
    """The same masks at initialisation whatever the rate; one Adam step moves the effective
    log-temperature and bias (rate x stored value) about rate times as far."""
    feat, audio = torch.randn(2, 8, 6, 6), torch.randn(2, 6)
    steps = {}
    for rate in (1.0, 10.0):
        torch.manual_seed(0)
        fusion = MSAVF(visual_channels=8, audio_dim=6, scales=2, initial_temperature=2.0,
                       scalar_rate=rate)
        randomise_output_projection(fusion)
        masks = fusion(feat, audio)[1]
        if rate == 1.0:
            reference = masks
        for mask, expected in zip(masks, reference, strict=True):
            torch.testing.assert_close(mask, expected)
        attention = fusion.fuse[0]
        before = (rate * attention.log_temperature.item(), rate * attention.logit_bias.item())
        optimiser = torch.optim.Adam(fusion.parameters(), lr=1e-3)
        fusion(feat, audio)[0].square().mean().backward()
        optimiser.step()
        after = (rate * attention.log_temperature.item(), rate * attention.logit_bias.item())
        steps[rate] = [abs(a - b) for a, b in zip(after, before, strict=True)]
    assert before[0] == pytest.approx(math.log(2.0))
    for slow, fast in zip(steps[1.0], steps[10.0], strict=True):
        assert fast == pytest.approx(10 * slow, rel=1e-3)
    with pytest.raises(ValueError, match="scalar_rate"):
        MSAVF(visual_channels=8, audio_dim=6, scalar_rate=0)


@pytest.mark.parametrize("attention", [True, False])
def test_top_down_option_changes_the_output_only_with_several_scales(attention: bool) -> None:
    feat, audio = torch.randn(2, 8, 9, 7), torch.randn(2, 6)
    outputs = {}
    for scales in (1, 3):
        for top_down in (True, False):
            torch.manual_seed(1)
            fusion = MSAVF(visual_channels=8, audio_dim=6, scales=scales, hidden_channels=8,
                           embed_dim=4, top_down=top_down, attention=attention)
            randomise_output_projection(fusion)
            outputs[scales, top_down] = fusion(feat, audio)[0]
    assert torch.equal(outputs[1, True], outputs[1, False])
    assert not torch.allclose(outputs[3, True], outputs[3, False])


def test_bfloat16_autocast_gives_finite_output_and_masks_of_the_feature_dtype() -> None:
    fusion = MSAVF(visual_channels=8, audio_dim=6, scales=2, hidden_channels=8, embed_dim=4)
    randomise_output_projection(fusion)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, masks = fusion(torch.randn(2, 8, 5, 7), torch.randn(2, 6))
    assert torch.isfinite(fused.float()).all()
    assert all(m.dtype == torch.bfloat16 for m in masks)


@pytest.mark.parametrize("scales", [0, 5])
def test_scales_outside_one_to_four_are_rejected(scales: int) -> None:
    with pytest.raises(ValueError, match="scales"):
        MSAVF(visual_channels=8, audio_dim=6, scales=scales)


def count_multiply_adds(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-adds per sample of the convolutions and linear layers in one forward pass."""
    total = 0

    def add(layer: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        per_output = layer.in_features if isinstance(layer, nn.Linear) else (
            layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        )
        total += output[0].numel() * per_output

    handles = [m.register_forward_hook(add) for m in module.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        module(*inputs)
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scales", [1, 2, 3, 4])
def test_cost_is_under_a_tenth_of_the_backbone(variant: str, scales: int) -> None:
    """At C=64, D=128: parameters < 10% of BasicVSR's 6.3M, multiply-adds per frame < 10% of
    the backbone's ~30 residual blocks (60 3x3 convs of 64 channels at LR size)."""
    fusion = MSAVF(visual_channels=64, audio_dim=128, scales=scales, **VARIANTS[variant])
    height, width = 32, 48
    backbone_multiply_adds = 60 * 64 * 64 * 9 * height * width
    assert sum(p.numel() for p in fusion.parameters()) < 0.1 * 6.3e6
    multiply_adds = count_multiply_adds(fusion, torch.randn(1, 64, height, width),
                                        torch.randn(1, 128))
    assert multiply_adds < 0.1 * backbone_multiply_adds


EXPECTED_OPTIONS = {
    "msavf": {"scales": 3, "top_down": True, "attention": True},
    "msavf_single": {"scales": 1, "top_down": True, "attention": True},
    "msavf_s2": {"scales": 2, "top_down": True, "attention": True},
    "msavf_no_topdown": {"scales": 3, "top_down": False, "attention": True},
    "msavf_sync": {"scales": 3, "top_down": True, "attention": True},
    "concat": {"scales": 3, "top_down": True, "attention": False},
}


def compose_fusion(option: str):
    """``model.fusion`` of the ``train`` config composed with ``model/fusion=<option>``."""
    return compose("train", [f"model/fusion={option}"]).model.fusion


@pytest.mark.parametrize("option", EXPECTED_OPTIONS)
def test_fusion_configs_build_the_intended_variant(option: str) -> None:
    factory = instantiate(compose_fusion(option))
    fusion = factory(visual_channels=16, audio_dim=12)
    assert isinstance(fusion, MSAVF)
    built = {"scales": fusion.scales, "top_down": fusion.top_down, "attention": fusion.attention}
    assert built == EXPECTED_OPTIONS[option]


def test_fusion_none_config_composes_to_null() -> None:
    assert compose_fusion("none") is None
