"""BI and BD degradations against independent numpy references (MATLAB imresize, DUF blur)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avvsr.data.degradations import (
    _mirror_pad,
    bicubic_downsample,
    blur_downsample,
    crop_to_scale,
    degrade,
)

# ------------------------------------------------------------------------------------------
# Independent references, written from the algorithms' definitions.


def matlab_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB's imresize defines it."""
    ax = np.abs(x)
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def matlab_resize_axis(image: np.ndarray, axis: int, out_length: int) -> np.ndarray:
    """Resize one axis as MATLAB imresize (bicubic, antialiasing on) does: the kernel is widened
    by 1/scale when shrinking, each output is a normalised weighted sum, and indices outside the
    image are mirrored with the edge sample repeated."""
    in_length = image.shape[axis]
    scale = out_length / in_length
    kernel_scale = min(scale, 1.0)
    width = 4.0 / kernel_scale
    moved = np.moveaxis(image, axis, 0)
    result = np.empty((out_length, *moved.shape[1:]), dtype=np.float64)
    for out_index in range(out_length):
        # Output pixel centre in 1-based input coordinates (MATLAB's convention).
        centre = (out_index + 1) / scale + 0.5 * (1 - 1 / scale)
        first = math.floor(centre - width / 2)
        taps = np.arange(first, first + math.ceil(width) + 2)
        weights = kernel_scale * matlab_cubic(kernel_scale * (centre - taps))
        weights /= weights.sum()
        zero_based = taps - 1
        mirrored = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
        sources = mirrored[np.mod(zero_based, 2 * in_length)]
        result[out_index] = np.tensordot(weights, moved[sources], axes=(0, 0))
    return np.moveaxis(result, 0, axis)


