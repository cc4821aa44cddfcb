"""``avvsr-eval ckpt_path=...``: test a checkpoint with the audio controls (true/shuffled/silent).

The checkpoint carries its model config, so only the data, trainer and logger are composed
here. Metrics are logged as ``test/<control>/<metric>`` and written to ``metrics.json`` in the
output folder.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from avvsr.train import (
    CONFIG_DIR,
    apply_threads,
    instantiate_list,
    scalar_metrics,
    write_json_atomic,
)


def load_lit_module(ckpt_path: str | Path, **overrides: object):
    """Rebuild the LightningModule stored in a checkpoint (safe load) and load its weights.

    ``overrides`` replace entries of the stored model config (e.g. ``audio_controls``).
    """
    import torch

    from avvsr.errors import MissingFileError, WeightsError
    from avvsr.models.weights import load_partial

    path = Path(ckpt_path)
    if not path.is_file():
        raise MissingFileError(path, "checkpoint not found")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model_config = checkpoint.get("avvsr_model_config")
    if model_config is None:
        raise WeightsError(path, "no model config inside: not a checkpoint written by avvsr-train")
    model = hydra.utils.instantiate(OmegaConf.merge(model_config, overrides))
    model.model_config = model_config
    missing = load_partial(model, checkpoint["state_dict"], source=str(path))
    weights = [k for k in missing if not k.startswith(("val_metrics", "test_metrics"))]
    if weights:
        raise WeightsError(path, f"checkpoint lacks weights for {weights[:5]}...")
    return model


def evaluate(cfg: DictConfig) -> dict[str, float]:
    import lightning as L

    apply_threads(cfg)
    L.seed_everything(cfg.seed, workers=True)
    model = load_lit_module(cfg.ckpt_path, audio_controls=list(cfg.audio_controls))
    if model.net.scale != cfg.model.scale:
        raise ValueError(
            f"{cfg.ckpt_path}: the model upsamples x{model.net.scale}; "
            f"set model.scale={model.net.scale}"
        )
    datamodule = hydra.utils.instantiate(cfg.data)
    trainer = hydra.utils.instantiate(
        cfg.trainer, logger=instantiate_list(cfg.get("logger")) or False
    )
    trainer.test(model, datamodule=datamodule)
    metrics = scalar_metrics(trainer.callback_metrics)
    if trainer.is_global_zero:
        write_json_atomic(
            Path(cfg.paths.output_dir) / "metrics.json",
            {
                "checkpoint": str(cfg.ckpt_path),
                "metrics": metrics,
            },
        )
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
