"""The study's diagnostics (experiments/av_ablation/diagnostics/) rest on assumptions that are
checked here: re-rendering a synthetic clip reproduces its decoded video, the class-oracle patch
gives every item the code of its clip's sounding class, and the learnability probe's patches carry
the coded grating where it scores them and nowhere else."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from avvsr.data import datasets, synthetic
from avvsr.data.audio_features import SILENCE_LOG_MEL
from avvsr.data.io import read_frames

DIAGNOSTICS = Path(__file__).resolve().parents[1] / "experiments" / "av_ablation" / "diagnostics"


@pytest.fixture(autouse=True)
def _diagnostics_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """As when a diagnostic runs as a script: its own folder comes first on the path."""
    monkeypatch.syspath_prepend(str(DIAGNOSTICS))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, DIAGNOSTICS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_renders_by_class_reproduce_the_video_and_differ_only_in_the_sounding_object(
    synth_root: Path,
) -> None:
    harmonic_error = load_script("harmonic_error")
    manifest = synthetic.load_manifest(synth_root)
    config = synthetic.SynthConfig(**manifest.params)
    spec = synthetic.sample_clip(config, "test", 0)
    sounding = next(o for o in spec.objects if o.sounding)
    renders, labels = harmonic_error.renders_by_class(spec, sounding.id)
    decoded = harmonic_error.luma(read_frames(synth_root / "test/0000.mp4"))
    own = renders[sounding.class_name]
    assert np.sqrt(np.mean((own - decoded) ** 2)) < 1.0  # grey levels, lossless encode
    outside = labels != sounding.id
    for name, render in renders.items():
        assert np.array_equal(render[outside], own[outside])
        if name != sounding.class_name:
            assert np.abs(render - own)[~outside].max() > 2.0


@pytest.mark.parametrize("class_detail", synthetic.CLASS_DETAILS)
def test_the_render_without_class_detail_is_what_every_class_shares(class_detail: str) -> None:
    """With harmonics it is the fundamental-only (``sine``) render in the sounding object;
    with lattices each class's render differs from it inside the objects only, by the
    lattice."""
    harmonic_error = load_script("harmonic_error")
    config = synthetic.SynthConfig(num_frames=2, class_detail=class_detail)
    spec = synthetic.sample_clip(config, "test", 0)
    sounding = next(o for o in spec.objects if o.sounding)
    renders, labels = harmonic_error.renders_by_class(spec, sounding.id)
    plain = harmonic_error.without_class_detail(spec)
    if class_detail == "harmonics":
        inside = labels == sounding.id
        assert np.array_equal(plain[inside], renders["sine"][inside])
        return
    background = labels == 0
    for render in renders.values():
        difference = np.abs(render - plain)
        assert difference[background].max() <= 1.0  # rounding, and the antialiased rims
        assert difference[labels == sounding.id].max() > 10.0  # the lattice


def test_class_blindness_measures_what_the_lr_frames_keep_of_the_class(tmp_path: Path) -> None:
    """On written and decoded clips, the lattice leaves the LR frames of a family's classes
    nearly equal and their HR frames far apart; the harmonics leave more at LR."""
    class_blindness = load_script("class_blindness")
    families = synthetic.SynthConfig(num_frames=2, num_classes=4, classes_per_family=2,
                                     family_cue="hue", distractors="other_family")
    differences = {
        detail: class_blindness.class_differences(
            dataclasses.replace(families, class_detail=detail), 1, tmp_path / detail
        )
        for detail in synthetic.CLASS_DETAILS
    }
    (lattice_lr, lattice_hr), (harmonics_lr, _) = differences["lattice"], differences["harmonics"]
    assert lattice_lr < 1.5 < harmonics_lr
    assert lattice_hr > 20.0


def test_class_oracle_gives_each_item_its_sounding_class_code(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hydra.utils import instantiate

    from avvsr.config import compose

    oracle = load_script("class_oracle_train")
    config = compose("train", [f"paths.data_dir={synth_root.parent}",
                               f"paths.cache_dir={tmp_path / 'cache'}", "data.eval_max_frames=4",
                               oracle.oracle_override(synth_root)])
    datamodule = instantiate(config.data)  # the oracle's public hook, as its command sets it
    datamodule.setup("validate")
    dataset = datamodule.datasets["val"]
    assert datasets.ClipDataset._load.__module__ == "avvsr.data.datasets"  # nothing patched
    manifest = synthetic.load_manifest(synth_root)
    clips = {clip.video: clip for clip in manifest.splits["val"]}
    for index in range(len(dataset)):
        item = dataset[index]
        clip = clips[item["key"].rsplit(":", 1)[0]]
        sounding_class = next(o.class_name for o in clip.objects if o.sounding)
        first = manifest.classes.index(sounding_class) * oracle.BANDS_PER_CLASS
        loud = item["audio"] > SILENCE_LOG_MEL + 1
        expected = torch.zeros_like(loud)
        expected[:, first : first + oracle.BANDS_PER_CLASS, :] = True
        assert torch.equal(loud, expected), clip.video


@pytest.mark.parametrize("layout", ["full", "disc", "distractor"])
def test_probe_patches_carry_the_coded_grating_where_they_are_scored(layout: str) -> None:
    probe = load_script("learnability_probe")
    lq, hr, labels, region = probe.render_patches(np.random.default_rng(0), 6, layout, radius=16)
    assert lq.shape == (6, 3, 16, 16) and hr.shape == (6, 3, 64, 64)
    assert labels.shape == (6,) and region.shape == (6, 64, 64)
    again = probe.render_patches(np.random.default_rng(0), 6, layout, radius=16)
    assert torch.equal(again[1], hr) and torch.equal(again[2], labels)  # seeded
    for image, scored in zip(hr, region, strict=True):
        swing = image[0][scored].max() - image[0][scored].min()
        assert swing > 30 / 255  # the grating (amplitude 40 grey levels, tinted) is there
        if layout == "disc":  # the benchmark's object: a disc of the given radius
            assert 0.17 < scored.float().mean() < 0.22  # pi 16^2 / 64^2
        else:
            assert scored[:8].sum() == 0 and scored[:, :8].sum() == 0  # no border
        if layout == "distractor":
            assert scored[:, 32 - 6 :].sum() == 0  # left half only


def test_probe_disc_is_the_benchmark_object_on_the_chosen_background() -> None:
    probe = load_script("learnability_probe")
    _, hr, _, region = probe.render_patches(np.random.default_rng(0), 4, "disc",
                                            scene={"background_contrast": 0.0})
    for image, scored in zip(hr, region, strict=True):
        outside = image[:, ~scored & ~torch.from_numpy(_rim(scored.numpy()))]
        assert outside.std(dim=1).max() < 1e-6  # flat background
    _, hr, _, region = probe.render_patches(np.random.default_rng(0), 4, "disc")
    assert hr[0][:, ~region[0]].std(dim=1).min() > 1 / 255  # the benchmark's waves
    assert torch.equal(torch.round(hr * 255), hr * 255)  # 8-bit frames, as decoded
    with pytest.raises(ValueError, match="disc"):
        probe.render_patches(np.random.default_rng(0), 1, "full", scene={"background_contrast": 0})


def _rim(inside: np.ndarray) -> np.ndarray:
    """Pixels next to ``inside`` (the disc's antialiased edge mixes object and background)."""
    grown = inside.copy()
    for axis in (0, 1):
        for shift in (-1, 1):
            grown |= np.roll(inside, shift, axis=axis)
    return grown & ~inside


def test_probe_pool_picks_whole_patches_and_main_runs(capsys: pytest.CaptureFixture) -> None:
    probe = load_script("learnability_probe")
    pool = probe.render_patches(np.random.default_rng(0), 5, "full")
    picked = probe.pick(pool, np.random.default_rng(1), 12)
    for lq, hr, label, region in zip(*picked, strict=True):
        same = [i for i in range(5) if torch.equal(pool[1][i], hr)]
        assert len(same) == 1
        assert torch.equal(pool[0][same[0]], lq) and pool[2][same[0]] == label
        assert torch.equal(pool[3][same[0]], region)
    probe.main(["--film", "--film-blocks", "1", "--steps", "2", "--batch", "2",
                "--test-patches", "4",
                "--layout", "disc", "--pool", "3", "--background-contrast", "0"])
    printed = capsys.readouterr().out
    assert "film_blocks=1" in printed and "true: PSNR-Y on the coded grating" in printed
    assert "shuffled:" in printed


def test_prototype_film_blocks_modulates_only_the_last_blocks() -> None:
    prototype = load_script("film_prototype")
    torch.manual_seed(0)
    net = prototype.FiLMPrototype(num_classes=4, film=True, film_blocks=1)
    torch.nn.init.normal_(net.head.conv_last.weight)  # make the output depend on the features
    lq, code = torch.rand(2, 3, 8, 8), torch.eye(4)[:2]
    plain = net(lq, code)
    for modulation in net.modulations[:-1]:
        torch.nn.init.normal_(modulation.bias)
    assert torch.equal(net(lq, code), plain)  # the first blocks are not modulated
    torch.nn.init.normal_(net.modulations[-1].bias)
    assert not torch.allclose(net(lq, code), plain)


def test_prototype_main_takes_study_overrides(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prototype = load_script("film_prototype")
    prototype.main(["--film", "--film-blocks", "1", "--steps", "2", "--data", str(synth_root),
                    "data.batch_size=3", "data.clip_len=1", f"paths.cache_dir={tmp_path}"])
    printed = capsys.readouterr().out
    assert "film_blocks=1 steps=2 true: PSNR-Y in source" in printed and "shuffled:" in printed


def test_audio_class_probe_saves_an_encoder_that_init_weights_loads(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import hydra

    from avvsr.checkpoint import load_weights, read_weights
    from avvsr.config import compose
    from avvsr.models.avvsr_net import AVVSRNet
    from avvsr.models.backbones.basicvsr import BasicVSR
    from avvsr.models.fusion import MSAVF

    probe = load_script("audio_class_probe")
    saved = tmp_path / "encoder.pt"
    accuracy = probe.main(["--steps", "2", "--data", str(synth_root), "--save", str(saved),
                           "data.batch_size=2", f"paths.cache_dir={tmp_path}"])
    assert 0.0 <= accuracy <= 1.0 and "test accuracy" in capsys.readouterr().out
    encoder_config = compose("train", ["model/audio_encoder=tiny"]).model.audio_encoder
    encoder = hydra.utils.instantiate(encoder_config)  # what the probe trains
    net = AVVSRNet(BasicVSR(num_feat=8, num_blocks=1, hr_channels=8), encoder, MSAVF)
    kept = load_weights(net, read_weights(saved), source=saved, part_state=True)  # strictly
    assert not any(key.startswith("audio_encoder.") for key in kept)
    assert any(key.startswith("backbone.") for key in kept)


def test_mask_by_region_reads_each_region_at_the_label_size() -> None:
    initial_masks = load_script("initial_masks")
    source = torch.zeros(1, 1, 1, 8, 8)
    source[..., :4, :4] = 1
    distractor = torch.zeros_like(source)
    distractor[..., 4:, 4:] = 1
    labels = {"mask": source, "distractor_mask": distractor}
    mask = 0.75 * source + 0.25 * distractor
    shares = initial_masks.mask_by_region(mask, labels)
    assert shares == {"source": 0.75, "distractors": 0.25, "background": 0.0,
                      "source_open_share": 1.0}
    lr_mask = torch.full((1, 1, 1, 2, 2), 0.6)  # the LR mask of an HR label, upsampled
    assert initial_masks.mask_by_region(lr_mask, labels) == pytest.approx(
        {"source": 0.6, "distractors": 0.6, "background": 0.6, "source_open_share": 1.0})


def test_initial_masks_main_prints_one_row_per_seed(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    initial_masks = load_script("initial_masks")
    initial_masks.main([str(synth_root), "data.batch_size=2", f"paths.cache_dir={tmp_path}",
                        "--seeds", "0", "1"])
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [row.split(" | ")[0] for row in rows] == ["0", "1"]
    for row in rows:  # at the default initial temperature every mask starts undecided
        assert all(0.25 < float(value) < 0.75 for value in row.split(" | ")[1:4])


def test_mask_override_sets_every_mask_as_each_setting_says_and_puts_the_model_back() -> None:
    import torch.nn.functional as F

    from avvsr.models.audio_encoder import AudioEncoder
    from avvsr.models.avvsr_net import AVVSRNet
    from avvsr.models.backbones.basicvsr import BasicVSR
    from avvsr.models.fusion import MSAVF

    mask_override = load_script("mask_override")
    torch.manual_seed(0)
    encoder = AudioEncoder(embed_dim=6, widths=(8,), frequency_bands=2)
    net = AVVSRNet(BasicVSR(num_feat=8, num_blocks=1, hr_channels=8), encoder, MSAVF).eval()
    with torch.no_grad():  # the zero-initialised layers made non-zero, as training would
        for name, parameter in net.named_parameters():
            if "logit_bias" not in name and not parameter.any():
                parameter.normal_(std=0.5)
    source = torch.zeros(1, 3, 1, 32, 32)
    source[..., :16, :16] = 1
    distractor = torch.zeros_like(source)
    distractor[:, 1:, :, 16:, 16:] = 1  # not in the first frame: each frame gets its own maps
    batch = {"lq": torch.rand(1, 3, 3, 8, 8), "gt": torch.rand(1, 3, 3, 32, 32),
             "audio": torch.randn(1, 3, 16, 9), "mask": source, "distractor_mask": distractor}
    with torch.no_grad():
        learned = net(batch["lq"], batch["audio"])
        outputs = {}
        for name, setting in mask_override.MASK_SETTINGS.items():
            if setting is None:
                continue
            with mask_override.masks_set(net, setting, batch):
                outputs[name] = net(batch["lq"], batch["audio"])
    hooked = [m for m in net.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == []  # every hook removed
    torch.testing.assert_close(net(batch["lq"], batch["audio"]).sr, learned.sr)
    assert all(torch.equal(m, torch.ones_like(m)) for m in outputs["open"].masks)
    assert all(torch.equal(m, torch.zeros_like(m)) for m in outputs["closed"].masks)
    assert not torch.allclose(outputs["open"].sr, outputs["closed"].sr)
    for scale, (mask, before) in enumerate(zip(outputs["distractors closed"].masks,
                                               learned.masks, strict=True)):
        size = mask.shape[-2:]
        on_distractor = F.interpolate(distractor[0], size=size, mode="area")[None] > 0.5
        on_source = F.interpolate(source[0], size=size, mode="area")[None] > 0.5
        background = ~(on_distractor | on_source)
        assert torch.equal(mask[~on_distractor], before[~on_distractor]), scale
        for t in (1, 2):  # the distractor frames: their background's mean
            level = before[0, t][background[0, t]].mean()
            torch.testing.assert_close(mask[0, t][on_distractor[0, t]],
                                       level.expand(int(on_distractor[0, t].sum())))
    assert on_distractor[0, 1:].any() and not on_distractor[0, 0].any()
    scores = mask_override.region_psnr(net, [batch])
    assert set(scores) == {"source", "distractors"}


@pytest.fixture(scope="module")
def msavf_run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder holding one MS-AVF run made by ``avvsr-train`` (8 steps, validation after
    each of its 4 epochs): ``<sweep>/0/{metrics.json, csv/metrics.csv, checkpoints/}``."""
    from avvsr.train import train
    from helpers.training import compose_train

    sweep = tmp_path_factory.mktemp("sweep")
    train(compose_train(synth_root, sweep, ["model/fusion=msavf", "trainer.max_steps=8",
                                            "model.lr=2e-3", f"paths.output_dir={sweep / '0'}"]))
    return sweep


def test_mask_override_main_reads_an_avvsr_train_checkpoint(
    msavf_run: Path, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """On a checkpoint as ``avvsr-train`` writes it, the masks as learned score what the run's
    own test recorded, and forcing them open or closed changes the output."""
    import json

    record = json.loads((msavf_run / "0" / "metrics.json").read_text())
    mask_override = load_script("mask_override")
    capsys.readouterr()  # what the training printed
    results = mask_override.main([record["best_checkpoint"], "--data", str(synth_root),
                                  f"paths.cache_dir={tmp_path / 'cache'}"])
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [row.split(" | ")[0] for row in rows] == list(mask_override.MASK_SETTINGS)
    for name, metric in (("source", "psnr_y_inside"), ("distractors", "psnr_y_distractors")):
        assert results["learned"][name] == pytest.approx(
            record["metrics"][f"test/true/{metric}"], abs=1e-3)
    assert results["open"] != results["closed"]


def test_mask_scalars_reads_each_scale_of_an_avvsr_train_checkpoint(
    msavf_run: Path, capsys: pytest.CaptureFixture
) -> None:
    """Per scale, the temperature and bias the checkpoint's masks are computed with, and a
    range that holds every mask the loaded model computes."""
    import json

    from avvsr.checkpoint import load_lit_module

    checkpoint = json.loads((msavf_run / "0" / "metrics.json").read_text())["best_checkpoint"]
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    mask_scalars = load_script("mask_scalars")
    capsys.readouterr()
    rows = mask_scalars.main([checkpoint])[checkpoint]
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + len(rows) == 4
    net = load_lit_module(checkpoint).net
    masks = net(torch.rand(1, 2, 3, 8, 8), torch.randn(1, 2, 16, 9)).masks
    for scale, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        prefix = f"net.fusion.fuse.{scale}."
        assert row["temperature"] == pytest.approx(state[prefix + "log_temperature"].exp().item())
        assert row["bias"] == pytest.approx(state[prefix + "logit_bias"].item())
        assert row["lowest"] <= mask.min().item() <= mask.max().item() <= row["highest"]
        assert row["synchrony_weight"] is None  # plain MS-AVF: its masks do not see it


def test_mask_choices_read_an_avvsr_train_checkpoint_as_its_own_test_scored_it(
    msavf_run: Path, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The mean of the per-clip AUCs is the study's figure, which the run's own test recorded
    with true audio; every scored clip is counted once under its sounding class."""
    import json

    record = json.loads((msavf_run / "0" / "metrics.json").read_text())
    mask_choices = load_script("mask_choices")
    row_order = synthetic.load_manifest(synth_root).classes.index
    capsys.readouterr()
    checkpoint = record["best_checkpoint"]
    row = mask_choices.main([checkpoint, "--data", str(synth_root),
                             f"--override=paths.cache_dir={tmp_path / 'cache'}"])[checkpoint]
    assert row["mean_auc"] == pytest.approx(
        record["metrics"]["test/true/source_vs_distractor_auc"], abs=1e-6)
    assert sum(clips for _, clips in row["below_half_by_class"].values()) == row["clips"] > 0
    assert sum(below for below, _ in row["below_half_by_class"].values()) == row[
        "clips_below_half"]
    assert 0 <= row["frames_choosing_source"] <= 1
    for (first, second), cosine in row["query_cosine"].items():  # pairs in class-table order
        assert -1 - 1e-9 <= cosine <= 1 + 1e-9
        assert row_order(first) < row_order(second)
    printed = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"{checkpoint} | {row['clips']} |") for line in printed)


def test_clip_choices_count_the_frames_whose_mask_prefers_the_source() -> None:
    mask_choices = load_script("mask_choices")
    source = torch.zeros(1, 2, 1, 4, 4)
    distractors = torch.zeros(1, 2, 1, 4, 4)
    source[..., :2] = 1
    distractors[..., 2:] = 1
    mask = torch.zeros(1, 2, 1, 4, 4)
    mask[0, 0, ..., :2] = 0.9  # frame 0 prefers the source, frame 1 the distractor
    mask[0, 1, ..., 2:] = 0.9
    [(clip, auc, chosen, scored)] = mask_choices.clip_choices(mask, source, distractors)
    assert (clip, auc, chosen, scored) == (0, pytest.approx(0.5), 1, 2)
    no_distractor = mask_choices.clip_choices(mask, source, torch.zeros_like(distractors))
    assert no_distractor == []


def test_validation_curves_prints_every_validation_of_a_run(
    msavf_run: Path, capsys: pytest.CaptureFixture
) -> None:
    """The curves read back what the run's CSV logger wrote: one value per validation, the
    best one and the change since a step."""
    import csv

    validation_curves = load_script("validation_curves")
    capsys.readouterr()
    curves = validation_curves.main([str(msavf_run), "--since", "1"])
    with (msavf_run / "0" / "csv" / "metrics.csv").open(newline="") as file:
        logged = [row for row in csv.DictReader(file) if row["val/psnr_y_inside"]]
    psnr = curves["val/psnr_y_inside"]["msavf-s3 | 0"]
    assert psnr == {int(row["step"]): float(row["val/psnr_y_inside"]) for row in logged}
    assert len(psnr) == 4 and len(curves["val/source_vs_distractor_auc"]["msavf-s3 | 0"]) == 4
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("msavf-s3 | 0"))
    best = max(psnr, key=psnr.get)
    assert row.endswith(f"{psnr[best]:.3f} ({best}) | {psnr[max(psnr)] - psnr[1]:+.3f}")
    with pytest.raises(SystemExit, match="no finished run"):
        validation_curves.main([str(msavf_run), "--fusion", "concat"])
    # a training metric, logged every few steps: the mean of its last 2 logged values
    with (msavf_run / "0" / "csv" / "metrics.csv").open(newline="") as file:
        losses = [float(row["train/loss"]) for row in csv.DictReader(file) if row["train/loss"]]
    validation_curves.main([str(msavf_run), "--metrics", "train/loss", "--last-mean", "2"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"msavf-s3 | 0 | {(losses[-1] + losses[-2]) / 2:.3f}"
    # ... or its mean per block of steps: every logged value in exactly one block
    with (msavf_run / "0" / "csv" / "metrics.csv").open(newline="") as file:
        logged = {int(row["step"]): float(row["train/loss"])
                  for row in csv.DictReader(file) if row["train/loss"]}
    blocks = validation_curves.main(
        [str(msavf_run), "--metrics", "train/loss", "--block-means", "2"]
    )["train/loss"]["msavf-s3 | 0"]
    assert set(blocks) == {step // 2 * 2 for step in logged}
    for start, mean in blocks.items():
        in_block = [value for step, value in logged.items() if start <= step < start + 2]
        assert mean == pytest.approx(sum(in_block) / len(in_block))
    with pytest.raises(SystemExit):
        validation_curves.main([str(msavf_run), "--block-means", "0"])


def test_synchrony_auc_prefers_the_source_with_its_own_audio_only(
    synthetic_sets, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    synchrony_auc = load_script("synchrony_auc")
    # Full-length clips (16 frames), two test clips so that each takes the other's audio.
    root = synthetic_sets(synthetic.SynthConfig(num_train=1, num_val=1, num_test=2))
    results = synchrony_auc.main(["--data", str(root), "--windows", "3,7",
                                  f"paths.cache_dir={tmp_path}"])
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [row.split(" | ")[0] for row in rows] == ["3", "7"]
    for scores in results.values():  # the pulse follows the sounding object's loudness
        assert scores["true"] > 0.6 and scores["true"] > scores["shuffled"] + 0.1


def test_teacher_marks_leave_the_still_background_out_of_the_silent_side(
    synthetic_sets, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    teacher_marks = load_script("teacher_marks")
    root = synthetic_sets(synthetic.SynthConfig(num_train=4, num_val=1, num_test=1))
    results = teacher_marks.main(["--data", str(root), "--batches", "4",
                                  f"paths.cache_dir={tmp_path}", "data.num_workers=0"])
    assert "share of the silent marks" in capsys.readouterr().out
    for shares in results.values():
        assert sum(shares[region][2] for region in teacher_marks.REGIONS) == pytest.approx(1)
        assert all(0 <= share <= 1 for region in shares.values() for share in region)
    # Counting still pixels out of step as silent adds the background's, and only it much.
    assert (results["still pixels too"]["background"][1]
            > results["as configured"]["background"][1] + 0.2)
