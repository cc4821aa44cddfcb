"""Video metrics against an independent float64 numpy implementation of the formulas.

The references below are written from the definitions (BasicSR's protocol), not from
``avvsr.metrics``: numpy, explicit loops over clips and frames, a 2-D 11x11 window applied by
sliding windows (the module uses separable torch convolutions).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from avvsr.metrics import (
    MaskAgreement,
    RegionPSNR,
    SourceDistractorAUC,
    VideoPSNR,
    VideoSSIM,
)


# ---------------------------------------------------------------- numpy references (float64)
def np_metric_space(frame: np.ndarray, crop: int, y_channel: bool, quantize: bool) -> np.ndarray:
    """One RGB frame (3, H, W) in [0, 1] -> (C, H', W') in [0, 255]."""
    image = np.clip(frame.astype(np.float64), 0, 1) * 255.0
    if quantize:
        image = np.round(image)
    if y_channel:
        rgb01 = image.transpose(1, 2, 0) / 255.0
        image = (rgb01 @ np.array([65.481, 128.553, 24.966]) + 16.0)[None]
    if crop:
        image = image[:, crop:-crop, crop:-crop]
    return image


def np_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))


def np_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over channels of the mean SSIM map, 11x11 Gaussian (sigma 1.5), valid region."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(x: np.ndarray) -> np.ndarray:
        return np.einsum("ijkl,kl->ij", sliding_window_view(x, (11, 11)), kernel)

    values = []
    for x, y in zip(a, b, strict=True):
        mx, my = filt(x), filt(y)
        sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
        ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
        values.append(ssim_map.mean())
    return float(np.mean(values))


def np_video_score(batches, score, **space) -> float:
    """Mean over clips of the mean over frames of ``score``; ``batches``: (preds, target) pairs."""
    clip_scores = []
    for preds, target in batches:
        for clip_preds, clip_target in zip(preds.numpy(), target.numpy(), strict=True):
            frame_scores = [
                score(np_metric_space(p, **space), np_metric_space(t, **space))
                for p, t in zip(clip_preds, clip_target, strict=True)
            ]
            clip_scores.append(np.mean(frame_scores))
    return float(np.mean(clip_scores))


def np_region_psnr(preds, target, mask, region: str, **space) -> tuple[list[float], int]:
    """Per-clip PSNR over the region's pixels of all frames and channels; skipped count."""
    scores, skipped = [], 0
    crop = space["crop"]
    for clip_preds, clip_target, clip_mask in zip(preds.numpy(), target.numpy(), mask.numpy(),
                                                  strict=True):
        errors = []
        for p, t, m in zip(clip_preds, clip_target, clip_mask, strict=True):
            diff = np_metric_space(p, **space) - np_metric_space(t, **space)
            source = m[0, crop : m.shape[1] - crop, crop : m.shape[2] - crop] == 1
            selected = source if region == "inside" else ~source
            errors.append(diff[:, selected].ravel() ** 2)
        errors = np.concatenate(errors)
        if errors.size == 0:
            skipped += 1
        else:
            scores.append(10 * np.log10(255.0**2 / errors.mean()))
    return scores, skipped


def np_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a positive pixel outscores a negative one, ties counting half."""
    positives, negatives = scores[labels], scores[~labels]
    wins = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return (wins + 0.5 * ties) / (positives.size * negatives.size)


# ------------------------------------------------------------------------------- test data
def noisy_clips(batch: int, frames: int, height: int = 24, width: int = 20, seed: int = 0):
    """Target clips and predictions with a noise level that differs per clip and per frame
    (so per-frame and pooled averages differ), some values outside [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, frames, 3, height, width, generator=generator)
    level = torch.rand(batch, frames, 1, 1, 1, generator=generator) * 0.2 + 0.01
    noise = torch.randn(target.shape, generator=generator) * level
    return (target + noise).float(), target


SPACES = [
    {"crop": crop, "y_channel": y, "quantize": q}
    for crop, y, q in itertools.product([0, 3], [False, True], [False, True])
]


def build(metric_class, space: dict, **options):
    return metric_class(crop_border=space["crop"], test_y_channel=space["y_channel"],
                        quantize=space["quantize"], **options)