def matlab_imresize_down(image: np.ndarray, scale: int) -> np.ndarray:
    """``imresize(image, 1/scale, 'bicubic')`` of a (C, H, W) float array (rows, then columns)."""
    height, width = image.shape[-2:]
    rows = matlab_resize_axis(image.astype(np.float64), -2, height // scale)
    return matlab_resize_axis(rows, -1, width // scale)


def numpy_blur_subsample(image: np.ndarray, scale: int, sigma: float, size: int) -> np.ndarray:
    """2-D Gaussian (``size`` x ``size``, normalised) with numpy reflect padding, then keep
    rows/columns 0, scale, 2*scale, ... of a (C, H, W) array."""
    radius = size // 2
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    margins = ((0, 0), (radius, radius), (radius, radius))
    padded = np.pad(image.astype(np.float64), margins, mode="reflect")
    height, width = image.shape[-2:]
    blurred = np.zeros(image.shape, dtype=np.float64)
    for dy in range(size):
        for dx in range(size):
            blurred += kernel[dy, dx] * padded[:, dy : dy + height, dx : dx + width]
    return blurred[:, ::scale, ::scale]


def random_image(*shape: int, seed: int = 0) -> torch.Tensor:
    """Float32 noise in [0, 1] (the hardest content for a resize: energy at every frequency)."""
    return torch.from_numpy(np.random.default_rng(seed).random(shape).astype(np.float32))


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_matches_matlab_imresize_everywhere(scale: int) -> None:
    hr = random_image(3, 12 * scale + scale - 1, 10 * scale + 1)  # not multiples of the scale
    ours = bicubic_downsample(hr, scale).double().numpy()
    reference = matlab_imresize_down(crop_to_scale(hr, scale).numpy(), scale)
    assert ours.shape == reference.shape == (3, 12, 10)
    assert np.abs(ours - reference).max() * 255 < 1e-3  # whole frame, borders included


def test_blur_downsample_matches_numpy_reference() -> None:
    hr = random_image(2, 3, 40, 36)
    ours = blur_downsample(hr, 4).double().numpy()
    reference = np.stack([numpy_blur_subsample(image, 4, 1.6, 13) for image in hr.numpy()])
    assert ours.shape == (2, 3, 10, 9)
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_blur_downsample_on_images_smaller_than_the_kernel() -> None:
    hr = random_image(1, 6, 8)  # reflect padding by 6 px needs the mirror to repeat
    reference = numpy_blur_subsample(hr.numpy(), 2, 1.6, 13)
    np.testing.assert_allclose(blur_downsample(hr, 2).double().numpy(), reference, atol=1e-6)


@pytest.mark.parametrize("kind", ["BI", "BD"])
def test_constant_image_stays_constant(kind: str) -> None:
    hr = torch.full((2, 3, 3, 35, 42), 0.37)
    lr = degrade(hr, 4, kind)
    assert lr.shape == (2, 3, 3, 8, 10)
    torch.testing.assert_close(lr, torch.full_like(lr, 0.37), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["BI", "BD"])
def test_shifting_hr_by_the_scale_shifts_lr_by_one_pixel(kind: str) -> None:
    scale = 4
    scene = random_image(3, 48, 64 + scale)
    lr = degrade(scene[..., :64], scale, kind)
    lr_shifted = degrade(scene[..., scale:], scale, kind)
    interior = slice(3, -3)  # away from the borders, which see different padding
    torch.testing.assert_close(
        lr_shifted[..., interior, 3:-4], lr[..., interior, 4:-3], atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("kind", ["BI", "BD"])
def test_batched_equals_frame_by_frame(kind: str) -> None:
    video = random_image(2, 3, 3, 24, 32)  # (B, T, C, H, W)
    batched = degrade(video, 4, kind)
    assert batched.shape == (2, 3, 3, 6, 8)
    for b in range(2):
        for t in range(3):
            torch.testing.assert_close(batched[b, t], degrade(video[b, t], 4, kind))


@pytest.mark.parametrize("kind", ["BI", "BD"])
def test_odd_sizes_are_cropped_to_the_scale_first(kind: str) -> None:
    hr = random_image(3, 27, 33)
    assert crop_to_scale(hr, 4).shape == (3, 24, 32)
    torch.testing.assert_close(degrade(hr, 4, kind), degrade(hr[:, :24, :32], 4, kind))


def test_bicubic_output_is_not_clamped() -> None:
    step = torch.zeros(1, 32, 32)
    step[..., 16:] = 1.0
    lr = bicubic_downsample(step, 2)
    assert lr.dtype == torch.float32
    assert lr.min() < 0 and lr.max() > 1  # the cubic kernel's lobes overshoot a hard edge


def test_float64_stays_float64() -> None:
    hr = random_image(3, 16, 16).double()
    assert degrade(hr, 4, "BI").dtype == degrade(hr, 4, "BD").dtype == torch.float64


@pytest.mark.parametrize("edge_repeated, numpy_mode", [(True, "symmetric"), (False, "reflect")])
@pytest.mark.parametrize("size, pad", [(7, 3), (5, 8), (2, 5)])
def test_mirror_padding_matches_numpy(edge_repeated, numpy_mode, size, pad) -> None:
    image = torch.arange(size * (size + 1), dtype=torch.float32).reshape(size, size + 1)
    expected = np.pad(image.numpy(), pad, mode=numpy_mode)
    np.testing.assert_array_equal(_mirror_pad(image, pad, edge_repeated).numpy(), expected)


def test_bad_arguments_are_refused_clearly() -> None:
    hr = random_image(3, 16, 16)
    with pytest.raises(ValueError, match="unknown degradation 'XY'.*BI.*BD"):
        degrade(hr, 4, "XY")
    with pytest.raises(ValueError, match="floating-point"):
        degrade((hr * 255).to(torch.uint8), 4)
    with pytest.raises(ValueError, match="scale"):
        degrade(hr, 0)
    with pytest.raises(ValueError, match="smaller than the scale"):
        degrade(random_image(3, 3, 16), 4)
