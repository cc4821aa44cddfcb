"""Build the results table of a study from the ``metrics.json`` files its runs wrote.

Rows are (backbone, fusion); each cell is the mean +- sample standard deviation over seeds of
what the runs measured. Nothing here computes a metric: it only aggregates the runs' files.
Writes ``results.md``, ``results.csv`` (every metric, long form) and ``results.tex``.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from avvsr.atomic import write_text
from avvsr.run_record import RECORD_NAME, NotATrainingRunError, RunRecord

# (column title, metric key, decimals): the main table, with true audio.
MAIN_COLUMNS = [
    ("PSNR-Y", "test/true/psnr_y", 2),
    ("SSIM-Y", "test/true/ssim_y", 4),
    ("PSNR-Y in source", "test/true/psnr_y_inside", 2),
    ("PSNR-Y outside", "test/true/psnr_y_outside", 2),
    ("PSNR-Y in distractors", "test/true/psnr_y_distractors", 2),
    ("source-vs-distractor AUC", "test/true/source_vs_distractor_auc", 3),
    ("mask AUC", "test/true/mask_auc", 3),
    ("mask IoU@0.5", "test/true/mask_iou", 3),
]
# (column title, metric key without the control, baseline fusion): paired (same seed) against
# the same backbone with the baseline fusion, true audio; "concat" asks whether attention adds
# to audio without it.
PAIRED_COLUMNS = [
    ("Δ PSNR-Y in source vs none", "psnr_y_inside", "none"),
    ("Δ PSNR-Y in distractors vs none", "psnr_y_distractors", "none"),
    ("Δ PSNR-Y in source vs concat", "psnr_y_inside", "concat"),
]
CONTROLS = ("true", "shuffled", "silent")
# (column title, metric key without the control, decimals): each with every control.
CONTROL_COLUMNS = [
    ("PSNR-Y in source", "psnr_y_inside", 2),
    ("PSNR-Y in distractors", "psnr_y_distractors", 2),
    ("PSNR-Y", "psnr_y", 2),
    ("source-vs-distractor AUC", "source_vs_distractor_auc", 3),
]


@dataclass(frozen=True)
class Run(RunRecord):
    """One training run: its :class:`~avvsr.run_record.RunRecord` and its folder."""

    path: Path


def load_runs(sweep_dir: str | Path) -> list[Run]:
    """Every training run under ``sweep_dir`` (any depth) that finished and wrote its record
    (``metrics.json``). An ``avvsr-eval`` result there is left out with a warning; a record
    that cannot be read stops the report (:class:`~avvsr.run_record.RunRecordError` naming
    it)."""
    runs = []
    for path in sorted(Path(sweep_dir).rglob(RECORD_NAME)):
        try:
            record = RunRecord.read(path)
        except NotATrainingRunError as error:
            print(f"warning: left out of the study: {error}", file=sys.stderr)
            continue
        runs.append(Run(**vars(record), path=path.parent))
    return runs


@dataclass
class Cell:
    """Mean and sample standard deviation of one metric over the seeds of one row."""

    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def format(self, decimals: int) -> str:
        if not self.values:
            return "–"
        if len(self.values) == 1:
            return f"{self.mean:.{decimals}f}"
        return f"{self.mean:.{decimals}f} ± {self.std:.{decimals}f}"


def fusion_rank(fusion: str) -> tuple[bool, tuple, str]:
    """Sort key of a fusion label: :attr:`FusionVariant.rank`; labels it does not know last,
    by name."""
    from avvsr.config import FusionVariant

    try:
        return (False, FusionVariant.from_label(fusion).rank, fusion)
    except ValueError:
        return (True, (), fusion)


def group_runs(runs: Iterable[Run]) -> dict[tuple[str, str], list[Run]]:
    rows: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        rows[(run.backbone, run.fusion)].append(run)
    return dict(sorted(rows.items(), key=lambda item: (item[0][0], fusion_rank(item[0][1]))))


def cell(runs: list[Run], key: str) -> Cell:
    return Cell(
        [r.metrics[key] for r in runs if key in r.metrics and math.isfinite(r.metrics[key])]
    )


def paired_gain(runs: list[Run], baseline: list[Run], key: str) -> Cell:
    """Per-seed difference ``run - baseline`` of ``key`` (same seed = same data order)."""
    base = {r.seed: r.metrics.get(key) for r in baseline}
    return Cell(
        [
            r.metrics[key] - base[r.seed]
            for r in runs
            if key in r.metrics and base.get(r.seed) is not None
        ]
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main_rows(groups: dict[tuple[str, str], list[Run]]) -> tuple[list[str], list[list[str]]]:
    header = ["backbone", "fusion", "seeds", "params", "ms/frame"] + [c[0] for c in MAIN_COLUMNS]
    header += [title for title, _, _ in PAIRED_COLUMNS]
    rows = []
    for (backbone, fusion), runs in groups.items():
        params = cell(runs, "test/params")
        row = [
            backbone,
            fusion,
            str(len(runs)),
            f"{params.mean / 1e6:.3f}M" if params.values else "–",
            cell(runs, "test/ms_per_frame").format(1),
        ]
        row += [cell(runs, key).format(decimals) for _, key, decimals in MAIN_COLUMNS]
        for _, key, baseline_fusion in PAIRED_COLUMNS:
            baseline = groups.get((backbone, baseline_fusion))
            gain = (
                paired_gain(runs, baseline, f"test/true/{key}")
                if baseline and fusion not in ("none", baseline_fusion)
                else Cell([])
            )
            row.append(gain.format(2))
        rows.append(row)
    return header, rows


def control_rows(groups: dict[tuple[str, str], list[Run]]) -> tuple[list[str], list[list[str]]]:
    header = ["backbone", "fusion"]
    header += [f"{title} ({c})" for title, _, _ in CONTROL_COLUMNS for c in CONTROLS]
    rows = []
    for (backbone, fusion), runs in groups.items():
        if fusion == "none":
            continue
        row = [backbone, fusion]
        row += [
            cell(runs, f"test/{c}/{key}").format(decimals)
            for _, key, decimals in CONTROL_COLUMNS
            for c in CONTROLS
        ]
        rows.append(row)
    return header, rows


def long_csv(groups: dict[tuple[str, str], list[Run]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["backbone", "fusion", "metric", "mean", "std", "n", "values"])
    for (backbone, fusion), runs in groups.items():
        keys = sorted({k for r in runs for k in r.metrics})
        for key in keys:
            c = cell(runs, key)
            if c.values:
                writer.writerow(
                    [
                        backbone,
                        fusion,
                        key,
                        f"{c.mean:.6g}",
                        f"{c.std:.6g}",
                        len(c.values),
                        " ".join(f"{v:.6g}" for v in c.values),
                    ]
                )
    return out.getvalue()


def latex_table(header: list[str], rows: list[list[str]]) -> str:
    def escape(text: str) -> str:
        return (
            text.replace("±", r"$\pm$")
            .replace("Δ", r"$\Delta$")
            .replace("_", r"\_")
            .replace("@", "@")
        )

    lines = [
        r"\begin{tabular}{" + "l" * 2 + "r" * (len(header) - 2) + "}",
        r"\toprule",
        " & ".join(escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_report(
    sweep_dir: str | Path,
    out_dir: str | Path,
    *,
    title: str,
    preamble: str = "",
    figure: str | None = None,
) -> Path:
    """Aggregate the runs under ``sweep_dir`` into ``out_dir/results.{md,csv,tex}``."""
    runs = load_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"{sweep_dir}: no run wrote metrics.json")
    groups = group_runs(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main_header, main = main_rows(groups)
    ctrl_header, controls = control_rows(groups)
    parts = [
        f"# {title}",
        "",
        preamble.strip(),
        "",
        "## Results (test split, true audio)",
        "",
        "Mean ± sample standard deviation over seeds. PSNR in dB on the Y channel "
        "(ITU-R BT.601); 'in source' / 'outside' = inside / outside the sound-source mask, "
        "'in distractors' = inside the silent objects; source-vs-distractor AUC scores the "
        "finest MS-AVF attention mask over object pixels only, sounding against silent "
        "objects (0.5 = no preference); mask AUC / IoU score it against the sound-source "
        "mask over the whole frame; "
        "Δ = paired (same seed) difference to the same backbone without fusion (vs none) "
        "or with tiled concat, audio without attention (vs concat); "
        "ms/frame = CPU forward time per output frame during the test.",
        "",
        markdown_table(main_header, main),
        "",
    ]
    if controls:
        parts += [
            "## Audio controls",
            "",
            "The same checkpoints tested with their own audio (true), another clip's "
            "audio (shuffled, fixed permutation) and silence. A real audio gain "
            "disappears under both controls; a mask that follows the sound prefers the "
            "source with true audio only.",
            "",
            markdown_table(ctrl_header, controls),
            "",
        ]
    if figure:
        parts += ["## Attention masks", "", f"![attention masks]({figure})", ""]
    write_text(out_dir / "results.md", "\n".join(parts))
    write_text(out_dir / "results.csv", long_csv(groups))
    write_text(out_dir / "results.tex", latex_table(main_header, main))
    return out_dir / "results.md"