# ---------------------------------------------------------------------------- PSNR / SSIM
@pytest.mark.parametrize("space", SPACES, ids=str)
@pytest.mark.parametrize("metric_class, score, tolerance",
                         [(VideoPSNR, np_psnr, 1e-6), (VideoSSIM, np_ssim, 1e-6)],
                         ids=["psnr", "ssim"])
def test_video_metric_matches_numpy_with_frame_then_clip_averaging(
    metric_class, score, tolerance: float, space: dict
) -> None:
    # Two updates with different clip lengths: the mean over clips of per-clip frame means
    # differs from the mean over all frames, so the averaging order is checked too.
    batches = [noisy_clips(2, 2, seed=1), noisy_clips(1, 5, seed=2)]
    metric = build(metric_class, space)
    for preds, target in batches:
        metric.update(preds, target)
    expected = np_video_score(batches, score, **space)
    assert abs(metric.compute().item() - expected) < tolerance
    all_frames = [score(np_metric_space(p, **space), np_metric_space(t, **space))
                  for preds, target in batches
                  for p, t in zip(preds.flatten(0, 1).numpy(), target.flatten(0, 1).numpy(),
                                  strict=True)]
    assert abs(np.mean(all_frames) - expected) > tolerance


def test_luma_of_white_and_black_is_the_bt601_studio_range() -> None:
    """Y = 235 for white and 16 for black: PSNR of black vs white is 10 log10(255^2/219^2)."""
    black, white = torch.zeros(1, 1, 3, 4, 4), torch.ones(1, 1, 3, 4, 4)
    metric = VideoPSNR(test_y_channel=True)
    metric.update(black, white)
    assert abs(metric.compute().item() - 10 * np.log10(255.0**2 / 219.0**2)) < 1e-9


def test_identical_frames_give_the_capped_psnr_and_ssim_one() -> None:
    _, target = noisy_clips(2, 3)
    psnr, ssim = VideoPSNR(), VideoSSIM()
    psnr.update(target, target)
    ssim.update(target, target)
    assert psnr.compute().item() == 100.0
    assert abs(ssim.compute().item() - 1.0) < 1e-12


def test_predictions_are_clamped_to_the_unit_range() -> None:
    preds, target = noisy_clips(2, 2)
    assert (preds < 0).any() and (preds > 1).any()
    raw, clamped = VideoPSNR(), VideoPSNR()
    raw.update(preds, target)
    clamped.update(preds.clamp(0, 1), target)
    assert raw.compute().item() == clamped.compute().item()


def split_updates(metric_factory, batches, update_args=lambda batch: batch):
    """One metric updated on all batches vs. two updated on halves and merged (DDP's sum)."""
    whole, first, second = metric_factory(), metric_factory(), metric_factory()
    for index, batch in enumerate(batches):
        whole.update(*update_args(batch))
        (first if index == 0 else second).update(*update_args(batch))
    first.merge_state(second)
    return whole.compute(), first.compute()


@pytest.mark.parametrize("metric_class", [VideoPSNR, VideoSSIM])
def test_merged_halves_equal_one_metric_on_all(metric_class) -> None:
    batches = [noisy_clips(1, 3, seed=3), noisy_clips(2, 4, seed=4), noisy_clips(1, 2, seed=5)]
    whole, merged = split_updates(lambda: metric_class(crop_border=2), batches)
    torch.testing.assert_close(merged, whole, rtol=0, atol=1e-12)


def test_bad_shapes_and_sizes_are_rejected() -> None:
    preds, target = noisy_clips(1, 2, height=12, width=12)
    with pytest.raises(ValueError, match="one shape"):
        VideoPSNR().update(preds, target[..., :-1])
    with pytest.raises(ValueError, match="crop"):
        VideoPSNR(crop_border=6).update(preds, target)
    with pytest.raises(ValueError, match="11x11"):
        VideoSSIM(crop_border=1).update(preds, target)


# ------------------------------------------------------------------------------ region PSNR
def region_batch(seed: int):
    """Three clips: a random mask, an all-zero mask, an all-one mask."""
    preds, target = noisy_clips(3, 2, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.rand(3, 2, 1, 24, 20, generator=generator) > 0.6).float()
    mask[1], mask[2] = 0.0, 1.0
    return preds, target, mask


