"""The entry points as users run them, in subprocesses: resume after a kill, DDP on 2 CPU
processes, and a multirun sweep aggregated into a table. Slow (minutes)."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from avvsr.config import compose
from avvsr.data.synthetic import load_manifest
from avvsr.report import load_runs
from media import write_ave_folder

pytestmark = pytest.mark.slow


def paths(synth_root: Path, workdir: Path) -> list[str]:
    return [
        f"paths.root_dir={workdir}",
        f"paths.data_dir={synth_root.parent}",
        f"data.train.root={synth_root}",  # the study (experiment=...) may name another set
        f"paths.cache_dir={workdir / 'cache'}",
        "data.num_workers=0",
    ]


def train_overrides(synth_root: Path, workdir: Path, *overrides: str) -> list[str]:
    """Quick-run overrides for ``avvsr-train`` on the set at ``synth_root``."""
    return [
        *paths(synth_root, workdir),
        "data.batch_size=2",
        "trainer.check_val_every_n_epoch=1",
        "model.warmup_steps=1",
        *overrides,
    ]


def train_command(synth_root: Path, workdir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "avvsr.train", *train_overrides(synth_root, workdir, *overrides)]


def eval_command(synth_root: Path, workdir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "avvsr.evaluate", *paths(synth_root, workdir), *overrides]


def env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_a_killed_run_resumes_from_last_and_finishes_its_steps(
    synth_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    command = train_command(
        synth_root,
        tmp_path,
        f"hydra.run.dir={run_dir}",
        "trainer.max_steps=12",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "trainer.check_val_every_n_epoch=100",
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists(), "no checkpoint before the kill"
    interrupted_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < interrupted_at < 12
    assert not (run_dir / "metrics.json").exists()

    subprocess.run([*command, "ckpt_path=last"], env=env(), check=True, capture_output=True)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["steps"] == 12
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 12


def test_ddp_on_two_cpu_processes_matches_one_process(synth_root: Path, tmp_path: Path) -> None:
    common = ["trainer.max_steps=6", "model/fusion=msavf"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run(
        train_command(synth_root, tmp_path, f"hydra.run.dir={single}", *common),
        env=env(),
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        train_command(
            synth_root,
            tmp_path,
            f"hydra.run.dir={ddp}",
            *common,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "data.batch_size=1",
        ),
        env=env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(tmp_path.glob("logs/**/metrics.json")), "DDP must not create extra run folders"
    one = json.loads((single / "metrics.json").read_text())["metrics"]
    two = json.loads((ddp / "metrics.json").read_text())["metrics"]
    # Same global batch (1 clip x 2 processes vs 2 clips), same steps: the models differ only
    # by sampling order, and the test metrics are synchronised over both processes' clips.
    for key in ("test/true/psnr_y", "test/silent/psnr_y"):
        assert abs(one[key] - two[key]) < 1.0, (key, one[key], two[key])

    # The same checkpoint evaluated by 2 processes and by 1 gives the same numbers.
    ckpt = json.loads((single / "metrics.json").read_text())["best_checkpoint"]
    evals = {}
    for name, extra in (
        ("one", []),
        (
            "two",
            [
                "trainer=ddp",
                "trainer.accelerator=cpu",
                "trainer.devices=2",
                "trainer.precision=32-true",
            ],
        ),
    ):
        folder = tmp_path / f"eval_{name}"
        result = subprocess.run(
            eval_command(
                synth_root,
                tmp_path,
                f"hydra.run.dir={folder}",
                f"ckpt_path={ckpt}",
                "data.eval_batch_size=1",
                *extra,
            ),
            env=env(),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        evals[name] = json.loads((folder / "metrics.json").read_text())["metrics"]
    for key, value in evals["one"].items():
        if key.startswith("test/") and "ms_per_frame" not in key:
            assert evals["two"][key] == pytest.approx(value, abs=1e-4), key


def test_a_sweep_runs_the_grid_and_reports_a_table(synth_root: Path, tmp_path: Path) -> None:
    """The runs avvsr-train -m writes, reported as ``avvsr.reproduce --report-only`` does:
    rows, the paired columns against no fusion and concat, the sweep's command and time."""
    from avvsr.reproduce import main as reproduce

    sweep_dir = tmp_path / "sweep"
    command = train_command(
        synth_root,
        tmp_path,
        "experiment=av_ablation",
        "trainer.max_steps=2",
        "model/fusion=none,concat,msavf",
        "seed=0,1",
        f"hydra.sweep.dir={sweep_dir}",
    )
    command.insert(3, "-m")  # Hydra's flags go before the overrides
    result = subprocess.run(command, env=env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run 6/6" in result.stdout + result.stderr  # the sweep's progress line
    runs = load_runs(sweep_dir)
    assert sorted((r.fusion, r.seed) for r in runs) == [
        ("concat", 0), ("concat", 1), ("msavf-s3", 0), ("msavf-s3", 1), ("none", 0), ("none", 1),
    ]
    reproduce(["--report-only", str(sweep_dir), f"--out-dir={tmp_path / 'report'}"])
    text = (tmp_path / "report" / "results.md").read_text()
    assert "| basicvsr_tiny | none | 2 |" in text and "| basicvsr_tiny | concat | 2 |" in text
    assert "avvsr-train -m" in text and "min from the start of the sweep" in text
    header = next(line for line in text.splitlines() if line.startswith("| backbone"))
    fused = next(line for line in text.splitlines() if "| msavf-s3 |" in line)
    cells = dict(zip(header.split("|"), fused.split("|"), strict=True))
    inside = {(r.fusion, r.seed): r.metrics["test/true/psnr_y_inside"] for r in runs}
    gains = [inside[("msavf-s3", seed)] - inside[("concat", seed)] for seed in (0, 1)]
    assert cells[" Δ PSNR-Y in source vs concat "].strip() == (
        f"{statistics.fmean(gains):.2f} ± {statistics.stdev(gains):.2f}"
    )


def test_the_paper_profile_reproduces_a_table_of_its_backbones_on_ave(tmp_path: Path) -> None:
    """``make reproduce-table PROFILE=paper`` (paper-size models, bf16 autocast) on a small
    AVE-shaped set, narrowed to one step of MS-AVF on each backbone, on the CPU: no synthetic
    set is generated, every backbone fits and tests with the audio controls, and the report
    lists them. CUDA itself is not exercised here."""
    ave_root = write_ave_folder(
        tmp_path / "data" / "AVE_Dataset",
        {"train": ["Dog&v1&good&0&2"], "val": ["Cat&v2&good&0&1"], "test": ["Cat&v2&good&0&1"]},
        num_frames=20, height=32, width=32,
    )
    synth_root, out_dir, runs_dir = tmp_path / "synth_av", tmp_path / "report", tmp_path / "runs"
    overrides = train_overrides(
        ave_root,
        tmp_path,
        "data=ave",
        "model/backbone=basicvsr,basicvsrpp,edvr",  # the grid's axes, one fusion and seed
        "model/fusion=msavf",
        "seed=0",
        "trainer.accelerator=cpu",
        "trainer.max_steps=1",
        "data.batch_size=1",
        "data.crop_size=32",
        "data.clip_len=3",
        "data.eval_max_frames=3",
        "logger=csv",
    )
    command = [
        sys.executable, "-m", "avvsr.reproduce", "--profile", "paper", f"--data-root={synth_root}",
        f"--out-dir={out_dir}", f"--runs-dir={runs_dir}", *overrides,
    ]
    result = subprocess.run(command, env=env(), capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not synth_root.exists(), "the paper profile must not generate the synthetic set"
    runs = load_runs(runs_dir)
    assert sorted((run.backbone, run.fusion) for run in runs) == [
        ("basicvsr", "msavf-s3"), ("basicvsrpp", "msavf-s3"), ("edvr", "msavf-s3"),
    ]
    paper_encoder = compose("train", ["model/audio_encoder=paper"]).model.audio_encoder
    for run in runs:
        assert run.metrics["test/params"] > 1_000_000  # paper size, not a tiny config
        for control in ("true", "shuffled", "silent"):
            assert math.isfinite(run.metrics[f"test/{control}/psnr_y"]), control
        config = OmegaConf.load(run.path / ".hydra" / "config.yaml")
        assert config.trainer.precision == "bf16-mixed" and config.trainer.max_steps == 1
        assert config.model.audio_encoder == paper_encoder
    report = (out_dir / "results.md").read_text()
    for run in runs:
        assert f"| {run.backbone} | msavf-s3 | 1 |" in report, run.backbone
    assert (out_dir / "attention_masks.png").is_file()


def test_reproduce_trains_on_the_synthetic_set_it_generates(tmp_path: Path) -> None:
    """``--data-root``: the study's synthetic set (made small by overrides) is generated there
    and the runs read it; options may come between the Hydra overrides."""
    synth_root, runs_dir = tmp_path / "elsewhere" / "synth", tmp_path / "runs"
    small = ["synthetic_set.num_train=2", "synthetic_set.num_val=1", "synthetic_set.num_test=1",
             "synthetic_set.num_frames=6"]
    command = [
        sys.executable, "-m", "avvsr.reproduce", "--profile", "quick",
        f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", *small,
        f"--data-root={synth_root}", f"--out-dir={tmp_path / 'report'}", f"--runs-dir={runs_dir}",
        "model/fusion=none", "seed=0", "trainer.max_steps=1", "model.warmup_steps=1",
    ]
    result = subprocess.run(command, env=env(), capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_manifest(synth_root).params["num_train"] == 2  # tests/test_profiles.py: the rest
    (run_config,) = runs_dir.rglob(".hydra/config.yaml")
    assert Path(OmegaConf.load(run_config).data.train.root) == synth_root
