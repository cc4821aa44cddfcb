"""Where a no-fusion model's error inside the sound source comes from.

For each test clip of a synthetic set, the clip is rendered again with its sounding object in
every class, and once without any class detail (each grating its fundamental alone, no
lattice: what every class shares). Inside the sounding object (split into the *core*, where
the texture has full contrast, and the *rim*: the fade and the edge), it prints the RMS Y
error (grey levels) of

- the model's output vs the HR frames,
- the model's output vs the render without class detail: small when the model draws what
  the LR frames show (the grating's fundamental) but none of the class's detail (the
  harmonics, or with ``class_detail="lattice"`` the lattice),
- the per-pixel mean over the classes the LR frames leave open vs the HR frames: the error
  left by the best audio-free guess of the detail, i.e. what knowing the class could remove
  at most. The classes left open are the source's family where ``family_cue="hue"`` shows
  it, else all.

Usage::

    python experiments/av_ablation/diagnostics/harmonic_error.py CKPT [--data data/synth_av]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from avvsr.checkpoint import load_lit_module
from avvsr.data import synthetic
from avvsr.data.degradations import degrade
from avvsr.data.io import read_frames
from avvsr.metrics import to_metric_space


def luma(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """BT.601 Y, as the study's metrics compute it, of uint8 ``(T, H, W, 3)`` frames or of
    ``(T, 3, H, W)`` RGB in [0, 1] -> float64 ``(T, H, W)`` in grey levels."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames).permute(0, 3, 1, 2) / 255.0
    return to_metric_space(frames, test_y_channel=True)[:, 0].numpy()


class SquaredErrors:
    """Sums of squared errors and pixel counts per named region."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}

    def add(self, name: str, difference: np.ndarray, region: np.ndarray) -> None:
        total = self.sums.setdefault(name, [0.0, 0])
        total[0] += float((difference[region] ** 2).sum())
        total[1] += int(region.sum())

    def print(self) -> None:
        for name, (squared, count) in self.sums.items():
            print(f"{name:40s} RMS {np.sqrt(squared / count):6.2f}  ({count} px)")


def without_class_detail(spec: synthetic.ClipSpec) -> np.ndarray:
    """Y render ``(T, H, W)`` of ``spec`` with every grating its fundamental and no lattice."""
    plain = dataclasses.replace(spec.config, class_detail="lattice", lattice_amplitude=0.0)
    return luma(synthetic.render_frames(dataclasses.replace(spec, config=plain))[0])


def classes_left_open(config: synthetic.SynthConfig, class_name: str) -> list[str]:
    """The classes an LR frame cannot tell ``class_name`` from: its family where the family
    shows (``family_cue="hue"``), else every class."""
    if config.family_cue == "hue":
        return config.families[config.family_of(class_name)]
    return config.classes


def renders_by_class(spec: synthetic.ClipSpec, sounding_id: int) -> tuple[dict, np.ndarray]:
    """Y renders ``{class: (T, H, W)}`` with the sounding object in each class; label maps."""
    renders = {}
    for name in spec.config.classes:
        objects = tuple(
            dataclasses.replace(o, class_name=name) if o.id == sounding_id else o
            for o in spec.objects
        )
        frames, labels = synthetic.render_frames(dataclasses.replace(spec, objects=objects))
        renders[name] = luma(frames)
    return renders, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="an avvsr-train checkpoint without fusion")
    parser.add_argument("--data", type=Path, default=Path("data/synth_av"))
    parser.add_argument("--clips", type=int, default=8, help="test clips to use")
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = load_lit_module(args.checkpoint).net.eval()
    if net.uses_audio:
        raise SystemExit(f"{args.checkpoint}: this diagnostic takes a model without fusion")
    manifest = synthetic.load_manifest(args.data)
    config = synthetic.SynthConfig(**manifest.params)
    errors = SquaredErrors()
    for index, clip in enumerate(manifest.splits["test"][: args.clips]):
        spec = synthetic.sample_clip(config, "test", index)
        sounding = next(o for o in spec.objects if o.sounding)
        renders, labels = renders_by_class(spec, sounding.id)
        hr = read_frames(args.data / clip.video)
        lq = degrade(torch.from_numpy(hr).permute(0, 3, 1, 2).float() / 255, net.scale, "BI")
        with torch.no_grad():
            sr = net(lq.clamp(0, 1)[None]).sr[0]
        output = luma(sr)
        truth = luma(hr)
        open_classes = classes_left_open(config, sounding.class_name)
        class_mean = np.mean([renders[name] for name in open_classes], axis=0)
        plain = without_class_detail(spec)
        rows, cols = np.mgrid[0 : config.height, 0 : config.width] + 0.5
        centres = sounding.centres_xy_px(config.frame_times_s())
        distance = np.hypot(cols - centres[:, 0, None, None], rows - centres[:, 1, None, None])
        inside = labels == sounding.id
        core = distance < sounding.radius_px - config.texture_fade_px - 1
        for region_name, region in (("core", core), ("rim", inside & ~core)):
            errors.add(f"{region_name}: model vs HR", output - truth, region)
            errors.add(f"{region_name}: model vs no class detail", output - plain, region)
            errors.add(f"{region_name}: class mean vs HR", class_mean - truth, region)
    errors.print()


if __name__ == "__main__":
    main()