@pytest.mark.parametrize("region", ["inside", "outside"])
@pytest.mark.parametrize("space", SPACES[::3], ids=str)
def test_region_psnr_matches_numpy_and_counts_empty_regions(region: str, space: dict) -> None:
    preds, target, mask = region_batch(seed=6)
    metric = build(RegionPSNR, space, region=region)
    metric.update(preds, target, mask)
    scores, skipped = np_region_psnr(preds, target, mask, region, **space)
    assert abs(metric.compute().item() - np.mean(scores)) < 1e-6
    assert metric.skipped.item() == skipped == 1


def test_region_psnr_merged_halves_equal_one_metric_on_all() -> None:
    batches = [region_batch(seed=7), region_batch(seed=8)]
    whole, merged = split_updates(lambda: RegionPSNR(region="inside"), batches)
    torch.testing.assert_close(merged, whole, rtol=0, atol=1e-12)


def test_region_must_be_inside_or_outside_and_mask_must_match() -> None:
    with pytest.raises(ValueError, match="region"):
        RegionPSNR(region="around")
    preds, target, mask = region_batch(seed=9)
    with pytest.raises(ValueError, match="mask"):
        RegionPSNR().update(preds, target, mask[..., :-1])


# --------------------------------------------------------------------------- mask agreement
def half_mask(frames: int = 2, size: int = 16) -> torch.Tensor:
    """(1, T, 1, size, size) target: the top half is the sound source."""
    mask = torch.zeros(1, frames, 1, size, size)
    mask[..., : size // 2, :] = 1.0
    return mask


def agreement(attention: torch.Tensor, target: torch.Tensor) -> dict:
    metric = MaskAgreement()
    metric.update(attention, target)
    return {name: value.item() for name, value in metric.compute().items()}


def test_perfect_mask_scores_one_and_inverted_mask_zero() -> None:
    target = half_mask()
    assert agreement(target, target) == {"iou": 1.0, "auc": 1.0}
    assert agreement(1 - target, target) == {"iou": 0.0, "auc": 0.0}


def test_low_resolution_attention_is_upsampled_to_the_target() -> None:
    """A 4x4 attention whose top two rows are 1 is, upsampled x4, the 16x16 half mask."""
    target = half_mask(size=16)
    attention = half_mask(size=4)
    assert agreement(attention, target) == {"iou": 1.0, "auc": 1.0}


def test_constant_attention_has_auc_one_half_and_iou_of_all_or_nothing() -> None:
    target = half_mask()
    source_fraction = target.mean().item()
    assert agreement(torch.full_like(target, 0.7), target) == {"iou": source_fraction, "auc": 0.5}
    assert agreement(torch.full_like(target, 0.3), target) == {"iou": 0.0, "auc": 0.5}


def test_per_clip_mean_skips_clips_without_both_classes() -> None:
    target = torch.cat([half_mask(), half_mask(), torch.zeros_like(half_mask())])
    attention = torch.cat([target[:1], 1 - target[1:2], torch.rand_like(target[:1])])
    metric = MaskAgreement()
    metric.update(attention, target)
    result = metric.compute()
    assert (result["iou"].item(), result["auc"].item(), metric.skipped.item()) == (0.5, 0.5, 1)


def test_mask_agreement_matches_numpy_on_random_tied_scores() -> None:
    generator = torch.Generator().manual_seed(10)
    target = (torch.rand(2, 3, 1, 6, 6, generator=generator) > 0.5).float()
    attention = torch.randint(0, 5, (2, 3, 1, 6, 6), generator=generator) / 4  # many ties
    ious, aucs = [], []
    for clip_attention, clip_target in zip(attention.numpy(), target.numpy(), strict=True):
        scores, labels = clip_attention.ravel(), clip_target.ravel() >= 0.5
        predicted = scores > 0.5
        ious.append((predicted & labels).sum() / (predicted | labels).sum())
        aucs.append(np_auc(scores, labels))
    metric = MaskAgreement()
    metric.update(attention, target)
    result = metric.compute()
    assert abs(result["iou"].item() - np.mean(ious)) < 1e-6
    assert abs(result["auc"].item() - np.mean(aucs)) < 1e-6


def test_mask_agreement_merged_halves_equal_one_metric_on_all() -> None:
    generator = torch.Generator().manual_seed(11)
    batches = [
        (torch.rand(batch, 2, 1, 4, 4, generator=generator),
         (torch.rand(batch, 2, 1, 8, 8, generator=generator) > 0.5).float())
        for batch in (1, 3)
    ]
    whole, merged = split_updates(MaskAgreement, batches)
    for name in ("iou", "auc"):
        torch.testing.assert_close(merged[name], whole[name], rtol=0, atol=1e-12)


# ------------------------------------------------------------- source-vs-distractor AUC
def two_objects(frames: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, T, 1, size, size) source (top-left quarter) and distractor (bottom-right quarter)
    masks; the other half of the frame is background."""
    source, distractor = torch.zeros(2, 1, frames, 1, size, size)
    half = size // 2
    source[..., :half, :half] = 1.0
    distractor[..., half:, half:] = 1.0
    return source, distractor


def source_auc(attention, source, distractor) -> float:
    metric = SourceDistractorAUC()
    metric.update(attention, source, distractor)
    return metric.compute()["auc"].item()


def test_source_auc_of_masks_with_known_preference() -> None:
    source, distractor = two_objects()
    background = 1 - source - distractor
    assert source_auc(source, source, distractor) == 1.0
    assert source_auc(distractor, source, distractor) == 0.0
    assert source_auc(torch.full_like(source, 0.3), source, distractor) == 0.5
    # Attention on objects alike, whatever it does on the background: no preference.
    assert source_auc(source + distractor, source, distractor) == 0.5
    assert source_auc(background, source, distractor) == 0.5
    # Half the source above everything else, the other half tied with the distractor:
    # P(source > distractor) + P(tie) / 2 = 1/2 + 1/4.
    half_source = source.clone()
    half_source[..., : source.shape[-1] // 4, :] = 0.0
    assert source_auc(half_source, source, distractor) == 0.75


def test_source_auc_differs_from_whole_frame_auc_where_the_mask_finds_objects() -> None:
    """A mask that finds both objects scores well over the whole frame but 0.5 here."""
    source, distractor = two_objects()
    objects = source + distractor
    assert agreement(objects, source)["auc"] > 0.8
    assert source_auc(objects, source, distractor) == 0.5


def test_source_auc_upsamples_attention_and_skips_clips_without_both_objects() -> None:
    source, distractor = two_objects(size=16)
    low_source, _ = two_objects(size=4)
    no_distractor = torch.zeros_like(distractor)
    metric = SourceDistractorAUC()
    metric.update(torch.cat([low_source, 1 - low_source, low_source]),
                  torch.cat([source, source, source]),
                  torch.cat([distractor, distractor, no_distractor]))
    assert (metric.compute()["auc"].item(), metric.skipped.item()) == (0.5, 1)
    assert source_auc(low_source, source, distractor) == 1.0


def test_source_auc_matches_numpy_on_random_masks_and_merges_exactly() -> None:
    generator = torch.Generator().manual_seed(12)
    labels = torch.randint(0, 3, (3, 2, 1, 6, 6), generator=generator)  # 0 bg, 1 src, 2 distr
    source, distractor = (labels == 1).float(), (labels == 2).float()
    attention = torch.randint(0, 5, (3, 2, 1, 6, 6), generator=generator) / 4  # many ties
    expected = [
        np_auc(scores.ravel()[clip.ravel() > 0], clip.ravel()[clip.ravel() > 0] == 1)
        for scores, clip in zip(attention.numpy(), labels.numpy(), strict=True)
    ]
    assert abs(source_auc(attention, source, distractor) - np.mean(expected)) < 1e-6
    batches = [(attention[:1], source[:1], distractor[:1]),
               (attention[1:], source[1:], distractor[1:])]
    whole, merged = split_updates(SourceDistractorAUC, batches)
    torch.testing.assert_close(merged["auc"], whole["auc"], rtol=0, atol=1e-12)


def test_source_auc_rejects_masks_of_different_shapes() -> None:
    source, distractor = two_objects()
    with pytest.raises(ValueError, match="differ in shape"):
        SourceDistractorAUC().update(source, source, distractor[..., :8])
