"""How fast does a small SR net learn class-dependent harmonics, and what slows it down?

Diagnostic for the study. Grating patches are drawn afresh every step (no video, no motion, no
background): a grating of the benchmark's period and amplitude whose profile is a random class's
(``avvsr.data.synthetic.harmonic_coefficients``), random orientation, phase, brightness and tint,
x4 bicubic LR. The film prototype (``film_prototype.FiLMPrototype``) learns with the class code
(``--film``) or without. Layouts:

- ``full``: the whole patch carries the coded grating (the easiest case);
- ``disc``: the grating fills a disc of radius ``--radius`` px, faded over its outer 4 px, on a
  flat patch (the benchmark's objects, without their motion and background);
- ``distractor``: the right half of every patch carries a grating of another, unknown class
  (a silent distractor that a global code cannot single out).

``--background`` puts the disc on the benchmark's own background (``render_background``)
instead of a flat patch; ``--pool N`` draws N patches once and trains on them again and again,
as a data set of N objects does.

It prints the Y-PSNR over the coded grating (``avvsr.metrics.RegionPSNR``; ``full``: the patch
without an 8 px border, ``disc``: the disc, ``distractor``: the left half without 8 px at the
border and the seam) on 256 held-out patches, with the true and a shuffled code. Usage::

    python experiments/av_ablation/diagnostics/learnability_probe.py --film --steps 400 \
        --layout disc --radius 16
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avvsr.data.degradations import bicubic_downsample
from avvsr.data.synthetic import (
    SynthConfig,
    harmonic_coefficients,
    harmonic_series,
    render_background,
    sample_clip,
)
from avvsr.metrics import RegionPSNR

sys.path.insert(0, str(Path(__file__).parent))
from film_prototype import FiLMPrototype  # noqa: E402

SCALE = 4
FADE_PX = 4.0
BORDER_PX = 8  # left out of the score: the net sees no context beyond the patch


def render_patches(
    rng: np.random.Generator, count: int, layout: str, size: int = 64, radius: float = 16.0,
    background: dict[str, float] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``count`` patches -> (lq (N, 3, size/4, size/4), hr (N, 3, size, size) in [0, 1],
    class labels (N,), scored region (N, size, size) bool).

    ``background``: None for a flat patch around the disc, else the benchmark's background made
    with these :class:`SynthConfig` fields changed (``{}``: as the benchmark makes it).
    """
    config = SynthConfig()  # the benchmark's grating period, amplitude, classes, harmonics
    if background is not None and layout != "disc":
        raise ValueError("a background shows only around a disc (layout='disc')")
    scene = SynthConfig(height=size, width=size, num_frames=1, num_objects=0, num_sounding=0,
                        **(background or {}))
    coefficients = [harmonic_coefficients(name, config.num_harmonics) for name in config.classes]
    y, x = np.mgrid[0:size, 0:size] + 0.5
    labels = rng.integers(config.num_classes, size=count)
    images, regions = [], []
    for label in labels:
        angle, phase = rng.uniform(0, math.pi), rng.uniform(0, 1)
        period = rng.uniform(config.grating_period_min_px, config.grating_period_max_px)
        u = (x * math.cos(angle) + y * math.sin(angle)) / period + phase
        profile = harmonic_series(coefficients[label], u)
        region = np.zeros((size, size), dtype=bool)
        if layout == "full":
            region[BORDER_PX:-BORDER_PX, BORDER_PX:-BORDER_PX] = True
        elif layout == "disc":
            centre = rng.uniform(radius, size - radius, 2)
            distance = np.hypot(x - centre[0], y - centre[1])
            profile *= np.clip((radius - distance) / FADE_PX, 0, 1)
            region = distance <= radius
        elif layout == "distractor":
            other = harmonic_series(coefficients[rng.integers(config.num_classes)], u)
            right = 1 / (1 + np.exp(-(x - size / 2) / 2))
            profile = profile * (1 - right) + other * right
            region[BORDER_PX:-BORDER_PX, BORDER_PX : size // 2 - 6] = True
        else:
            raise ValueError(f"unknown layout {layout!r}")
        level = config.object_level + rng.uniform(-20, 20)
        tint = rng.uniform(0.6, 1.0, (3, 1, 1))
        image = tint * (level + config.grating_amplitude * profile)
        if background is not None:
            scenery = render_background(sample_clip(scene, "train", int(rng.integers(2**31))))
            image = np.where(region, image, scenery[0].transpose(2, 0, 1))
        images.append(image / 255)
        regions.append(region)
    hr = torch.from_numpy(np.stack(images)).float()
    return bicubic_downsample(hr, SCALE), hr, torch.from_numpy(labels), torch.from_numpy(
        np.stack(regions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--film", action="store_true", help="modulate by the class code")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16, help="patches per step")
    parser.add_argument("--layout", choices=["full", "disc", "distractor"], default="full")
    parser.add_argument("--radius", type=float, default=16.0, help="disc radius, HR px")
    parser.add_argument("--background", action="store_true", help="the benchmark's background")
    parser.add_argument("--background-period-min-px", type=float, default=None,
                        help="shortest background wave period (default: the benchmark's)")
    parser.add_argument("--background-contrast", type=float, default=None,
                        help="sum of the background waves' amplitudes, grey levels "
                             "(default: the benchmark's)")
    parser.add_argument("--pool", type=int, default=0, help="train on this many patches (0: fresh)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    num_classes = SynthConfig().num_classes
    net = FiLMPrototype(num_classes, args.film)
    optimizer = torch.optim.Adam(net.parameters(), 5e-4, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 5e-4, args.steps, pct_start=0.02)
    train_rng = np.random.default_rng(1)

    background = None
    if args.background:
        changes = {"background_period_min_px": args.background_period_min_px,
                   "background_contrast": args.background_contrast}
        background = {name: value for name, value in changes.items() if value is not None}

    def draw(rng: np.random.Generator, count: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return render_patches(rng, count, args.layout, radius=args.radius, background=background)

    pool = draw(train_rng, args.pool) if args.pool else None
    for _ in range(args.steps):
        if pool is None:
            lq, hr, labels, _ = draw(train_rng, args.batch)
        else:
            chosen = torch.from_numpy(train_rng.integers(args.pool, size=args.batch))
            lq, hr, labels, _ = (tensor[chosen] for tensor in pool)
        out = net(lq, F.one_hot(labels, num_classes).float())
        loss = torch.sqrt((out - hr) ** 2 + 1e-6).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    lq, hr, labels, region = draw(np.random.default_rng(99), 256)
    for control, shift in (("true", 0), ("shuffled", 1)):
        psnr = RegionPSNR(region="inside", test_y_channel=True)
        with torch.no_grad():
            out = net(lq, F.one_hot(labels.roll(shift), num_classes).float())
        psnr.update(out[:, None], hr[:, None], region[:, None, None].float())
        print(f"layout={args.layout} radius={args.radius} background={background} "
              f"pool={args.pool} batch={args.batch} film={args.film} steps={args.steps} "
              f"{control}: PSNR-Y on the coded grating {psnr.compute():.2f} dB")


if __name__ == "__main__":
    main()
