"""How fast does a small SR net learn class-dependent harmonics, and what slows it down?

Diagnostic for the study. Patches are drawn afresh every step (single frames, no video), x4
bicubic LR, and the film prototype (``film_prototype.FiLMPrototype``) learns with the class code
(``--film``) or without. Layouts:

- ``full``: a grating of the benchmark's period and amplitude whose profile is a random class's
  (``avvsr.data.synthetic.harmonic_series``) covers the whole patch (the easiest case);
- ``disc``: the benchmark's own object and background (``avvsr.data.synthetic.render_frames`` of
  a one-frame, one-object clip) with the object's radius fixed to ``--radius`` px;
  ``--background-contrast 0`` makes the background flat, ``--background-period-min-px`` keeps
  only its longer waves;
- ``distractor``: as ``full``, but the right half of every patch carries a grating of another,
  unknown class (a silent distractor that a global code cannot single out).

``--pool N`` draws N patches once and trains on them again and again, as a data set of N
objects does. It prints the Y-PSNR over the coded grating (``avvsr.metrics.RegionPSNR``;
``full``: the patch without an 8 px border, ``disc``: the object, ``distractor``: the left half
without 8 px at the border and the seam) on 256 held-out patches, with the true and a shuffled
code. Usage::

    python experiments/av_ablation/diagnostics/learnability_probe.py --film --steps 400 \
        --layout disc --radius 16 --background-contrast 0
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from study_tools import FiLMPrototype, one_cycle_adam
from torch import Tensor

from avvsr.data.degradations import bicubic_downsample
from avvsr.data.synthetic import (
    SynthConfig,
    harmonic_coefficients,
    harmonic_series,
    render_frames,
    sample_clip,
)
from avvsr.lit_module import charbonnier_loss
from avvsr.metrics import RegionPSNR

SCALE = 4
BORDER_PX = 8  # left out of the score: the net sees no context beyond the patch
BENCHMARK = SynthConfig()  # the grating period, amplitude, classes and harmonics
CLASS_COEFFICIENTS = [harmonic_coefficients(name, BENCHMARK.num_harmonics)
                      for name in BENCHMARK.classes]
Patches = tuple[Tensor, Tensor, Tensor, Tensor]


def _grating_patch(
    rng: np.random.Generator, label: int, size: int, distractor: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A whole-patch grating of class ``label`` -> (RGB (3, size, size) 0..255, scored region)."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    angle, phase = rng.uniform(0, math.pi), rng.uniform(0, 1)
    period = rng.uniform(BENCHMARK.grating_period_min_px, BENCHMARK.grating_period_max_px)
    u = (x * math.cos(angle) + y * math.sin(angle)) / period + phase
    profile = harmonic_series(CLASS_COEFFICIENTS[label], u)
    region = np.zeros((size, size), dtype=bool)
    region[BORDER_PX:-BORDER_PX, BORDER_PX:-BORDER_PX] = True
    if distractor:
        other = harmonic_series(CLASS_COEFFICIENTS[rng.integers(BENCHMARK.num_classes)], u)
        right = 1 / (1 + np.exp(-(x - size / 2) / 2))
        profile = profile * (1 - right) + other * right
        region[:, size // 2 - 6 :] = False
    level = BENCHMARK.object_level + rng.uniform(-20, 20)
    tint = rng.uniform(0.6, 1.0, (3, 1, 1))
    return tint * (level + BENCHMARK.grating_amplitude * profile), region


def render_patches(
    rng: np.random.Generator, count: int, layout: str, size: int = 64, radius: float = 16.0,
    scene: dict[str, Any] | None = None,
) -> Patches:
    """``count`` patches -> (lq (N, 3, size/4, size/4), hr (N, 3, size, size) in [0, 1],
    class labels (N,), scored region (N, size, size) bool).

    ``scene``: :class:`SynthConfig` fields that change the ``disc`` layout's clip (background).
    """
    if layout not in ("full", "disc", "distractor"):
        raise ValueError(f"unknown layout {layout!r}")
    if scene and layout != "disc":
        raise ValueError("scene changes apply to the benchmark's clips only (layout='disc')")
    clip_config = SynthConfig(height=size, width=size, num_frames=1, num_objects=1,
                              object_radius_min_px=radius, object_radius_max_px=radius,
                              **(scene or {}))
    grating_labels = None if layout == "disc" else rng.integers(BENCHMARK.num_classes, size=count)
    images, labels, regions = [], [], []
    for index in range(count):
        if grating_labels is None:
            spec = sample_clip(clip_config, "train", int(rng.integers(2**31)))
            frames, label_map = render_frames(spec)
            image, region = frames[0].transpose(2, 0, 1), label_map[0] == spec.objects[0].id
            label = BENCHMARK.classes.index(spec.objects[0].class_name)
        else:
            label = int(grating_labels[index])
            image, region = _grating_patch(rng, label, size, layout == "distractor")
        images.append(image / 255)
        labels.append(label)
        regions.append(region)
    hr = torch.from_numpy(np.stack(images)).float()
    return (bicubic_downsample(hr, SCALE), hr, torch.tensor(labels),
            torch.from_numpy(np.stack(regions)))


def pick(pool: Patches, rng: np.random.Generator, count: int) -> Patches:
    """``count`` patches drawn with replacement from ``pool`` (the same ones from each tensor)."""
    chosen = torch.from_numpy(rng.integers(len(pool[0]), size=count))
    return tuple(tensor[chosen] for tensor in pool)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--film", action="store_true", help="modulate by the class code")
    parser.add_argument("--film-blocks", type=int, default=None,
                        help="modulate only the last N of the 4 blocks (default: all)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16, help="patches per step")
    parser.add_argument("--layout", choices=["full", "disc", "distractor"], default="full")
    parser.add_argument("--radius", type=float, default=16.0, help="disc radius, HR px")
    parser.add_argument("--background-period-min-px", type=float, default=None,
                        help="shortest background wave period (default: the benchmark's)")
    parser.add_argument("--background-contrast", type=float, default=None,
                        help="sum of the background waves' amplitudes, grey levels "
                             "(default: the benchmark's)")
    parser.add_argument("--pool", type=int, default=0, help="train on this many patches (0: fresh)")
    parser.add_argument("--test-patches", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    changes = {"background_period_min_px": args.background_period_min_px,
               "background_contrast": args.background_contrast}
    scene = {name: value for name, value in changes.items() if value is not None}

    def draw(rng: np.random.Generator, count: int) -> Patches:
        return render_patches(rng, count, args.layout, radius=args.radius, scene=scene)

    net = FiLMPrototype(BENCHMARK.num_classes, args.film, film_blocks=args.film_blocks)
    optimizer, schedule = one_cycle_adam(net, args.steps)
    train_rng = np.random.default_rng(1)
    pool = draw(train_rng, args.pool) if args.pool else None
    for _ in range(args.steps):
        batch = pick(pool, train_rng, args.batch) if pool else draw(train_rng, args.batch)
        lq, hr, labels, _ = batch
        out = net(lq, F.one_hot(labels, BENCHMARK.num_classes).float())
        loss = charbonnier_loss(out, hr)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    lq, hr, labels, region = draw(np.random.default_rng(99), args.test_patches)
    for control, shift in (("true", 0), ("shuffled", 1)):
        psnr = RegionPSNR(region="inside", test_y_channel=True)
        with torch.no_grad():
            out = net(lq, F.one_hot(labels.roll(shift), BENCHMARK.num_classes).float())
        psnr.update(out[:, None], hr[:, None], region[:, None, None].float())
        print(f"layout={args.layout} radius={args.radius} scene={scene} pool={args.pool} "
              f"batch={args.batch} film={args.film} film_blocks={args.film_blocks} "
              f"steps={args.steps} "
              f"{control}: PSNR-Y on the coded grating {psnr.compute():.2f} dB")


if __name__ == "__main__":
    main()
