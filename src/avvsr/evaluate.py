"""``avvsr-eval ckpt_path=...``: test a checkpoint with the audio controls (true/shuffled/silent).

The checkpoint carries its model config with its audio-feature settings, so only the data,
trainer and logger are composed here, and the data makes the features as the model was trained
on (the checkpoint's settings replace the composed ``audio`` node). Metrics are logged as
``test/<control>/<metric>`` and written to ``metrics.json`` in the output folder.

An entry point: library code does not import it.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, open_dict

from avvsr.config import CONFIG_DIR, apply_threads, instantiate_list, scalar_metrics
from avvsr.run_record import write_evaluation_record


def evaluate(cfg: DictConfig) -> dict[str, float]:
    import lightning as L

    from avvsr.checkpoint import load_lit_module

    apply_threads(cfg)
    L.seed_everything(cfg.seed, workers=True)
    model = load_lit_module(cfg.ckpt_path, audio_controls=list(cfg.audio_controls))
    with open_dict(cfg):
        cfg.model.scale = model.net.scale
        if model.audio_features is not None:
            cfg.audio = model.model_config["audio_features"]
    datamodule = hydra.utils.instantiate(cfg.data)
    trainer = hydra.utils.instantiate(
        cfg.trainer, logger=instantiate_list(cfg.get("logger")) or False
    )
    trainer.test(model, datamodule=datamodule)
    metrics = scalar_metrics(trainer.callback_metrics)
    if trainer.is_global_zero:
        write_evaluation_record(cfg.paths.output_dir, cfg.ckpt_path, metrics)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    from avvsr.cli.common import exit_on_bad_input

    with exit_on_bad_input("avvsr-eval"):
        evaluate(cfg)


if __name__ == "__main__":
    main()
