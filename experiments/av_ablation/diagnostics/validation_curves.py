"""The validation curves of a sweep's runs, from each run's ``csv/metrics.csv`` (written by the
CSV logger every validation): per metric, one row per finished run (fusion, seed) with the value
at every validation step, the highest value and its step (the best for the validation
metrics, all higher-is-better), and the change from ``--since`` to the
last validation. For metrics logged every few steps, such as the training losses:
``--last-mean N`` prints only the mean of each run's last N logged values, ``--block-means N``
the mean of its values logged in each block of N steps (``[0, N)``, ``[N, 2N)``, ...), to see
a loss fall and rise again.

Usage::

    python experiments/av_ablation/diagnostics/validation_curves.py \\
        logs/reproduce/av_ablation/cpu/<time stamp> --since 2399
    python experiments/av_ablation/diagnostics/validation_curves.py <sweep dir> \\
        --metrics val/psnr_y_inside --fusion msavf-s3 concat
    python experiments/av_ablation/diagnostics/validation_curves.py <sweep dir> \\
        --metrics train/localisation_loss --fusion msavf-s3-lvs --last-mean 20
    python experiments/av_ablation/diagnostics/validation_curves.py <run dir> \\
        --metrics train/localisation_loss --block-means 250
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from avvsr.report import load_runs

DEFAULT_METRICS = ("val/psnr_y_inside", "val/source_vs_distractor_auc")


def read_curve(csv_path: Path, metric: str) -> dict[int, float]:
    """``{step: value}`` of ``metric`` in a CSV logger's ``metrics.csv`` (rows without it are
    other logging steps); empty when the run never logged it."""
    with csv_path.open(newline="") as file:
        return {int(row["step"]): float(row[metric]) for row in csv.DictReader(file)
                if row.get(metric)}


def curve_row(label: str, curve: dict[int, float], steps: Sequence[int],
              since: int | None) -> str:
    """``label | value at each of steps | highest (step) | last - value at since``."""
    values = [f"{curve[step]:.3f}" if step in curve else "-" for step in steps]
    highest_step = max(curve, key=curve.get)
    cells = [label, *values, f"{curve[highest_step]:.3f} ({highest_step})"]
    if since is not None:
        last = curve[max(curve)]
        cells.append(f"{last - curve[since]:+.3f}" if since in curve else "-")
    return " | ".join(cells)


def block_means(curve: dict[int, float], block: int) -> dict[int, float]:
    """``{first step of the block: mean of the values logged in it}`` over consecutive blocks of
    ``block`` steps, ``[0, block)``, ``[block, 2 * block)``, ...; blocks without a value left
    out."""
    blocks: dict[int, list[float]] = {}
    for step, value in curve.items():
        blocks.setdefault(step // block * block, []).append(value)
    return {start: sum(values) / len(values) for start, values in sorted(blocks.items())}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, dict[int, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="a sweep's folder (every run under it, any depth)")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--fusion", nargs="+", help="only these fusion labels, e.g. msavf-s3")
    parser.add_argument("--since", type=int, help="also print last value minus this step's")
    parser.add_argument("--last-mean", type=int, metavar="N",
                        help="print only the mean of each run's last N logged values")
    parser.add_argument("--block-means", type=int, metavar="N",
                        help="print the mean of each run's values logged per block of N steps")
    args = parser.parse_intermixed_args(argv)
    if args.block_means is not None and args.block_means < 1:
        parser.error(f"--block-means must be >= 1 step, got {args.block_means}")
    runs = [run for run in load_runs(args.sweep_dir)
            if args.fusion is None or run.fusion in args.fusion]
    if not runs:
        raise SystemExit(f"{args.sweep_dir}: no finished run (metrics.json) of that fusion")
    curves: dict[str, dict[str, dict[int, float]]] = {}
    for metric in args.metrics:
        by_run = {f"{run.fusion} | {run.seed}": read_curve(run.path / "csv" / "metrics.csv", metric)
                  for run in runs}
        by_run = {label: curve for label, curve in by_run.items() if curve}
        curves[metric] = by_run
        print(f"\n{metric}")
        if args.last_mean is not None:
            print(f"fusion | seed | mean of the last {args.last_mean} logged values")
            for label, curve in by_run.items():
                tail = [curve[step] for step in sorted(curve)[-args.last_mean:]]
                print(f"{label} | {sum(tail) / len(tail):.3f}")
            continue
        if args.block_means is not None:
            by_run = {label: block_means(curve, args.block_means)
                      for label, curve in by_run.items()}
            curves[metric] = by_run
            print(f"(mean per block of {args.block_means} steps, by the block's first step)")
        steps = sorted({step for curve in by_run.values() for step in curve})
        since = [] if args.since is None else [f"last - {args.since}"]
        print(" | ".join(["fusion | seed", *map(str, steps), "highest (step)", *since]))
        for label, curve in by_run.items():
            print(curve_row(label, curve, steps, args.since))
    return curves


if __name__ == "__main__":
    main()
