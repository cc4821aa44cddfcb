"""How much the LR frames tell the classes of a family apart, on written and decoded files.

For test clips of a synthetic set (its manifest's parameters, ``--class-detail`` optionally
replaced), the clip is written again with its sounding object in each class of the set (in
its family's colour when ``family_cue="hue"``), decoded, and degraded x4 (BI). It prints the
largest absolute difference (grey levels, any pixel, channel and frame) between two classes
of one family, at LR and at HR: what the audio has to tell and the LR frames must not.

Usage::

    python experiments/av_ablation/diagnostics/class_blindness.py data/synth_lattice
    python experiments/av_ablation/diagnostics/class_blindness.py data/synth_lattice \\
        --class-detail harmonics
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
from pathlib import Path

import torch

from avvsr.data import synthetic
from avvsr.data.degradations import degrade
from avvsr.data.io import read_frames


def class_differences(
    config: synthetic.SynthConfig, clips: int, folder: Path
) -> tuple[float, float]:
    """The largest (LR, HR) difference between two classes of a family over ``clips`` test
    clips of ``config``, written under ``folder`` and decoded."""
    lr_max = hr_max = 0.0
    for index in range(clips):
        spec = synthetic.sample_clip(config, "test", index)
        (sounding_id,) = [obj.id for obj in spec.objects if obj.sounding]
        decoded = {}
        for name in config.classes:
            hue = config.family_cue == "hue"
            colour = {"colour_rgb": config.family_colour(name)} if hue else {}
            objects = tuple(
                dataclasses.replace(obj, class_name=name, **colour) if obj.id == sounding_id
                else obj
                for obj in spec.objects
            )
            entry = synthetic.write_clip(
                dataclasses.replace(spec, objects=objects, key=f"{index}/{name}"), folder
            )
            hr = torch.from_numpy(read_frames(folder / entry.video)).double().permute(0, 3, 1, 2)
            decoded[name] = (degrade(hr, 4, "BI"), hr)
        for family in config.families:
            for first, second in itertools.combinations(family, 2):
                (lr_a, hr_a), (lr_b, hr_b) = decoded[first], decoded[second]
                lr_max = max(lr_max, (lr_a - lr_b).abs().max().item())
                hr_max = max(hr_max, (hr_a - hr_b).abs().max().item())
    return lr_max, hr_max


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="a synthetic set (its manifest.json)")
    parser.add_argument("--clips", type=int, default=6, help="test clips to render")
    parser.add_argument("--class-detail", choices=synthetic.CLASS_DETAILS, help="replace it")
    args = parser.parse_args()
    config = synthetic.SynthConfig(**synthetic.load_manifest(args.data).params)
    if args.class_detail:
        config = dataclasses.replace(config, class_detail=args.class_detail)
    with tempfile.TemporaryDirectory() as folder:
        lr, hr = class_differences(config, args.clips, Path(folder))
    print(f"class_detail={config.class_detail}, {args.clips} test clips: two classes of a family "
          f"differ by at most {lr:.2f} grey levels at LR (x4 BI of the decoded frames) and "
          f"{hr:.1f} at HR")


if __name__ == "__main__":
    main()
