"""What MS-AVF's finest attention mask is at initialisation, per seed, over the source, the
distractors and the background of the first validation batch.

Each seed's model is built as ``avvsr-train`` builds it (the study's config, ``seed_everything``
first), without a training step. The mask is upsampled to the label maps' size as the mask
metrics do (``avvsr.metrics.upsample_attention``). Printed per seed: the mean mask over each
region and the share of the source's pixels where it is above 0.5.

Usage::

    python experiments/av_ablation/diagnostics/initial_masks.py data/synth_lattice --seeds 0 1 2
    python experiments/av_ablation/diagnostics/initial_masks.py data/synth_lattice \\
        model.fusion.initial_temperature=10
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import hydra
import lightning as L
import torch
from study_tools import Study
from torch import Tensor

from avvsr.config import build_lit_module
from avvsr.metrics import upsample_attention


def mask_by_region(mask: Tensor, batch: dict) -> dict[str, float]:
    """The mean of ``mask`` (B, T, 1, h, w) over the source, the distractors and the rest, and
    the share of the source's pixels where it is above 0.5, with the mask upsampled to the
    label maps' (B, T, 1, H, W) size as the mask metrics do (``upsample_attention``)."""
    scores = upsample_attention(mask, batch["mask"])
    source = batch["mask"].flatten(1) > 0.5
    distractors = batch["distractor_mask"].flatten(1) > 0.5
    background = ~(source | distractors)
    return {
        "source": scores[source].mean().item(),
        "distractors": scores[distractors].mean().item(),
        "background": scores[background].mean().item(),
        "source_open_share": (scores[source] > 0.5).float().mean().item(),
    }


def initial_mask(study: Study, seed: int, batch: dict) -> Tensor:
    """The finest mask (B, T, 1, h, w) of the study's model built with ``seed``, on ``batch``."""
    L.seed_everything(seed, verbose=False)
    hydra.utils.instantiate(study.config.data)  # as avvsr-train does between seeding and model
    model = build_lit_module(study.config.model).eval()
    with torch.no_grad():
        return model(batch["lq"], batch["audio"]).masks[0]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a synthetic set's root")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the study's config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_intermixed_args(argv)
    study = Study(args.data, ["model/fusion=msavf", *args.overrides])
    batch = next(iter(study.datamodule.val_dataloader()))
    print("seed | source | distractors | background | source pixels > 0.5")
    for seed in args.seeds:
        shares = mask_by_region(initial_mask(study, seed, batch), batch)
        print(
            f"{seed} | {shares['source']:.3f} | {shares['distractors']:.3f} | "
            f"{shares['background']:.3f} | {shares['source_open_share']:.0%}"
        )


if __name__ == "__main__":
    main()
