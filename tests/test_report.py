"""Results aggregation: rows, mean +- std over seeds, paired gains, the three output files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avvsr.report import load_runs, write_report


def write_run(folder: Path, backbone: str, fusion: str, seed: int, **metrics: float) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "backbone": backbone,
                "fusion": fusion,
                "seed": seed,
                "metrics": metrics,
                "wall_time_s": 1.0,
                "best_checkpoint": "",
            }
        )
    )


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    values = {  # seed -> (none inside, msavf inside)
        0: (30.0, 31.0),
        1: (30.5, 32.0),
        2: (31.0, 33.0),
    }
    for seed, (plain, fused) in values.items():
        write_run(
            tmp_path / f"n{seed}",
            "basicvsr_tiny",
            "none",
            seed,
            **{"test/true/psnr_y_inside": plain, "test/true/psnr_y_distractors": 35.0,
               "test/params": 1e5},
        )
        write_run(
            tmp_path / f"m{seed}",
            "basicvsr_tiny",
            "msavf-s3",
            seed,
            **{
                "test/true/psnr_y_inside": fused,
                "test/shuffled/psnr_y_inside": plain,
                "test/silent/psnr_y_inside": plain,
                "test/true/psnr_y_distractors": 35.0 - 0.1 * seed,
                "test/true/source_vs_distractor_auc": 0.9 + 0.01 * seed,
                "test/shuffled/source_vs_distractor_auc": 0.2,
                "test/silent/source_vs_distractor_auc": 0.5,
                "test/params": 1.2e5,
            },
        )
    (tmp_path / "unfinished").mkdir()  # a run that died writes no metrics.json
    return tmp_path


def cells_of(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def table_header(text: str) -> list[str]:
    """The header cells of the first table in ``text``."""
    return cells_of(next(line for line in text.splitlines() if line.startswith("| backbone")))


def test_runs_are_grouped_into_rows_with_mean_std_and_paired_gain(
    sweep: Path, tmp_path: Path
) -> None:
    assert len(load_runs(sweep)) == 6
    out = tmp_path / "report"
    path = write_report(sweep, out, title="t")
    text = path.read_text()
    none_row = next(line for line in text.splitlines() if "| none |" in line)
    fused_row = next(line for line in text.splitlines() if "| msavf-s3 |" in line)
    # means and sample standard deviations of the values above
    assert "30.50 ± 0.50" in none_row and "32.00 ± 1.00" in fused_row
    cells = dict(zip(table_header(text), cells_of(fused_row), strict=True))
    # paired gains 1.0, 1.5, 2.0 -> 1.50 ± 0.50; in the distractors 0, -0.1, -0.2
    assert cells["Δ PSNR-Y in source vs none"] == "1.50 ± 0.50"
    assert cells["Δ PSNR-Y in distractors vs none"] == "-0.10 ± 0.10"
    assert cells["PSNR-Y in distractors"] == "34.90 ± 0.10"
    assert cells["source-vs-distractor AUC"] == "0.910 ± 0.010"
    none_cells = dict(zip(table_header(text), cells_of(none_row), strict=True))
    assert none_cells["source-vs-distractor AUC"] == "–"  # no masks without fusion
    controls = text.split("## Audio controls")[1]
    assert "32.00 ± 1.00 | 30.50 ± 0.50 | 30.50 ± 0.50" in controls
    control_cells = dict(zip(table_header(controls), cells_of(
        next(line for line in controls.splitlines() if "| msavf-s3 |" in line)), strict=True))
    assert [control_cells[f"source-vs-distractor AUC ({c})"]
            for c in ("true", "shuffled", "silent")] == ["0.910 ± 0.010", "0.200 ± 0.000",
                                                         "0.500 ± 0.000"]
    assert (out / "results.csv").read_text().count("\n") > 4
    assert "\\begin{tabular}" in (out / "results.tex").read_text()


def test_no_finished_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run wrote metrics.json"):
        write_report(tmp_path, tmp_path / "out", title="t")


def test_sweep_job_count_is_the_product_of_the_sweeps() -> None:
    from avvsr.sweep_progress import count_sweep_jobs

    assert (
        count_sweep_jobs(["model/fusion=none,concat,msavf", "seed=0,1", "trainer.max_steps=3"]) == 6
    )
    assert count_sweep_jobs(["seed=0"]) == 1


def test_the_report_header_reads_command_and_wall_time_from_the_run_files(sweep: Path) -> None:
    import os

    from avvsr.reproduce import sweep_record

    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: [experiment=av_ablation, sweep=cpu]\n"
    )
    os.utime(sweep / "multirun.yaml", (1000.0, 1000.0))
    for index, path in enumerate(sorted(sweep.rglob("metrics.json"))):
        os.utime(path, (1000.0 + 60 * index, 1000.0 + 60 * index))
    commands, wall_min = sweep_record(sweep)
    assert commands == ["avvsr-train -m experiment=av_ablation sweep=cpu"]
    assert wall_min == 5.0  # six runs, the last one 300 s after the sweep started
