"""The run record (``metrics.json``): what avvsr-train writes reads back the same, and a file
that is not one is named with its problem (the record avvsr-train writes is read in
test_training.py through the same reader)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avvsr.report import load_runs
from avvsr.run_record import RECORD_NAME, NotATrainingRunError, RunRecord, RunRecordError

RECORD = RunRecord(
    experiment="av_ablation", run_name="basicvsr_tiny-msavf-s3-seed0", backbone="basicvsr_tiny",
    fusion="msavf-s3", seed=0, steps=2000, best_checkpoint="/runs/0/best.ckpt",
    wall_time_s=712.5, metrics={"test/true/psnr_y": 34.25, "test/params": 219000},
)


def test_a_record_reads_back_as_written(tmp_path: Path) -> None:
    path = RECORD.write(tmp_path / "run")
    assert path == tmp_path / "run" / RECORD_NAME
    assert RunRecord.read(path) == RECORD
    assert [p.name for p in path.parent.iterdir()] == [RECORD_NAME]  # no temporary left


def corrupt(payload: dict, **changes: object) -> dict:
    return {key: value for key, value in (payload | changes).items() if value is not ...}


@pytest.mark.parametrize(("text", "problem"), [
    ("{not json", "not a readable JSON run record"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps(corrupt(vars(RECORD), steps=..., fusion=...)), "without fusion, steps"),
    (json.dumps(corrupt(vars(RECORD), seed=True)), "malformed seed"),
    (json.dumps(corrupt(vars(RECORD), seed="0", wall_time_s=None)), "malformed seed, wall_time_s"),
    (json.dumps(corrupt(vars(RECORD), metrics={"test/true/psnr_y": "34"})), "malformed metrics"),
    (json.dumps(corrupt(vars(RECORD), metrics=[34.0])), "malformed metrics"),
])
def test_a_file_that_is_no_record_is_named_with_its_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "run" / RECORD_NAME
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(RunRecordError, match=problem) as caught:
        RunRecord.read(path)
    assert caught.value.path == str(path)
    # The study's reader stops on it, naming it, and leaves the file as it was.
    with pytest.raises(RunRecordError, match=problem):
        load_runs(tmp_path)
    assert path.read_text() == text


def test_an_evaluation_result_is_told_from_a_training_run(tmp_path: Path) -> None:
    path = tmp_path / RECORD_NAME
    path.write_text(json.dumps({"checkpoint": "best.ckpt", "metrics": {"test/true/psnr_y": 30}}))
    with pytest.raises(NotATrainingRunError, match="an avvsr-eval result"):
        RunRecord.read(path)
