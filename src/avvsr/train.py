"""``avvsr-train``: compose the config with Hydra, fit, test the best checkpoint, record metrics.

Each run writes ``metrics.json`` (final validation and test metrics, what was run, wall time)
into its output folder; :mod:`avvsr.report` builds the results table from those files.
Resume an interrupted run by starting it again in its own folder::

    avvsr-train <same overrides> hydra.run.dir=<that run's folder> ckpt_path=last
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
AUDIO_FEATURE_KEYS = ("sample_rate", "window_s", "n_fft", "hop_length", "n_mels")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def fusion_label(fusion_cfg: DictConfig | None) -> str:
    """A short name of the fusion variant for tables and run names: ``none``, ``concat``,
    ``msavf-s3``, ``msavf-s3-notopdown``."""
    if fusion_cfg is None:
        return "none"
    if not fusion_cfg.get("attention", True):
        return "concat"
    label = f"msavf-s{fusion_cfg.get('scales', 3)}"
    return label if fusion_cfg.get("top_down", True) else f"{label}-notopdown"


def backbone_label(cfg: DictConfig) -> str:
    """The chosen ``model/backbone`` option (e.g. ``basicvsr_tiny``), or the class name."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("model/backbone")
        if choice:
            return str(choice)
    return str(cfg.model.backbone._target_).rsplit(".", 1)[-1]


def instantiate_list(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that holds named objects (callbacks, loggers)."""
    if not group:
        return []
    return [hydra.utils.instantiate(node) for node in group.values() if node and "_target_" in node]


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to ``path`` through a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def apply_threads(cfg: DictConfig) -> None:
    """Limit torch's CPU threads to ``cfg.threads`` when set (jobs running side by side)."""
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(cfg.threads)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as ``cfg`` says; return every logged metric as floats."""
    import lightning as L

    started = time.time()
    apply_threads(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("run_name") is None:
        cfg.run_name = f"{backbone_label(cfg)}-{fusion_label(cfg.model.fusion)}-seed{cfg.seed}"

    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    model.model_config = OmegaConf.to_container(cfg.model, resolve=True)
    model.audio_features = {key: cfg.data[key] for key in AUDIO_FEATURE_KEYS if key in cfg.data}
    loggers = instantiate_list(cfg.get("logger"))
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=instantiate_list(cfg.get("callbacks")), logger=loggers or False
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics: dict[str, float] = {}
    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics |= scalar_metrics(trainer.callback_metrics)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.test:
        ckpt = best or (None if cfg.train else cfg.get("ckpt_path"))
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)
        metrics |= scalar_metrics(trainer.callback_metrics)

    for logger in loggers:  # close W&B runs so the next run in this process starts clean
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
    if trainer.is_global_zero:
        output_dir = Path(cfg.paths.output_dir)
        write_json_atomic(
            output_dir / "metrics.json",
            {
                "experiment": cfg.experiment_name,
                "run_name": cfg.run_name,
                "backbone": backbone_label(cfg),
                "fusion": fusion_label(cfg.model.fusion),
                "seed": int(cfg.seed),
                "steps": int(trainer.global_step),
                "best_checkpoint": best,
                "wall_time_s": time.time() - started,
                "metrics": metrics,
            },
        )
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the metric a Hydra sweeper optimises."""
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
