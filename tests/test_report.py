"""Results aggregation: rows, mean +- std over seeds, paired gains, the three output files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from avvsr.report import Run, load_runs, write_report
from avvsr.run_record import RunRecord, write_evaluation_record
from helpers.training import config_options


def write_run(folder: Path, backbone: str, fusion: str, seed: int, **metrics: float) -> None:
    """A finished run's record as avvsr-train writes it (:class:`RunRecord`)."""
    RunRecord(
        experiment="av_ablation", run_name=f"{backbone}-{fusion}-seed{seed}", backbone=backbone,
        fusion=fusion, seed=seed, steps=2, best_checkpoint="", wall_time_s=1.0, metrics=metrics,
    ).write(folder)


def with_checkpoint(run: Run) -> Run:
    """``run`` as if its training had kept a best checkpoint."""
    return dataclasses.replace(run, best_checkpoint=f"{run.path}/best.ckpt")


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return write_sweep(tmp_path)


def write_sweep(folder: Path) -> Path:
    """No fusion, tiled concat and MS-AVF (msavf-s3), seeds 0-2, and a run that did not
    finish."""
    values = {  # seed -> (none inside, concat inside, msavf inside)
        0: (30.0, 31.0, 31.0),
        1: (30.5, 31.0, 32.0),
        2: (31.0, 31.0, 33.0),
    }
    for seed, (plain, concat, fused) in values.items():
        write_run(folder / f"cat{seed}", "basicvsr_tiny", "concat", seed,
                  **{"test/true/psnr_y_inside": concat})
        write_run(
            folder / f"n{seed}",
            "basicvsr_tiny",
            "none",
            seed,
            **{"test/true/psnr_y_inside": plain, "test/true/psnr_y_distractors": 35.0,
               "test/params": 1e5},
        )
        write_run(
            folder / f"m{seed}",
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
    (folder / "unfinished").mkdir()  # a run that died writes no metrics.json
    return folder


def cells_of(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def table_header(text: str) -> list[str]:
    """The header cells of the first table in ``text``."""
    return cells_of(next(line for line in text.splitlines() if line.startswith("| backbone")))


def test_runs_are_grouped_into_rows_with_mean_std_and_paired_gain(
    sweep: Path, tmp_path: Path
) -> None:
    assert len(load_runs(sweep)) == 9
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
    # against concat 0, 1, 2; concat itself and no fusion have no such pair
    assert cells["Δ PSNR-Y in source vs concat"] == "1.00 ± 1.00"
    concat_row = next(line for line in text.splitlines() if "| concat |" in line)
    concat_cells = dict(zip(table_header(text), cells_of(concat_row), strict=True))
    assert concat_cells["Δ PSNR-Y in source vs none"] == "0.50 ± 0.50"
    assert concat_cells["Δ PSNR-Y in source vs concat"] == "–"
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
    # nine runs, the last one 480 s after the sweep started
    assert sweep_record(sweep, load_runs(sweep)) == [
        ("avvsr-train -m experiment=av_ablation sweep=cpu", 8.0)
    ]
    # a checkpoint evaluated later with avvsr-eval into the sweep's folder adds no time
    checkpoint = next(sweep.rglob("metrics.json")).parent / "best.ckpt"
    (sweep / "eval").mkdir()
    evaluation = write_evaluation_record(sweep / "eval", checkpoint, {"test/psnr": 30.0})
    os.utime(evaluation, (90_000.0, 90_000.0))
    assert sweep_record(sweep, load_runs(sweep)) == [
        ("avvsr-train -m experiment=av_ablation sweep=cpu", 8.0)
    ]


FUSION_OPTIONS = config_options("model/fusion")


@pytest.mark.parametrize("localisation", config_options("model/localisation"))
@pytest.mark.parametrize("fusion", FUSION_OPTIONS)
def test_every_fusion_and_localisation_option_has_a_label_that_names_it_back(
    fusion: str, localisation: str
) -> None:
    from avvsr.config import FusionVariant, compose, fusion_label

    model = compose("train", [f"model/fusion={fusion}", f"model/localisation={localisation}"]).model
    label = fusion_label(model.fusion, model.localisation)
    variant = FusionVariant.from_label(label)
    assert variant.label == label
    # A term needs attention masks (the LightningModule refuses one on none and concat).
    with_term = localisation != "none" and fusion not in ("none", "concat")
    assert variant.localisation == (localisation if with_term else None)
    assert label.endswith(f"-{localisation}") == with_term


@pytest.mark.parametrize(
    "term", [term for term in config_options("model/localisation") if term != "none"]
)
def test_each_localisation_term_has_its_own_label(term: str) -> None:
    from avvsr.config import FusionVariant, compose, fusion_label

    model = compose("train", ["model/fusion=msavf", f"model/localisation={term}"]).model
    assert fusion_label(model.fusion, model.localisation) == f"msavf-s3-{term}"
    assert fusion_label(model.fusion) == "msavf-s3"
    assert FusionVariant.from_label(f"msavf-s3-{term}") != FusionVariant.from_label("msavf-s3")


def test_the_teachers_reach_is_part_of_its_label() -> None:
    """Runs whose teacher reaches different parts of the network are different rows."""
    from avvsr.config import FusionVariant, compose, fusion_label

    labels = []
    for teaches in ("network", "audio", "projections"):
        model = compose("train", ["model/fusion=msavf", "model/localisation=syncteach",
                                  f"model.localisation.teaches={teaches}"]).model
        labels.append(fusion_label(model.fusion, model.localisation))
    assert labels == ["msavf-s3-syncteach", "msavf-s3-syncteachaudio",
                      "msavf-s3-syncteachprojections"]
    assert all(FusionVariant.from_label(label).label == label for label in labels)


def test_a_term_without_a_label_of_its_own_is_named_by_its_class() -> None:
    from avvsr.config import FusionVariant, fusion_label

    label = fusion_label({"scales": 2}, {"_target_": "my_lab.losses.AreaPrior", "weight": 1})
    assert label == "msavf-s2-areaprior"
    assert FusionVariant.from_label(label).localisation == "areaprior"


def test_malformed_fusion_labels_are_refused() -> None:
    from avvsr.config import FusionVariant

    for wrong in ("msavf", "msavf-s3-lvs-notopdown", "msavf-s3-lvs-lvs", "concat-lvs",
                  "msavf-sx", "msavf-s3-", "msavf-s3-notopdown-notopdown"):
        with pytest.raises(ValueError, match="not a fusion label"):
            FusionVariant.from_label(wrong)


def add_lvs_runs(sweep: Path, folder: str = "lvs") -> None:
    """MS-AVF with the localisation term, seeds 0-2: +0.5 dB in the source over msavf-s3."""
    for seed, inside in enumerate((31.5, 32.5, 33.5)):
        write_run(sweep / folder / f"l{seed}", "basicvsr_tiny", "msavf-s3-lvs", seed,
                  **{"test/true/psnr_y_inside": inside,
                     "test/true/source_vs_distractor_auc": 0.95})


def test_the_lvs_runs_are_a_row_of_their_own_after_msavf(sweep: Path, tmp_path: Path) -> None:
    add_lvs_runs(sweep)
    write_run(sweep / "t0", "basicvsr_tiny", "msavf-s3-notopdown", 0)
    write_run(sweep / "s4", "basicvsr_tiny", "msavf-s4", 0)
    write_run(sweep / "y0", "basicvsr_tiny", "msavf-s3-sync", 0)
    text = write_report(sweep, tmp_path / "report", title="t").read_text()
    main = text.split("## Audio controls")[0]
    rows = [cells_of(line) for line in main.splitlines() if line.startswith("| basicvsr_tiny")]
    assert [row[1] for row in rows] == [
        "none", "concat", "msavf-s3", "msavf-s3-lvs", "msavf-s3-sync", "msavf-s3-notopdown",
        "msavf-s4",
    ]
    cells = dict(zip(table_header(text), rows[3], strict=True))
    assert cells["seeds"] == "3" and cells["PSNR-Y in source"] == "32.50 ± 1.00"
    assert cells["Δ PSNR-Y in source vs none"] == "2.00 ± 0.50"  # paired against no fusion
    assert cells["source-vs-distractor AUC"] == "0.950 ± 0.000"


def test_sweeps_run_into_one_folder_are_reported_together(tmp_path: Path) -> None:
    """A row added later (``hydra.sweep.dir=<sweep dir>/cpu_lvs``) joins the study's table;
    the header lists both commands and counts each sweep's own time, not the pause between."""
    import os

    from avvsr.reproduce import main, sweep_record

    study = tmp_path / "study"
    write_sweep(study / "cpu")
    add_lvs_runs(study, "cpu_lvs")
    starts = {"cpu": 1000.0, "cpu_lvs": 9000.0}  # the second sweep started 8,000 s later
    for name, start in starts.items():
        (study / name / "multirun.yaml").write_text(
            f"hydra:\n  overrides:\n    task: [experiment=av_ablation, sweep={name}]\n"
        )
        os.utime(study / name / "multirun.yaml", (start, start))
        for index, path in enumerate(sorted((study / name).rglob("metrics.json"))):
            os.utime(path, (start + 60 * (index + 1),) * 2)
    # nine runs a minute apart, then three
    assert sweep_record(study, load_runs(study)) == [
        ("avvsr-train -m experiment=av_ablation sweep=cpu", 9.0),
        ("avvsr-train -m experiment=av_ablation sweep=cpu_lvs", 3.0),
    ]
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "attention_masks.png").write_bytes(b"a previous report's figure")
    main(["--report-only", str(study), f"--out-dir={tmp_path / 'report'}"])
    text = (tmp_path / "report" / "results.md").read_text()
    # no run has a checkpoint, so no figure: the previous one does not stay beside these tables
    assert not (tmp_path / "report" / "attention_masks.png").exists()
    assert "attention_masks.png" not in text
    assert "| msavf-s3 |" in text and "| msavf-s3-lvs |" in text and "| none |" in text
    # the header gives each sweep's minutes after its command, and their sum
    assert "    avvsr-train -m experiment=av_ablation sweep=cpu  # 9.0 min\n" in text
    assert "    avvsr-train -m experiment=av_ablation sweep=cpu_lvs  # 3.0 min\n" in text
    assert "12.0 min from the start of each of the 2 sweeps" in text


def test_the_figure_draws_msavf_with_and_without_the_term_never_one_for_the_other(
    sweep: Path
) -> None:
    from avvsr.reproduce import figure_runs

    for run in load_runs(sweep):  # no checkpoint, no figure
        assert figure_runs([run]) == []
    add_lvs_runs(sweep)
    runs = [with_checkpoint(run) for run in load_runs(sweep)]
    assert [(r.fusion, r.seed) for r in figure_runs(runs)] == [("msavf-s3", 0),
                                                                ("msavf-s3-lvs", 0)]
    plain = [r for r in runs if r.fusion != "msavf-s3-lvs"]
    assert [(r.fusion, r.seed) for r in figure_runs(plain)] == [("msavf-s3", 0)]
    # Masks that see the synchrony get rows of their own, after the plain masks'.
    write_run(sweep / "y1", "basicvsr_tiny", "msavf-s3-sync", 1)
    with_synchrony = [with_checkpoint(run) for run in load_runs(sweep)]
    assert [(r.fusion, r.seed) for r in figure_runs(with_synchrony)] == [
        ("msavf-s3", 0), ("msavf-s3-lvs", 0), ("msavf-s3-sync", 1)]
