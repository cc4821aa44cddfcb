"""A non-editable install (a wheel in a fresh venv) finds its configs, trains, upscales and
takes a user's own config folder, run from another directory. Slow (a wheel build, a venv,
two short trainings)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from media import write_test_video

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def not_sources(folder: str, names: list[str]) -> set[str]:
    """What a wheel build leaves out: the checkout's own generated folders (at its top level
    only: ``src/avvsr/data`` is code) and caches anywhere."""
    top = {".git", ".venv", ".cache", "data", "logs", "build"} if Path(folder) == REPO else set()
    return {name for name in names
            if name in top or name == "__pycache__" or name.endswith(".egg-info")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bin/`` of a fresh venv holding avvsr from a wheel; its dependencies are this test
    environment's packages (a path line, not installed again: no network, one torch)."""
    work = tmp_path_factory.mktemp("install")
    run = lambda *command: subprocess.run(command, check=True, capture_output=True, text=True)  # noqa: E731
    # Built from a copy: setuptools writes its build/ folder next to the sources.
    source = work / "source"
    shutil.copytree(REPO, source, ignore=not_sources)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "-w", str(work / "dist"), str(source))
    (wheel,) = (work / "dist").glob("avvsr-*.whl")
    run(sys.executable, "-m", "venv", "--without-pip", str(work / "venv"))
    python = work / "venv" / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
        "--no-index", str(wheel))
    venv_site = run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    # Appended after the venv's own site-packages, and its .pth files are not run: this
    # environment's editable avvsr stays invisible, the wheel's avvsr is the one imported.
    (Path(venv_site.stdout.strip()) / "test-deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return work / "venv" / "bin"


def command(bin_dir: Path, name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(bin_dir / name), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_installed_package_imports_from_its_own_files(installed: Path, tmp_path: Path):
    result = command(installed, "python", "-c", "import avvsr.config as c; print(c.CONFIG_DIR)",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config_dir = Path(result.stdout.strip())
    assert not config_dir.is_relative_to(REPO) and (config_dir / "train.yaml").is_file()


def test_a_wheel_install_trains_and_upscales_from_another_directory(
    installed: Path, tmp_path: Path
) -> None:
    small = ["--num-train", "2", "--num-val", "1", "--num-test", "1", "--num-frames", "6"]
    synth = command(installed, "avvsr-synth", "--out", "data/synth_av", "--no-progress", *small,
                    cwd=tmp_path)
    assert synth.returncode == 0, synth.stderr[-2000:]
    quick = ["data.batch_size=1", "model.backbone.num_feat=8", "trainer.max_steps=2",
             "hydra.run.dir=run"]
    dry = command(installed, "avvsr-train", "debug=fast_dev_run", *quick[:2], cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    trained = command(installed, "avvsr-train", *quick, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.ckpt")  # what a user resumes
    video = write_test_video(tmp_path / "clip.mp4", num_frames=4, height=16, width=16)
    upscaled = command(installed, "avvsr-upscale", str(video), "out.mp4", "--ckpt", checkpoint,
                       "--quiet", cwd=tmp_path)
    assert upscaled.returncode == 0, upscaled.stderr[-2000:]
    assert (tmp_path / "out.mp4").is_file()


def test_a_user_config_folder_adds_experiments(installed: Path, tmp_path: Path) -> None:
    experiment = tmp_path / "my_configs" / "experiment" / "mine.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text("# @package _global_\nexperiment_name: mine\nmodel:\n  lr: 0.123\n")
    shown = command(installed, "avvsr-train", "--config-dir", "my_configs", "experiment=mine",
                    "--cfg", "job", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "experiment_name: mine" in shown.stdout and "lr: 0.123" in shown.stdout
