"""Shared by the training tests: the repo's Hydra configs composed for a quick CPU run in a
temporary folder, reading a synthetic set such as the ``synth_root`` fixture of
``tests/conftest.py``."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from avvsr.config import CONFIG_DIR


def compose_train(
    data_root: Path, workdir: Path, overrides: list[str] = (), config_name: str = "train"
) -> DictConfig:
    """The ``train`` (or ``eval``) config as ``avvsr-train`` would compose it, reading the set
    at ``data_root`` (a folder named ``synth_av``) and writing under ``workdir``; quick trainer
    settings."""
    quick = [
        f"paths.root_dir={workdir}",
        f"paths.data_dir={data_root.parent}",
        f"paths.cache_dir={workdir / 'cache'}",
        f"paths.output_dir={workdir / 'out'}",
        "trainer.max_steps=4",
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
        "++trainer.enable_model_summary=false",
        "data.batch_size=2",
        "data.num_workers=0",
    ]
    if config_name == "train":
        quick.append("model.warmup_steps=1")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=[*quick, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as under @hydra.main: the job's config has no hydra node
    return cfg


def config_options(group: str) -> list[str]:
    """The options of a config group (e.g. ``model/localisation``), as a user names them."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
