"""The reproduce profiles' sweeps and the scale-out configs compose into what they promise:
every grid point of every ``conf/sweep/*.yaml`` builds its model (tiny on the CPU profiles,
paper-size on ``paper``), ``trainer=ddp_multinode`` reads the SLURM allocation, and
``hydra/launcher=slurm`` builds the submitit launcher. Nothing here trains; the paper profile's
runs train on the CPU in tests/test_multiprocess.py."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from avvsr.config import CONFIG_DIR, compose

CONF_DIR = Path(CONFIG_DIR)
SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
# The tiny configs train on a 2-core CPU; the paper sizes are millions of parameters.
TINY_MAX_PARAMS = 1_000_000


def compose_study(*overrides: str) -> DictConfig:
    return compose("train", ["experiment=av_ablation", *overrides], hydra_node=True)


def grid_points(sweep: str) -> list[list[str]]:
    """The overrides of every run ``avvsr-train -m experiment=av_ablation sweep=<sweep>``
    launches, seeds left out: the product of each parameter's values as Hydra's override
    parser expands them."""
    params = compose_study(f"sweep={sweep}").hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides(
        [f"{key}={value}" for key, value in params.items() if key != "seed"]
    )
    values = [
        [f"{o.key_or_group}={v}" for v in (
            o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()]
        )]
        for o in parsed
    ]
    return [list(point) for point in itertools.product(*values)]


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_grid_point_of_every_profile_builds_its_model(sweep: str) -> None:
    points = grid_points(sweep)
    assert points, f"conf/sweep/{sweep}.yaml sweeps nothing"
    for point in points:
        cfg = compose_study(f"sweep={sweep}", *point)
        net = instantiate(cfg.model).net
        params = sum(p.numel() for p in net.parameters())
        choice = dict(p.split("=", 1) for p in point)
        assert type(net.backbone).__name__ == cfg.model.backbone._target_.rsplit(".", 1)[-1]
        assert (net.fusion is None) == (choice["model/fusion"] == "none"), point
        if sweep == "paper":
            assert params > TINY_MAX_PARAMS, (point, params)
            assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
        else:
            assert params < TINY_MAX_PARAMS, (point, params)
            assert cfg.trainer.accelerator == "cpu"


def test_multinode_trainer_reads_the_slurm_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    trainer = compose_study("trainer=ddp_multinode").trainer
    assert (trainer.num_nodes, trainer.devices, trainer.strategy) == (2, 4, "ddp")
    assert trainer.accelerator == "gpu" and trainer.sync_batchnorm


def test_multinode_trainer_defaults_to_one_node_outside_slurm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SLURM_NNODES", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    trainer = compose_study("trainer=ddp_multinode").trainer
    assert (trainer.num_nodes, trainer.devices) == (1, 1)


def test_slurm_launcher_config_builds_the_submitit_launcher() -> None:
    cfg = compose_study(
        "sweep=paper", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=4",
    )
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == 4  # one task per GPU, as Lightning's DDP expects
    assert (launcher.partition, launcher.max_num_timeout) == ("gpu", 3)
    HydraConfig.instance().set_config(cfg)  # its submitit folder lies in the sweep folder
    built = instantiate(launcher)
    assert type(built).__name__ == "SlurmLauncher"
    assert built.params["gpus_per_node"] == 4 and built.params["timeout_min"] == 1440
    assert built.params["submitit_folder"].startswith(cfg.hydra.sweep.dir)


def test_reproduce_generates_the_set_the_study_trains_on(tmp_path: Path) -> None:
    """``make reproduce-table`` generates the study's set where its data config reads it, with
    the generator parameters that config names (sizes shrunk here by overrides, as a user may);
    sweep lists among the overrides do not reach this single composition."""
    from avvsr.data.synthetic import load_manifest
    from avvsr.reproduce import ensure_synthetic_data

    study = compose_study("paths.root_dir=unused", "paths.output_dir=unused")
    small = ["synthetic_set.num_train=2", "synthetic_set.num_val=1", "synthetic_set.num_test=1",
             "synthetic_set.num_frames=4"]
    root = ensure_synthetic_data(
        "av_ablation", [f"paths.root_dir={tmp_path}", *small, "model/fusion=none,msavf"]
    )
    assert root == tmp_path / "data" / Path(study.data.train.root).name
    params = load_manifest(root).params
    assert (params["num_train"], params["num_val"], params["num_frames"]) == (2, 1, 4)
    for name, value in study.synthetic_set.items():
        if name not in ("num_train", "num_val", "num_test", "num_frames"):
            assert params[name] == value, name
    # Issue 14: at least two objects, the silent ones of another family, a source that covers
    # at most 35% of the frame.
    synth = study.synthetic_set
    assert synth.num_objects >= 2 and synth.num_sounding == 1
    assert (synth.family_cue, synth.distractors) == ("hue", "other_family")
    assert math.pi * synth.object_radius_max_px**2 <= 0.35 * synth.height * synth.width


def test_a_mistyped_synthetic_set_parameter_fails_when_composed() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="num_objcts"):
        compose_study("synthetic_set.num_objcts=2")


def test_reproduce_generates_nothing_when_the_study_reads_real_data(tmp_path: Path) -> None:
    from avvsr.reproduce import ensure_synthetic_data

    overrides = [f"paths.root_dir={tmp_path}", "data=folder", f"data.train.root={tmp_path / 'v'}"]
    assert ensure_synthetic_data("av_ablation", overrides) is None
    assert not any(tmp_path.iterdir())


def readme_overrides() -> set[tuple[str, ...]]:
    """The overrides the README shows, each with the config-group choices shown beside it in
    the same code span or command line (``model/backbone=edvr model.backbone.clip_ends=...``);
    the placeholder ``N`` stands for a number, ``DIR``, ``FILE``, ``<run>`` for a path."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", readme, flags=re.DOTALL)
    spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", readme)
    spans += [line for block in blocks for line in block.splitlines()]
    key = r"(?<![\w./-])(\+{0,2}(?:data|audio|model|trainer)\.[\w.]+)=([^\s`|)]+)"
    group = r"(?<![\w./-])(model/\w+|experiment|trainer)=(\w+)"

    def example(value: str) -> str:
        if value == "N":
            return "2"
        return "/tmp/x" if re.fullmatch(r"[A-Z]{3,}|.*<.*", value) else value

    found = set()
    for span in spans:
        choices = tuple(f"{name}={value}" for name, value in re.findall(group, span))
        for name, value in re.findall(key, span):
            found.add((*choices, f"{name}={example(value)}"))
    return found


@pytest.mark.parametrize(
    "data", sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml") if p.stem != "base")
)
def test_every_override_the_readme_shows_composes_for_every_data_config(data: str) -> None:
    shown = readme_overrides()
    assert ("data.audio_policy=require",) in shown  # the parsing finds what the README shows
    for overrides in sorted(shown):
        cfg = compose_study(f"data={data}", *overrides)
        key = overrides[-1].split("=", 1)[0].lstrip("+")
        assert OmegaConf.select(cfg, key) is not None or overrides[-1].endswith("=null"), overrides


def test_every_profile_runs_sweeps_that_exist() -> None:
    from avvsr.reproduce import PROFILES

    for profile, sweeps in PROFILES.items():
        assert sweeps and set(sweeps) <= set(SWEEPS), (profile, sweeps)
