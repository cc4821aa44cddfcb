"""``avvsr-train``: compose the config with Hydra, fit, test the best checkpoint, record metrics.

Each run writes its :class:`~avvsr.run_record.RunRecord` (``metrics.json``: final validation
and test metrics, what was run, wall time) into its output folder; :mod:`avvsr.report` builds
the results table from those files.
Resume an interrupted run by starting it again in its own folder::

    avvsr-train <same overrides> hydra.run.dir=<that run's folder> ckpt_path=last

An entry point: library code does not import it (shared helpers live in :mod:`avvsr.config`).
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig, OmegaConf

from avvsr.config import (
    CONFIG_DIR,
    apply_threads,
    backbone_label,
    build_lit_module,
    fusion_label,
    instantiate_list,
    scalar_metrics,
)
from avvsr.run_record import RunRecord


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as ``cfg`` says; return every logged metric as floats."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor

    started = time.time()
    apply_threads(cfg)
    L.seed_everything(cfg.seed, workers=True)
    fusion = fusion_label(cfg.model.fusion, cfg.model.get("localisation"))
    if cfg.get("run_name") is None:
        cfg.run_name = f"{backbone_label(cfg)}-{fusion}-seed{cfg.seed}"

    datamodule = hydra.utils.instantiate(cfg.data)
    model = build_lit_module(cfg.model)
    loggers = instantiate_list(cfg.get("logger"))
    callbacks = instantiate_list(cfg.get("callbacks"))
    if not loggers:  # logger=none, debug=fast_dev_run: no learning rate to log anywhere
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics: dict[str, float] = {}
    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics |= scalar_metrics(trainer.callback_metrics)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.test:
        ckpt = best or (None if cfg.train else cfg.get("ckpt_path"))
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        metrics |= scalar_metrics(trainer.callback_metrics)

    for logger in loggers:  # close W&B runs so the next run in this process starts clean
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
    if trainer.is_global_zero:
        RunRecord(
            experiment=cfg.experiment_name,
            run_name=cfg.run_name,
            backbone=backbone_label(cfg),
            fusion=fusion,
            seed=int(cfg.seed),
            steps=int(trainer.global_step),
            best_checkpoint=best,
            wall_time_s=time.time() - started,
            metrics=metrics,
        ).write(cfg.paths.output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the metric a Hydra sweeper optimises."""
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
