"""A Hydra callback that shows a multirun's progress: which run of how many, and an ETA.

Works with launchers that run jobs side by side in other processes (joblib, SLURM): each
finished job leaves a marker file in ``<sweep dir>/.progress/``, and the ETA is the elapsed
time per finished job times the jobs left.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("avvsr.sweep")


def count_sweep_jobs(overrides: list[str]) -> int:
    """Number of jobs Hydra's basic sweeper makes from ``overrides`` (the product of the sweeps)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return math.prod(len(list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override())


class SweepProgress(Callback):
    """Logs ``run k/N`` with elapsed time and ETA at the start of every job of a multirun."""

    def __init__(self) -> None:
        self.total = 0
        self.started = 0.0

    @staticmethod
    def _markers(config: DictConfig) -> Path:
        return Path(config.hydra.sweep.dir) / ".progress"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = config.hydra.sweeper.get("params") or {}
        command_line = list(config.hydra.overrides.task)
        given = {o.split("=", 1)[0] for o in command_line}
        merged = command_line + [f"{k}={v}" for k, v in params.items() if k not in given]
        self.total = count_sweep_jobs(merged)
        self.started = time.time()
        self._markers(config).mkdir(parents=True, exist_ok=True)
        log.info("sweep of %d runs into %s", self.total, config.hydra.sweep.dir)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.total:
            return
        markers = self._markers(config)
        finished = len(list(markers.glob("*.done"))) if markers.is_dir() else 0
        elapsed = time.time() - self.started
        left = self.total - finished
        eta = f"{elapsed / finished * left / 60:.1f} min" if finished else "after the first run"
        log.info(
            "run %d/%d (%s) | %d finished | elapsed %.1f min | ETA %s",
            int(config.hydra.job.num) + 1,
            self.total,
            config.hydra.job.override_dirname,
            finished,
            elapsed / 60,
            eta,
        )

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        markers = self._markers(config)
        if self.total and markers.is_dir():
            (markers / f"{int(config.hydra.job.num)}.done").touch()
