"""Where a trained MS-AVF's source-vs-distractor AUC is lost: in whole clips whose mask
prefers the wrong object, or in the spread of the mask within the objects of clips that choose
right? On the test split with true audio, the finest mask upsampled to the label maps as the
metric does (``avvsr.metrics.SourceDistractorAUC``):

- per clip, its AUC over object pixels (the study's figure is their mean);
- per frame, whether the mask's mean over the source is above its mean over the distractors
  (the object the frame's mask chooses), counted over the frames with both;
- the clips whose AUC is below 0.5, by the class of their sounding object (a mask that knows
  some classes' family and not others' fails on those classes' clips);
- the cosine similarity between the classes' mean audio queries at the finest scale (each
  frame's query unit length, averaged over the test frames whose sounding object is of that
  class): two classes of different families whose queries are alike cannot have masks that
  open on different hues.

A mean clip AUC well below the share of frames that choose the source means the masks pick the
right object but overlap in value across the two (a wide spread within each object); the two
close together means the masks pick the wrong object in some clips or frames.

Usage::

    python experiments/av_ablation/diagnostics/mask_choices.py <checkpoint> [<checkpoint> ...] \\
        --data data/synth_lattice
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from study_tools import Study
from torch import Tensor

from avvsr.checkpoint import load_lit_module
from avvsr.metrics import SourceDistractorAUC, upsample_attention


def clip_choices(
    mask: Tensor, source: Tensor, distractors: Tensor
) -> list[tuple[int, float, int, int]]:
    """Per clip of a batch with a source and a distractor pixel: (its index in the batch, its
    AUC, frames whose mean mask over the source is above that over the distractors, frames
    with both). ``mask`` (B, T, 1, h, w) in [0, 1]; ``source``, ``distractors`` (B, T, 1, H,
    W) label maps (binarised at 0.5; a pixel in both counts as source, as in the metric)."""
    scores = upsample_attention(mask, source).view(source.shape)
    sounding = source >= 0.5
    silent = (distractors >= 0.5) & ~sounding
    choices = []
    for clip in range(mask.shape[0]):
        auc = SourceDistractorAUC()
        auc.update(mask[clip : clip + 1], source[clip : clip + 1], distractors[clip : clip + 1])
        if auc.clips == 0:
            continue
        chosen = scored = 0
        for frame_scores, positive, negative in zip(
            scores[clip], sounding[clip], silent[clip], strict=True
        ):
            if positive.any() and negative.any():
                scored += 1
                chosen += int(frame_scores[positive].mean() > frame_scores[negative].mean())
        choices.append((clip, auc.compute()["auc"].item(), chosen, scored))
    return choices


def mask_choices(checkpoint: str, study: Study, batches: Sequence[dict]) -> dict[str, Any]:
    """``clips``, ``mean_auc`` (the study's figure), ``median_auc``, ``clips_below_half``
    (clips whose AUC is below 0.5), ``frames_choosing_source`` (share of the scored frames)
    ``below_half_by_class`` (``{class: (clips below 0.5, clips)}``) and ``query_cosine``
    (:func:`query_cosines`, pairs in class-table order) of ``checkpoint``'s finest mask and
    query on ``batches`` of ``study``'s set, with their own audio."""
    net = load_lit_module(checkpoint).net.eval()
    aucs, chosen, scored = [], 0, 0
    by_class: dict[str, list[int]] = {name: [0, 0] for name in study.class_names}
    query_sums: dict[str, Tensor] = {}
    with torch.no_grad():
        for batch in batches:
            output = net(batch["lq"], batch["audio"], return_embeddings=True)
            masks = output.masks
            if not masks:
                raise SystemExit(f"{checkpoint}: the model's fusion has no attention masks")
            classes = study.clip_classes(batch)
            for clip_query, index in zip(output.embeddings[0].query, classes, strict=True):
                name = study.class_names[index]
                query_sums[name] = query_sums.get(name, 0) + clip_query.double().sum(0)
            for clip, auc, frames_chosen, frames in clip_choices(
                masks[0], batch["mask"], batch["distractor_mask"]
            ):
                aucs.append(auc)
                chosen, scored = chosen + frames_chosen, scored + frames
                counts = by_class[study.class_names[classes[clip]]]
                counts[0] += auc < 0.5
                counts[1] += 1
    if not aucs:
        raise SystemExit(f"{checkpoint}: no test clip has both a source and a distractor")
    return {
        "clips": len(aucs),
        "mean_auc": statistics.fmean(aucs),
        "median_auc": statistics.median(aucs),
        "clips_below_half": sum(auc < 0.5 for auc in aucs),
        "frames_choosing_source": chosen / scored,
        "below_half_by_class": {name: tuple(c) for name, c in by_class.items() if c[1]},
        "query_cosine": query_cosines(
            {name: query_sums[name] for name in study.class_names if name in query_sums}
        ),
    }


def query_cosines(query_sums: dict[str, Tensor]) -> dict[tuple[str, str], float]:
    """``{(class a, class b): cosine of their mean queries}`` for every pair a < b in the
    order given, from each class's sum of unit-length queries (E,)."""
    names = list(query_sums)
    return {
        (a, b): F.cosine_similarity(query_sums[a], query_sums[b], dim=0).item()
        for i, a in enumerate(names) for b in names[i + 1:]
    }


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="avvsr-train checkpoints with MS-AVF")
    parser.add_argument("--data", required=True, help="the synthetic set they were trained on")
    parser.add_argument("--override", action="append", default=[],
                        help="a Hydra override of the study's config (repeatable)")
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(1)  # beside a training run
    study = Study(args.data, args.override)
    batches = list(study.datamodule.test_dataloader())
    results = {c: mask_choices(c, study, batches) for c in args.checkpoints}
    print("checkpoint | clips | mean clip AUC | median clip AUC | clips below 0.5 "
          "| frames choosing the source | clips below 0.5 by sounding class")
    for checkpoint, row in results.items():
        by_class = ", ".join(f"{name} {below}/{clips}"
                             for name, (below, clips) in row["below_half_by_class"].items())
        print(f"{checkpoint} | {row['clips']} | {row['mean_auc']:.3f} | {row['median_auc']:.3f} "
              f"| {row['clips_below_half']} | {row['frames_choosing_source']:.1%} | {by_class}")
    print("\ncheckpoint | cosine between the classes' mean finest-scale audio queries")
    for checkpoint, row in results.items():
        pairs = ", ".join(f"{a}-{b} {cosine:.2f}" for (a, b), cosine in row["query_cosine"].items())
        print(f"{checkpoint} | {pairs}")
    return results


if __name__ == "__main__":
    main()
