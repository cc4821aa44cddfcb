"""The LightningModule and the Hydra entry points on a small synthetic set."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from avvsr.data.audio_features import SILENCE_LOG_MEL
from avvsr.lit_module import charbonnier_loss
from avvsr.run_record import RECORD_NAME, RunRecord
from helpers.training import compose_train, config_options


def read_metrics(workdir: Path) -> dict:
    """The run record avvsr-train wrote in ``workdir/out``, read as the report reads it."""
    return vars(RunRecord.read(workdir / "out" / RECORD_NAME))


@pytest.mark.parametrize("backbone", ["basicvsr_tiny", "basicvsrpp_tiny", "edvr_tiny"])
def test_train_then_test_records_metrics_with_every_audio_control(
    synth_root: Path, tmp_path: Path, backbone: str
) -> None:
    from avvsr.train import train

    cfg = compose_train(synth_root, tmp_path, [f"model/backbone={backbone}", "model/fusion=msavf"])
    train(cfg)
    record = read_metrics(tmp_path)
    assert (record["backbone"], record["fusion"], record["steps"]) == (backbone, "msavf-s3", 4)
    metrics = record["metrics"]
    for control in ("true", "shuffled", "silent"):
        for name in ("psnr", "psnr_y", "ssim_y", "psnr_y_inside", "psnr_y_outside", "mask_auc",
                     "psnr_y_distractors", "source_vs_distractor_auc"):
            assert torch.isfinite(torch.tensor(metrics[f"test/{control}/{name}"])), (control, name)
    assert metrics["test/params"] > 0 and metrics["test/ms_per_frame"] > 0
    assert Path(record["best_checkpoint"]).is_file()


def test_a_plain_backbone_is_tested_with_true_audio_only(synth_root: Path, tmp_path: Path) -> None:
    from avvsr.train import train

    train(compose_train(synth_root, tmp_path, ["model/fusion=none"]))
    record = read_metrics(tmp_path)
    assert record["fusion"] == "none"
    assert "test/true/psnr_y" in record["metrics"]
    assert not any(k.startswith(("test/shuffled", "test/silent")) for k in record["metrics"])
    assert "test/true/mask_auc" not in record["metrics"]


def test_a_checkpoint_evaluates_with_the_audio_controls(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """avvsr-eval of an avvsr-train checkpoint measures what the training's test did; its
    result, beside the run in a study's folder, is left out of the study with a warning."""
    from avvsr.evaluate import evaluate
    from avvsr.report import load_runs
    from avvsr.train import train

    train(compose_train(synth_root, tmp_path / "train"))
    ckpt = read_metrics(tmp_path / "train")["best_checkpoint"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        evaluate(compose_train(
            synth_root, tmp_path / "eval", [f"ckpt_path={ckpt}", "threads=1"], config_name="eval"
        ))
        assert torch.get_num_threads() == 1  # as avvsr-train, for evaluations side by side
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((tmp_path / "eval" / "out" / RECORD_NAME).read_text())["metrics"]
    trained = read_metrics(tmp_path / "train")["metrics"]
    capsys.readouterr()
    assert [run.path for run in load_runs(tmp_path)] == [tmp_path / "train" / "out"]
    assert f"{tmp_path / 'eval' / 'out' / RECORD_NAME}: an avvsr-eval result" in (
        capsys.readouterr().err
    )
    for control in ("true", "shuffled", "silent"):
        assert metrics[f"test/{control}/psnr_y"] == pytest.approx(
            trained[f"test/{control}/psnr_y"], abs=1e-6
        )


def test_a_wrong_config_value_fails_before_training(synth_root: Path, tmp_path: Path) -> None:
    from hydra.errors import InstantiationException

    from avvsr.train import train

    cfg = compose_train(synth_root, tmp_path, ["+model.backbone.num_feets=3"])
    with pytest.raises(InstantiationException, match="num_feets"):
        train(cfg)
    assert not (tmp_path / "out" / "checkpoints").exists()


LOCALISATION_TERMS = [  # every model/localisation option but none
    term for term in config_options("model/localisation") if term != "none"
]
# Each option as avvsr-train runs it, and the synchrony terms kept off the visual features:
# (option, overrides, the label of its runs).
TERM_RUNS = [
    *((term, [], term) for term in LOCALISATION_TERMS),
    ("syncteach", ["model.localisation.teaches=audio"], "syncteachaudio"),
    ("synccontrast", ["model.localisation.teaches=projections"], "synccontrastprojections"),
]


@pytest.mark.parametrize(("term", "overrides", "label"), TERM_RUNS)
def test_the_localisation_term_trains_logs_and_names_its_run(
    synth_root: Path, tmp_path: Path, term: str, overrides: list[str], label: str
) -> None:
    from avvsr.checkpoint import load_lit_module
    from avvsr.train import train

    train(compose_train(synth_root, tmp_path, [
        f"model/localisation={term}", *overrides, "trainer.max_steps=2", "test=false",
    ]))
    record = read_metrics(tmp_path)
    assert (record["fusion"], record["steps"]) == (f"msavf-s3-{label}", 2)
    assert record["run_name"] == f"basicvsr_tiny-msavf-s3-{label}-seed0"
    assert np.isfinite(record["metrics"]["train/localisation_loss"])
    # A trained model loads without its training loss (and with the same weights).
    assert load_lit_module(record["best_checkpoint"]).model_config.get("localisation") is None


def test_a_model_trained_with_a_scalar_rate_reloads_with_it(
    synth_root: Path, tmp_path: Path
) -> None:
    """The rate is part of the stored model: a checkpoint written by ``avvsr-train`` with
    ``model.fusion.scalar_rate=10`` reloads with the same rate, so with the same masks."""
    from avvsr.checkpoint import load_lit_module
    from avvsr.train import train

    train(compose_train(synth_root, tmp_path, [
        "model.fusion.scalar_rate=10", "trainer.max_steps=2", "test=false",
    ]))
    checkpoint = read_metrics(tmp_path)["best_checkpoint"]
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    fusion = load_lit_module(checkpoint).net.fusion
    for scale, attention in enumerate(fusion.fuse):
        assert attention.scalar_rate == 10
        stored = state[f"net.fusion.fuse.{scale}.log_temperature"]
        assert attention.temperature.item() == pytest.approx((10 * stored).exp().item())


def test_a_model_whose_masks_see_the_synchrony_trains_and_reloads_with_it(
    synth_root: Path, tmp_path: Path
) -> None:
    """``model/fusion=msavf_sync``: avvsr-train names the run after it, its checkpoint
    reloads with the synchrony map and each scale's stored weight, and avvsr-export and
    avvsr-upscale take it to a video file (in overlapping windows of frames)."""
    from avvsr.checkpoint import load_lit_module
    from avvsr.cli import export as export_cli
    from avvsr.cli import upscale as upscale_cli
    from avvsr.data.io import probe_video, read_frames
    from avvsr.train import train

    train(compose_train(synth_root, tmp_path, [
        "model/fusion=msavf_sync", "trainer.max_steps=2", "test=false",
    ]))
    record = read_metrics(tmp_path)
    assert record["fusion"] == "msavf-s3-sync"
    state = torch.load(record["best_checkpoint"], map_location="cpu", weights_only=True)
    fusion = load_lit_module(record["best_checkpoint"]).net.fusion
    assert fusion.synchrony.window == 9
    for scale, attention in enumerate(fusion.fuse):
        stored = state["state_dict"][f"net.fusion.fuse.{scale}.stored_synchrony_weight"]
        assert attention.synchrony_weight.item() == pytest.approx(stored.item())
    exported = tmp_path / "sync.safetensors"
    assert export_cli.main([record["best_checkpoint"], str(exported)]) == 0
    video, upscaled = synth_root / "test" / "0000.mp4", tmp_path / "upscaled.mp4"
    assert upscale_cli.main([str(video), str(upscaled), "--ckpt", str(exported), "--chunk", "6",
                             "--overlap", "2", "--quiet"]) == 0
    frames, source = read_frames(upscaled), probe_video(video)
    assert frames.shape[0] == source.num_frames and frames.shape[1] == 4 * source.height


def one_training_batch(synth_root: Path, tmp_path: Path) -> dict:
    import hydra

    datamodule = hydra.utils.instantiate(compose_train(synth_root, tmp_path).data)
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


def logged_training_step(module, batch: dict) -> tuple[torch.Tensor, dict]:
    """The loss of ``module.training_step`` on ``batch`` (audio dropout drawn from seed 0) and
    what the step logged."""
    logged = {}
    module.log = lambda name, value, **_: logged.__setitem__(name, value)
    torch.manual_seed(0)
    return module.training_step(batch, 0), logged


@pytest.mark.parametrize("term_option", LOCALISATION_TERMS)
def test_a_training_step_adds_the_weighted_term_only_when_it_is_on(
    synth_root: Path, tmp_path: Path, term_option: str
) -> None:
    from avvsr.config import build_lit_module

    batch = one_training_batch(synth_root, tmp_path)
    models = {}
    for option in ("none", term_option):
        torch.manual_seed(1)  # the same weights: the term adds none
        models[option] = build_lit_module(
            compose_train(synth_root, tmp_path, [f"model/localisation={option}"]).model
        )
    assert compose_train(synth_root, tmp_path).model.localisation is None  # off by default
    off, logged_off = logged_training_step(models["none"], batch)
    on, logged_on = logged_training_step(models[term_option], batch)
    # Off: the reconstruction loss of the same forward pass (same audio dropout) and nothing else.
    torch.manual_seed(0)
    dropped = torch.rand(batch["audio"].shape[0]) < models["none"].audio_dropout
    audio = torch.where(dropped[:, None, None, None],
                        torch.full_like(batch["audio"], SILENCE_LOG_MEL), batch["audio"])
    sr = models["none"](batch["lq"], audio).sr
    assert torch.equal(off, charbonnier_loss(sr, batch["gt"], models["none"].loss_eps))
    assert set(logged_off) == {"train/loss"}
    term = logged_on["train/localisation_loss"]
    assert term > 0
    weight = models[term_option].localisation.weight
    assert on.item() == pytest.approx(off.item() + weight * term.item(), rel=1e-6)


@pytest.mark.parametrize("term", LOCALISATION_TERMS)
def test_the_localisation_term_needs_attention_masks(
    synth_root: Path, tmp_path: Path, term: str
) -> None:
    from avvsr.config import build_lit_module

    for fusion in ("none", "concat"):
        cfg = compose_train(synth_root, tmp_path, [f"model/fusion={fusion}",
                                                   f"model/localisation={term}"])
        with pytest.raises(ValueError, match="attention"):
            build_lit_module(cfg.model)


def test_a_tiny_model_overfits_one_synthetic_batch(synth_root: Path, tmp_path: Path) -> None:
    import hydra

    cfg = compose_train(synth_root, tmp_path, ["model.audio_dropout=0"])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    net = hydra.utils.instantiate(cfg.model).net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(100):
        loss = charbonnier_loss(net(batch["lq"], batch["audio"]).sr, batch["gt"], 1e-3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, losses


def test_offline_wandb_run_holds_metrics_and_images(synth_root: Path, tmp_path: Path) -> None:
    from avvsr.train import train

    train(compose_train(synth_root, tmp_path, ["logger=wandb", "experiment_name=unit"]))
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    # An offline run keeps its history in the run's transaction log (protobuf records, metric
    # values as JSON text): each final metric must be there with the value the run measured.
    (log_file,) = runs[0].glob("run-*.wandb")
    # W&B's service process writes the log after finish() returns; on a busy machine the
    # file can still be a header (seen under load), so wait for its last record.
    deadline = time.monotonic() + 120
    while b"test/silent/psnr_y_inside" not in log_file.read_bytes():
        assert time.monotonic() < deadline, "W&B never wrote the run's records"
        time.sleep(0.5)
    records = log_file.read_bytes()
    metrics = read_metrics(tmp_path)["metrics"]
    for key in ("train/loss", "val/psnr_y", "test/true/psnr_y", "test/silent/psnr_y_inside"):
        assert key.encode() in records, key
        assert json.dumps(metrics[key]).encode() in records, (key, metrics[key])
    assert b"unit" in records  # the experiment name, W&B's group
    images = list((runs[0] / "files" / "media" / "images").rglob("*.png"))
    assert images, "no sample/attention-mask image was logged"


def test_the_report_figure_draws_each_msavf_run_with_its_masks(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from omegaconf import OmegaConf
    from PIL import Image

    from avvsr.report import load_runs
    from avvsr.reproduce import attention_figure
    from avvsr.train import train
    from avvsr.visualization import DISTRACTOR_COLOUR, OUTLINE_COLOUR

    for fusion in ("none", "msavf"):
        workdir = tmp_path / fusion
        cfg = compose_train(synth_root, workdir, [f"model/fusion={fusion}"])
        train(cfg)
        (workdir / "out" / ".hydra").mkdir()
        OmegaConf.save(cfg, workdir / "out" / ".hydra" / "config.yaml")  # as Hydra saves it
    figure = tmp_path / "masks.png"
    assert not attention_figure(load_runs(tmp_path / "none"), figure)
    assert not figure.exists()
    assert attention_figure(load_runs(tmp_path), figure, clips=2)
    # A checkpoint the loader refuses is left out with a warning naming it; nothing is drawn
    # from it, and the report goes on.
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    refused = [dataclasses.replace(run, best_checkpoint=str(junk))
               for run in load_runs(tmp_path / "msavf")]
    assert not attention_figure(refused, tmp_path / "refused.png")
    warning = capsys.readouterr().err
    assert "leaves out" in warning and "junk.ckpt" in warning
    # One row per test clip, 96x96 frames enlarged x3: LR | HR | output and the masks of
    # MS-AVF's 3 scales with true audio | the same with shuffled audio; titles above.
    pixels = np.asarray(Image.open(figure).convert("RGB"))
    assert pixels.shape[1] >= 10 * 3 * 96 and pixels.shape[0] >= 2 * 3 * 96
    # The source (green) and distractor (blue) outlines are drawn.
    for colour in (OUTLINE_COLOUR, DISTRACTOR_COLOUR):
        painted = (pixels == np.round(np.asarray(colour) * 255)).all(axis=-1)
        assert painted.sum() > 100, colour


@pytest.mark.parametrize("override", ["logger=none", "debug=fast_dev_run"])
def test_a_run_without_a_logger_trains(synth_root: Path, tmp_path: Path, override: str) -> None:
    """The learning-rate monitor needs a logger; without one it is left out, not an error."""
    from avvsr.train import train

    metrics = train(compose_train(synth_root, tmp_path, [override, "trainer.max_steps=1"]))
    assert "train/loss" in metrics
