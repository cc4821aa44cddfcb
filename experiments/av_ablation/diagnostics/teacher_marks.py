"""What the synchrony teacher (``model/localisation=syncteach``) marks on the training crops:
of the sound source's, the distractors' and the background's LR pixels, the share it marks
sounding and the share it marks silent, and how the silent marks split between the three,
with its settings as configured and with every still pixel out of step a negative too
(``active_luma_grey=0``, its first version).

No model is trained. A pixel belongs to a region where its labels cover more than half of it.

Usage::

    python experiments/av_ablation/diagnostics/teacher_marks.py --data data/synth_lattice \
        [--batches 60] [overrides ...]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence

import hydra
import torch
import torch.nn.functional as F
from study_tools import Study

REGIONS = ("source", "distractors", "background")


def region_masks(batch: dict, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The batch's regions at the LR size ``size``: bool ``(B, T, 1, h, w)`` each."""

    def at_lr(labels: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(labels.float().flatten(0, 1), size).view(
            *labels.shape[:3], *size) > 0.5

    source, distractors = at_lr(batch["mask"]), at_lr(batch["distractor_mask"])
    return {"source": source, "distractors": distractors, "background": ~(source | distractors)}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a synthetic set (avvsr-synth)")
    parser.add_argument("--batches", type=int, default=60, help="training batches to read")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the study's config")
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    study = Study(args.data, ["model/localisation=syncteach", *args.overrides])
    teacher = hydra.utils.instantiate(study.config.model.localisation)
    settings = {"as configured": teacher.active_luma_grey, "still pixels too": 0.0}
    # Per setting: pixels per region, marked sounding, marked silent.
    counts = {name: torch.zeros(len(REGIONS), 3) for name in settings}
    for batch in itertools.islice(study.datamodule.train_dataloader(), args.batches):
        synchrony, luma_std = teacher.synchrony.statistics(batch["lq"], batch["audio"])
        regions = region_masks(batch, tuple(synchrony.shape[-2:]))
        sounding = synchrony >= teacher.positive_threshold
        for name, active in settings.items():
            silent = (synchrony <= teacher.negative_threshold) & (luma_std >= active)
            for row, region in enumerate(REGIONS):
                inside = regions[region]
                counts[name][row] += torch.tensor(
                    [inside.sum(), (inside & sounding).sum(), (inside & silent).sum()]).float()
    results = {}
    for name, table in counts.items():
        print(f"\n{name} (active_luma_grey={settings[name]:g}): region | share marked "
              "sounding | share marked silent | share of the silent marks")
        results[name] = {}
        for row, region in enumerate(REGIONS):
            pixels, marked_sounding, marked_silent = table[row].tolist()
            shares = [marked_sounding / pixels, marked_silent / pixels,
                      marked_silent / table[:, 2].sum().item()]
            results[name][region] = shares
            print(f"{region} | " + " | ".join(f"{share:.3f}" for share in shares))
    return results


if __name__ == "__main__":
    main()
