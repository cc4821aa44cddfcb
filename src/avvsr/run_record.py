"""The record a training run leaves in its output folder, ``metrics.json``: the one home of its
format, written by ``avvsr-train`` and read by the study's report, figure and diagnostics.

    RunRecord(experiment=..., run_name=..., backbone="basicvsr_tiny", fusion="msavf-s3",
              seed=0, steps=2000, best_checkpoint="...ckpt", wall_time_s=712.4,
              metrics={"test/true/psnr_y": 34.3, ...}).write(output_dir)
    record = RunRecord.read(output_dir / "metrics.json")

``fusion`` is a :class:`~avvsr.config.FusionVariant` label; ``metrics`` the run's final
validation and test scalars (``val/...``, ``test/<control>/<metric>``); ``wall_time_s`` seconds
from the start of the run to its record. ``avvsr-eval`` writes a file of the same name in its
own output folder, of another kind (:func:`write_evaluation_record`: ``{"checkpoint",
"metrics"}``): :meth:`RunRecord.read` names it as such (:class:`NotATrainingRunError`), so
that a study's reader can leave it out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, get_origin, get_type_hints

from avvsr.atomic import write_json
from avvsr.errors import PathError

RECORD_NAME = "metrics.json"


class RunRecordError(PathError):
    """A ``metrics.json`` cannot be read as a run's record (not JSON, keys missing or of the
    wrong type)."""


class NotATrainingRunError(RunRecordError):
    """A well-formed ``metrics.json`` that ``avvsr-eval`` wrote, not a training run."""


@dataclass(frozen=True)
class RunRecord:
    """What a finished training run was and measured (see the module docstring)."""

    experiment: str
    run_name: str
    backbone: str
    fusion: str
    seed: int
    steps: int
    best_checkpoint: str
    wall_time_s: float
    metrics: dict[str, float]

    def write(self, output_dir: str | Path) -> Path:
        """Write ``output_dir/metrics.json`` (atomically; the folder made if need be) and
        return its path."""
        path = Path(output_dir) / RECORD_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, asdict(self))
        return path

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """The record in ``path``; :class:`RunRecordError` naming the file and the problem."""
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunRecordError(path, f"not a readable JSON run record ({error})") from error
        if not isinstance(payload, dict):
            raise RunRecordError(path, "not a run record: expected a JSON object")
        if "checkpoint" in payload and "backbone" not in payload:
            raise NotATrainingRunError(path, "an avvsr-eval result, not a training run")
        missing = [f.name for f in fields(cls) if f.name not in payload]
        if missing:
            raise RunRecordError(path, f"run record without {', '.join(missing)}")
        values = {f.name: payload[f.name] for f in fields(cls)}
        problems = [name for name, kind in get_type_hints(cls).items()
                    if not _is(values[name], kind)]
        if problems:
            raise RunRecordError(path, f"run record with malformed {', '.join(problems)}")
        return cls(**values)


def write_evaluation_record(
    output_dir: str | Path, checkpoint: str | Path, metrics: dict[str, float]
) -> Path:
    """Write ``avvsr-eval``'s result, ``output_dir/metrics.json`` ``{"checkpoint",
    "metrics"}`` (atomically), and return its path."""
    path = Path(output_dir) / RECORD_NAME
    write_json(path, {"checkpoint": str(checkpoint), "metrics": metrics})
    return path


def _is(value: Any, kind: Any) -> bool:
    """Whether a JSON ``value`` is of the field type ``kind``: an int is a float too (as are
    the NaN and infinities Python's json writes), a bool neither; a ``dict[str, float]`` holds
    such floats under string keys."""
    if get_origin(kind) is dict:
        return isinstance(value, dict) and all(
            isinstance(key, str) and _is(item, float) for key, item in value.items()
        )
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)
