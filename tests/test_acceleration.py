"""The speed levers change how a network runs, not what it computes (checked on the CPU)."""

from __future__ import annotations

import pytest
import torch

from avvsr.models.acceleration import COMPILED_UNITS, Acceleration
from helpers.models import TINY_BACKBONES as TINY
from helpers.models import build_trained_backbone as build_trained

pytestmark = pytest.mark.usefixtures("one_thread")


def outputs(model, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference (grouped) and training-path outputs of ``model`` on ``lq``."""
    with torch.no_grad():
        inference = model(lq)
    return inference, model(lq).detach()


@pytest.mark.parametrize("name", TINY)
def test_channels_last_gives_the_same_output(name: str) -> None:
    model = build_trained(name)
    lq = torch.rand(1, 4, 3, 7, 9)
    reference = outputs(model, lq)
    Acceleration(channels_last=True).apply(model)
    assert model.head.conv_hr.weight.is_contiguous(memory_format=torch.channels_last)
    for mine, theirs in zip(outputs(model, lq), reference, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_bf16_autocast_stays_close_to_float32(name: str) -> None:
    """bfloat16 keeps 8 bits of mantissa: outputs in [0, 1] within a few hundredths."""
    model = build_trained(name)
    lq = torch.rand(1, 4, 3, 7, 9)
    with torch.no_grad():
        reference = model(lq)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(lq)
    assert mixed.float().sub(reference).abs().max() < 0.05


def test_inference_group_and_cudnn_benchmark_leave_the_output_unchanged() -> None:
    model = build_trained("basicvsr_tiny")
    lq = torch.rand(1, 5, 3, 6, 6)
    with torch.no_grad():
        reference = model(lq)
        benchmark = torch.backends.cudnn.benchmark
        try:
            Acceleration(cudnn_benchmark=True, inference_group=3).apply(model)
            assert model.inference_group == 3 and torch.backends.cudnn.benchmark
            torch.testing.assert_close(model(lq), reference, rtol=1e-6, atol=1e-6)
        finally:
            torch.backends.cudnn.benchmark = benchmark


def test_inference_group_must_be_positive() -> None:
    with pytest.raises(ValueError, match="inference_group"):
        Acceleration(inference_group=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["basicvsr_tiny", "edvr_tiny"])
def test_compiled_units_give_the_same_output(name: str) -> None:
    """Compiles on the CPU (inductor's C++ backend): slow, hence marked so."""
    model = build_trained(name)
    lq = torch.rand(1, 3, 3, 8, 8)
    with torch.no_grad():
        reference = model(lq)
    state_keys = list(model.state_dict())
    Acceleration(compile=True).apply(model)
    assert list(model.state_dict()) == state_keys  # checkpoints keep their keys
    assert any(isinstance(m, COMPILED_UNITS) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(lq), reference, rtol=1e-5, atol=1e-5)
