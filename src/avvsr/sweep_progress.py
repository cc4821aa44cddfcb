"""A Hydra callback that shows a multirun's progress: which run of how many, and an ETA."""

from __future__ import annotations

import logging
import math
import time
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

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = config.hydra.sweeper.get("params") or {}
        command_line = list(config.hydra.overrides.task)
        given = {o.split("=", 1)[0] for o in command_line}
        merged = command_line + [f"{k}={v}" for k, v in params.items() if k not in given]
        self.total = count_sweep_jobs(merged)
        self.started = time.time()
        log.info("sweep of %d runs into %s", self.total, config.hydra.sweep.dir)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.total:
            return
        done = int(config.hydra.job.num)
        elapsed = time.time() - self.started
        eta = f"{elapsed / done * (self.total - done) / 60:.1f} min" if done else "unknown"
        log.info(
            "run %d/%d (%s) | elapsed %.1f min | ETA %s",
            done + 1,
            self.total,
            config.hydra.job.override_dirname,
            elapsed / 60,
            eta,
        )
