"""Data sets and the DataModule: batch contract, LR/HR/mask alignment, audio-frame alignment,
determinism, bad files, configs."""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from avvsr.config import compose as compose_config
from avvsr.data import audio_io, io
from avvsr.data.audio_features import SILENCE_LOG_MEL, AudioFeatureSettings
from avvsr.data.cache import DecodeCache
from avvsr.data.datamodule import AVVSRDataModule
from avvsr.data.datasets import (
    BadFileLog,
    EvalClipDataset,
    ShuffledSeededSampler,
    TrainClipDataset,
)
from avvsr.data.degradations import crop_to_scale, degrade
from avvsr.data.sources import ClipRecord, FolderSource, SyntheticSource
from avvsr.errors import DatasetError, MediaError, MissingAudioError, VideoDecodeError
from media import (
    onset,
    truncate_tail,
    write_audio_only,
    write_ave_folder,
    write_empty_video,
    write_garbage,
    write_test_video,
    write_vfr_video,
    write_video_without_audio,
)

SCALE = 4


@pytest.fixture(scope="module")
def data_dir(synth_root: Path) -> Path:
    """``<data_dir>/synth_av``: the session's small synthetic set at the default 96x96 size
    (``synth_root``), read only."""
    return synth_root.parent


def compose(name: str, data_dir: Path, cache_dir: Path, **overrides) -> AVVSRDataModule:
    """The DataModule of ``data=<name>`` in the ``train`` config as the command line composes
    it, reading under ``data_dir`` and caching in ``cache_dir``; ``overrides`` of ``data``."""
    config = compose_config("train", [
        f"data={name}", f"paths.data_dir={data_dir}", f"paths.cache_dir={cache_dir}",
        f"model.scale={SCALE}",
        *(f"data.{key}={'null' if value is None else value}" for key, value in overrides.items()),
    ])
    return instantiate(config.data)


def synth_source(data_dir: Path, split: str = "train") -> SyntheticSource:
    return SyntheticSource(data_dir / "synth_av", split)


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8)


def dihedral_group() -> list:
    """The 8 rotations/reflections of ``(..., H, W)`` images."""
    return [
        lambda x, k=k, flip=flip: torch.rot90(x, k, (-2, -1)).flip(-1) if flip
        else torch.rot90(x, k, (-2, -1))
        for k in range(4)
        for flip in (False, True)
    ]


# ------------------------------------------------------------------------------ batches


def test_synthetic_config_gives_the_documented_batches(data_dir: Path, tmp_path: Path) -> None:
    module = compose("synth_av", data_dir, tmp_path / "cache", num_workers=0)
    audio = compose_config("train").audio  # the one node the data and the model read
    assert (module.clip_len, module.crop_size, module.batch_size) == (5, 64, 4)
    assert module.audio == instantiate(audio)
    module.setup("fit")
    module.setup("test")
    n_mels = audio.n_mels
    n_frames = module.audio.log_mel().num_frames(module.audio.window_samples)

    batch = next(iter(module.train_dataloader()))
    b, t, c = module.batch_size, module.clip_len, module.crop_size
    assert set(batch) == {"lq", "gt", "audio", "has_audio", "mask", "distractor_mask", "key"}
    expected = {
        "lq": ((b, t, 3, c // SCALE, c // SCALE), torch.float32),
        "gt": ((b, t, 3, c, c), torch.float32),
        "audio": ((b, t, n_mels, n_frames), torch.float32),
        "has_audio": ((b,), torch.bool),
        "mask": ((b, t, 1, c, c), torch.float32),
        "distractor_mask": ((b, t, 1, c, c), torch.float32),
    }
    for name, (shape, dtype) in expected.items():
        assert (tuple(batch[name].shape), batch[name].dtype) == (shape, dtype), name
    assert batch["has_audio"].all()
    for name in ("lq", "gt"):
        assert 0 <= batch[name].min() and batch[name].max() <= 1
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert all(re.fullmatch(r"train/\d{4}\.mp4:\d+", key) for key in batch["key"])

    for split, loader in (("val", module.val_dataloader()), ("test", module.test_dataloader())):
        batch = next(iter(loader))
        # Whole 96x96 clips, all 8 frames.
        assert batch["gt"].shape[1:] == (8, 3, 96, 96), split
        assert batch["lq"].shape[1:] == (8, 3, 96 // SCALE, 96 // SCALE), split
        assert batch["mask"].shape[1:] == (8, 1, 96, 96), split
        assert batch["audio"].shape[1:] == (8, n_mels, n_frames), split
        assert all(key.endswith(":0") for key in batch["key"])
    # The test split carries another clip's audio for the shuffled-audio control.
    assert batch["audio_shuffled"].shape == batch["audio"].shape
    assert not torch.equal(batch["audio_shuffled"], batch["audio"])


def find_crop(clip: torch.Tensor, gt: torch.Tensor) -> list[tuple[int, int, int]]:
    """Every (transform number, top, left) with ``transform(clip crop) == gt``.

    ``clip`` uint8 (T, 3, H, W), ``gt`` uint8 (T, 3, c, c); transforms from
    :func:`dihedral_group`.
    """
    size = gt.shape[-1]
    group = dihedral_group()
    probe = torch.arange(4.0).view(2, 2)
    windows = clip[0].unfold(1, size, 1).unfold(2, size, 1)  # (3, rows, cols, c, c)
    found = []
    for number, transform in enumerate(group):
        inverse = next(h for h in group if torch.equal(h(transform(probe)), probe))
        corner = inverse(gt[0])[:, :4, :4]  # a cheap first test of every position
        candidates = (windows[..., :4, :4] == corner[:, None, None]).all(dim=(0, 3, 4))
        for top, left in torch.nonzero(candidates).tolist():
            crop = clip[:, :, top : top + size, left : left + size]
            if torch.equal(transform(crop), gt):
                found.append((number, top, left))
    return found


def locate_item(source: SyntheticSource, item: dict) -> tuple[ClipRecord, slice, list]:
    """A training item's record, its frames in the clip, and every (transform number, top,
    left) at which its HR crop lies in the decoded video (:func:`find_crop`)."""
    path, first = item["key"].rsplit(":", 1)
    record = next(r for r in source if r.key == path)
    frames = slice(int(first), int(first) + item["gt"].shape[0])
    clip = torch.from_numpy(io.read_frames(record.path)[frames]).permute(0, 3, 1, 2)
    return record, frames, find_crop(clip, as_uint8(item["gt"]))


def test_training_crops_align_lr_hr_and_mask(data_dir: Path, tmp_path: Path) -> None:
    """Find each training crop in the decoded video: aligned to the scale, flipped/transposed
    together with its mask, and LR = degrade(HR)."""
    source = synth_source(data_dir)
    data = TrainClipDataset(source, DecodeCache(tmp_path / "cache"), scale=SCALE, clip_len=3,
                            crop_size=32)
    group = dihedral_group()
    transforms_seen = set()
    for seed in range(8):
        item = data[(seed % len(data), seed)]
        record, frames, found = locate_item(source, item)
        assert found, f"the crop of {item['key']} is not in the video"
        number, top, left = found[0]
        assert top % SCALE == 0 and left % SCALE == 0
        transforms_seen.add(number)
        labels = np.load(record.labels)[frames, top : top + 32, left : left + 32]
        mask = torch.from_numpy(np.isin(labels, record.sounding_ids)).unsqueeze(1).float()
        assert torch.equal(item["mask"], group[number](mask))
        assert torch.equal(item["lq"], degrade(item["gt"], SCALE).clamp(0, 1))
    assert len(transforms_seen) > 1  # augmentation flips and transposes

    plain = TrainClipDataset(source, DecodeCache(tmp_path / "cache"), scale=SCALE, clip_len=3,
                             crop_size=32, augment=False)
    for seed in range(4):
        _, _, found = locate_item(source, plain[(0, seed)])
        assert {number for number, _, _ in found} == {0}


def test_the_synthetic_config_trains_on_crops_that_are_not_flipped(
    data_dir: Path, tmp_path: Path
) -> None:
    """conf/data/synth_av.yaml leaves out the flips and transposes: they would turn the
    sawtooth class's texture into one of no class (tests/test_synthetic.py says why)."""
    module = compose("synth_av", data_dir, tmp_path / "cache", num_workers=0)
    module.setup("fit")
    source = synth_source(data_dir)
    for seed in range(8):
        item = module.datasets["train"][(seed % len(source.records), seed)]
        _, _, found = locate_item(source, item)
        assert {number for number, _, _ in found} == {0}, item["key"]


def test_evaluation_clips_are_whole_frames_cropped_to_the_scale(tmp_path: Path) -> None:
    """50x70 frames (not multiples of 4) -> HR 48x68, LR 12x17, all frames or the first N."""
    (tmp_path / "v").mkdir()
    write_test_video(tmp_path / "v" / "odd.mp4", num_frames=7, height=50, width=70,
                     pix_fmt="yuv444p")
    source = FolderSource(tmp_path / "v")
    for degradation in ("BI", "BD"):
        data = EvalClipDataset(source, DecodeCache(tmp_path / "cache"), scale=SCALE,
                               degradation=degradation)
        item = data[0]
        frames = torch.from_numpy(io.read_frames(source.records[0].path)).permute(0, 3, 1, 2)
        assert torch.equal(as_uint8(item["gt"]), crop_to_scale(frames, SCALE))
        assert item["lq"].shape == (7, 3, 12, 17)
        assert torch.equal(item["lq"], degrade(item["gt"], SCALE, degradation).clamp(0, 1))
        assert "mask" not in item and item["key"] == "odd.mp4:0"
    short = EvalClipDataset(source, DecodeCache(tmp_path / "cache"), scale=SCALE, max_frames=3)
    assert short[0]["gt"].shape[0] == 3


# ------------------------------------------------------------------------------ audio


def test_audio_windows_follow_frame_timestamps_with_vfr_and_late_audio(tmp_path: Path) -> None:
    """A tone that starts at a known time shows in exactly the STFT columns after it.

    Frames at irregular times; the soundtrack starts 0.5 s late, is silent for 0.7 s, then a
    1 kHz tone until it ends 2 s later: audible from 1.2 s to 2.5 s on the video's clock.
    Column ``c`` of frame ``i``'s log-mel is centred at ``t_i + (c * hop - L // 2) / rate``
    (window of ``L`` samples centred on the frame); columns well before, inside and after the
    audible span must be silent, loud and silent.
    """
    times_s = [0.0, 0.05, 0.1, 0.6, 0.65, 0.7, 1.1, 1.2, 1.3, 1.35, 1.4, 2.0, 2.45, 2.9]
    audio_start_s, onset_s, duration_s = 0.5, 0.7, 2.0
    (tmp_path / "v").mkdir()
    write_vfr_video(tmp_path / "v" / "vfr.mp4", times_s, audio=onset(onset_s, duration_s),
                    audio_start_s=audio_start_s)
    settings = AudioFeatureSettings()
    data = EvalClipDataset(FolderSource(tmp_path / "v"), DecodeCache(tmp_path / "cache"),
                           scale=SCALE, audio=settings)
    log_mel = data[0]["audio"]  # (T, n_mels, n_frames)
    assert log_mel.shape[0] == len(times_s)

    audible_from_s, audible_to_s = audio_start_s + onset_s, audio_start_s + duration_s
    length = round(settings.window_s * settings.sample_rate)
    columns = torch.arange(log_mel.shape[-1])
    margin_s = settings.n_fft / 2 / settings.sample_rate + 0.02  # STFT support + codec
    peak = log_mel.max(dim=1).values  # (T, n_frames)
    for frame, time_s in enumerate(times_s):
        centres_s = time_s + (columns * settings.hop_length - length // 2) / settings.sample_rate
        loud = (centres_s > audible_from_s + margin_s) & (centres_s < audible_to_s - margin_s)
        quiet = (centres_s < audible_from_s - margin_s) | (centres_s > audible_to_s + margin_s)
        assert (peak[frame, loud] > SILENCE_LOG_MEL + 10).all(), f"frame at {time_s} s"
        assert (peak[frame, quiet] < SILENCE_LOG_MEL + 1).all(), f"frame at {time_s} s"
    assert peak[times_s.index(1.3)].gt(SILENCE_LOG_MEL + 10).any()  # the test sees the tone


def test_file_without_audio_gives_silence_or_is_bad_when_audio_is_required(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "v").mkdir()
    silent = write_video_without_audio(tmp_path / "v" / "silent.mp4", num_frames=6)
    write_test_video(tmp_path / "v" / "sound.mp4", num_frames=6)
    source, cache = FolderSource(tmp_path / "v"), DecodeCache(tmp_path / "cache")
    data = EvalClipDataset(source, cache, scale=SCALE)
    item = data[[c.record.key for c in data.clips].index("silent.mp4")]
    assert not item["has_audio"]
    torch.testing.assert_close(item["audio"], torch.full_like(item["audio"], SILENCE_LOG_MEL))
    assert data[[c.record.key for c in data.clips].index("sound.mp4")]["has_audio"]

    required = EvalClipDataset(source, cache, scale=SCALE, audio_policy="require")
    assert [c.record.key for c in required.clips] == ["sound.mp4"]
    assert [r.getMessage() for r in caplog.records if "silent.mp4" in r.getMessage()] == [
        f"skipping bad file {silent}: the file has no audio stream (audio_policy is 'require')"
    ]
    (tmp_path / "v" / "sound.mp4").unlink()
    with pytest.raises(DatasetError, match="no usable clip"):
        EvalClipDataset(FolderSource(tmp_path / "v"), cache, scale=SCALE,
                        audio_policy="require")


# ------------------------------------------------------------------------------ determinism


def epoch_batches(module: AVVSRDataModule, epoch: int) -> list[dict]:
    loader = module.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)


def assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for one, other in zip(first, second, strict=True):
        assert one["key"] == other["key"]
        for name in ("lq", "gt", "audio", "mask", "has_audio"):
            assert torch.equal(one[name], other[name]), name


def test_batches_depend_only_on_the_seed_and_epoch(data_dir: Path, tmp_path: Path) -> None:
    def module(seed: int, workers: int) -> AVVSRDataModule:
        dm = compose("synth_av", data_dir, tmp_path / "cache", seed=seed, num_workers=workers,
                     batch_size=2, val=None, test=None)
        dm.setup("fit")
        return dm

    reference = epoch_batches(module(0, 0), 0)
    assert_same_batches(reference, epoch_batches(module(0, 0), 0))  # another run
    assert_same_batches(reference, epoch_batches(module(0, 2), 0))  # with two workers
    keys = [batch["key"] for batch in reference]
    assert keys != [batch["key"] for batch in epoch_batches(module(1, 0), 0)]
    assert keys != [batch["key"] for batch in epoch_batches(module(0, 0), 1)]


def test_lightning_sets_a_new_epoch_order_reproducibly(data_dir: Path, tmp_path: Path) -> None:
    """Under a Trainer, each epoch's batches differ, and a second run repeats them."""

    class KeyRecorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.keys: list[list[str]] = []

        def training_step(self, batch, batch_idx):
            self.keys.append(list(batch["key"]))
            return (self.weight - batch["gt"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def run() -> list[list[str]]:
        module = compose("synth_av", data_dir, tmp_path / "cache", batch_size=2, val=None,
                         test=None)
        recorder = KeyRecorder()
        trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(recorder, datamodule=module)
        return recorder.keys

    keys = run()
    batches_per_epoch = len(keys) // 3
    epochs = [keys[i * batches_per_epoch : (i + 1) * batches_per_epoch] for i in range(3)]
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert run() == keys


def test_sampler_visits_every_clip_once_per_epoch() -> None:
    sampler = ShuffledSeededSampler(7, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        requests = list(sampler)
        assert sorted(index for index, _ in requests) == list(range(7))
        assert len({seed for _, seed in requests}) == 7


# ------------------------------------------------------------------------------ bad files


@pytest.fixture
def messy_folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[type, str]]]:
    """Two good videos and one bad file per problem, with the error and reason expected."""
    root = tmp_path / "messy"
    root.mkdir()
    write_test_video(root / "good1.mp4", num_frames=8)
    write_test_video(root / "good2.mkv", num_frames=8)
    write_garbage(root / "garbage.mp4")
    truncate_tail(write_test_video(root / "truncated.mp4", num_frames=8), 0.6)
    write_test_video(root / "short.mp4", num_frames=3)
    write_video_without_audio(root / "noaudio.mp4", num_frames=8)
    write_empty_video(root / "empty.mkv")
    write_audio_only(root / "soundonly.mp4")
    write_test_video(root / "small.mp4", num_frames=8, height=16, width=16)
    expected = {
        "garbage.mp4": "cannot open it as media",
        "truncated.mp4": "cannot open it as media",
        "short.mp4": "3 frames, a clip needs 5",
        "noaudio.mp4": "no audio stream",
        "empty.mkv": "no frames",
        "soundonly.mp4": "no video stream",
        "small.mp4": "smaller than the 32x32",
    }
    return root, expected


def test_bad_files_are_reported_once_and_skipped(
    messy_folder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, expected = messy_folder
    caplog.set_level(logging.WARNING)
    module = AVVSRDataModule(FolderSource(root), FolderSource(root), scale=SCALE,
                             cache_dir=tmp_path / "cache", clip_len=5, crop_size=32,
                             audio_policy="require", batch_size=2)
    module.setup("fit")  # train and val list the same files
    module.setup("validate")
    assert sorted(c.record.key for c in module.datasets["train"].clips) == [
        "good1.mp4", "good2.mkv"
    ]
    # Whole-clip evaluation needs neither 5 frames nor a 32x32 crop.
    assert sorted(c.record.key for c in module.datasets["val"].clips) == [
        "good1.mp4", "good2.mkv", "short.mp4", "small.mp4"
    ]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for file, reason in expected.items():
        reports = [m for m in messages if f"{root / file}:" in m]
        assert len(reports) == 1, (file, reports)
        assert reason in reports[0]
    assert len(list(module.train_dataloader())) == 1  # the epoch runs on the good files


def test_no_usable_file_is_a_dataset_error_listing_every_reason(messy_folder, tmp_path) -> None:
    root, expected = messy_folder
    for good in ("good1.mp4", "good2.mkv"):
        (root / good).unlink()
    source = FolderSource(root)
    with pytest.raises(DatasetError) as error:
        TrainClipDataset(source, DecodeCache(tmp_path / "cache"), scale=SCALE, clip_len=5,
                         crop_size=32, audio_policy="require")
    message = str(error.value)
    assert message.startswith(f"{source.name}: no usable clip")
    for file, reason in expected.items():
        assert f"{root / file}: " in message and reason in message


def test_file_failing_at_access_is_skipped_deterministically(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file damaged after setup (and its cache entry gone) is replaced by another clip."""
    root = tmp_path / "v"
    root.mkdir()
    for name, tone_hz in (("a.mp4", 300.0), ("b.mp4", 400.0), ("c.mp4", 500.0)):
        write_test_video(root / name, num_frames=8, tone_hz=tone_hz)  # distinct contents
    cache, bad_files = DecodeCache(tmp_path / "cache"), BadFileLog()
    train = TrainClipDataset(FolderSource(root), cache, scale=SCALE, clip_len=4, crop_size=32,
                             bad_files=bad_files)
    evaluation = EvalClipDataset(FolderSource(root), cache, scale=SCALE, bad_files=bad_files)
    damaged = train.clips[1]
    shutil.rmtree(cache.root / damaged.cache_key)
    write_garbage(damaged.record.path)
    caplog.set_level(logging.WARNING)

    item = train[(1, 5)]
    assert not item["key"].startswith("b.mp4")
    again = train[(1, 5)]
    assert again["key"] == item["key"] and torch.equal(again["gt"], item["gt"])
    assert evaluation[1]["key"] == "c.mp4:0"  # the next clip stands in
    for seed in range(6):
        assert not train[(seed % 3, seed)]["key"].startswith("b.mp4")
    reports = [r for r in caplog.records if "b.mp4" in r.getMessage()]
    assert len(reports) == 1 and "cannot open it as media" in reports[0].getMessage()


def test_label_maps_that_do_not_fit_the_video_are_a_bad_file(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = shutil.copytree(data_dir / "synth_av", tmp_path / "synth_av")
    source = SyntheticSource(root, "train")
    broken = source.records[0].labels
    labels = np.load(broken)
    np.save(broken, labels[:, :-1])  # one row short
    caplog.set_level(logging.WARNING)
    data = TrainClipDataset(source, DecodeCache(tmp_path / "cache"), scale=SCALE, clip_len=3,
                            crop_size=32)
    assert [c.record.key for c in data.clips] == [r.key for r in source.records[1:]]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping bad file {broken}: label maps must be uint8 {labels.shape} like the "
        f"video's frames ({source.records[0].path}), got uint8 {labels[:, :-1].shape}"
    ]


def _report_in_child(bad_files: BadFileLog) -> None:
    bad_files.report(MediaError("/data/x.mp4", "damaged"))


def test_bad_file_log_reports_once_across_processes(caplog: pytest.LogCaptureFixture) -> None:
    bad_files = BadFileLog()
    child = multiprocessing.get_context("fork").Process(target=_report_in_child,
                                                        args=(bad_files,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    caplog.set_level(logging.WARNING)
    bad_files.report(MediaError("/data/x.mp4", "damaged"))  # the child reported it already
    bad_files.report(MediaError("/data/y.mp4", "damaged"))
    bad_files.report(MediaError("/data/y.mp4", "damaged"))
    assert [r.getMessage() for r in caplog.records] == ["skipping bad file /data/y.mp4: damaged"]


def test_bad_file_log_reports_a_file_once_per_error_type(caplog: pytest.LogCaptureFixture) -> None:
    """decord's messages carry a clock time, so the same failure reads differently each time."""
    bad_files = BadFileLog()
    caplog.set_level(logging.WARNING)
    for clock in ("[01:02:03]", "[01:02:04]"):
        bad_files.report(VideoDecodeError("/data/x.mp4", f"decord failed {clock} at frame 7"))
    bad_files.report(MissingAudioError("/data/x.mp4", "the container holds no audio stream"))
    bad_files.report(VideoDecodeError("/data/y.mp4", "decord failed [01:02:05] at frame 7"))
    assert [r.getMessage() for r in caplog.records] == [
        "skipping bad file /data/x.mp4: decord failed [01:02:03] at frame 7",
        "skipping bad file /data/x.mp4: the container holds no audio stream",
        "skipping bad file /data/y.mp4: decord failed [01:02:05] at frame 7",
    ]


# ------------------------------------------------------------------------------ configs


def test_folder_config_with_split_lists(tmp_path: Path) -> None:
    videos = tmp_path / "data" / "videos"
    videos.mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        write_test_video(videos / name, num_frames=8, height=64, width=64)
    (videos / "train.txt").write_text("a.mp4\nb.mp4\n")
    (videos / "val.txt").write_text("c.mp4\n")
    (videos / "test.txt").write_text("c.mp4\n")
    module = compose("folder", tmp_path / "data", tmp_path / "cache", num_workers=0)
    module.setup("fit")
    assert [c.record.key for c in module.datasets["train"].clips] == ["a.mp4", "b.mp4"]
    batch = next(iter(module.train_dataloader()))
    assert batch["gt"].shape == (2, module.clip_len, 3, 64, 64) and "mask" not in batch
    val = next(iter(module.val_dataloader()))
    assert val["key"] == ["c.mp4:0"] and val["gt"].shape == (1, 8, 3, 64, 64)


def test_ave_config_reads_annotations_and_splits(tmp_path: Path) -> None:
    write_ave_folder(
        tmp_path / "data" / "AVE_Dataset",
        {"train": ["Dog&v1&good&0&3"], "val": ["Cat&v2&good&1&2"], "test": ["Cat&v2&good&1&2"]},
        num_frames=30, height=128, width=128,
    )
    module = compose("ave", tmp_path / "data", tmp_path / "cache", num_workers=0)
    module.setup("fit")
    module.setup("test")
    batch = next(iter(module.train_dataloader()))
    assert batch["gt"].shape == (1, module.clip_len, 3, 128, 128)
    test = next(iter(module.test_dataloader()))
    assert test["key"] == ["AVE/v2.mp4:10"] and test["gt"].shape[1] == 10  # frames 1.0-1.9 s
    # A single test clip has no other clip to borrow audio from: the control is silence.
    torch.testing.assert_close(test["audio_shuffled"],
                               torch.full_like(test["audio"], SILENCE_LOG_MEL))


def test_clips_of_different_sizes_cannot_share_a_batch(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    write_test_video(tmp_path / "v" / "a.mp4", num_frames=6, height=48, width=64)
    write_test_video(tmp_path / "v" / "b.mp4", num_frames=6, height=64, width=64)
    module = AVVSRDataModule(val=FolderSource(tmp_path / "v"), scale=SCALE,
                             cache_dir=tmp_path / "cache", eval_batch_size=2)
    module.setup("validate")
    with pytest.raises(ValueError, match="evaluation batch size of 1"):
        next(iter(module.val_dataloader()))


# ---------------------------------------------------------------------------- decode paths
AVE_RECORDS = {
    "train": ["Dog&v1&good&0&3", "Bell&v3&good&1&3"],
    "val": ["Cat&v2&good&1&2"],
    "test": ["Cat&v2&good&1&2"],
}


@pytest.fixture(scope="module")
def ave_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<data>/AVE_Dataset``: three 3 s clips at 10 fps, 128x128, a key frame every 8."""
    data = tmp_path_factory.mktemp("ave")
    write_ave_folder(data / "AVE_Dataset", AVE_RECORDS, num_frames=30, height=128, width=128,
                     video_settings={"gop_size": 8})
    return data


def batches(module: AVVSRDataModule) -> tuple[dict, dict]:
    module.setup("fit")
    module.setup("test")
    return next(iter(module.train_dataloader())), next(iter(module.test_dataloader()))


def test_stream_and_cached_paths_give_the_same_batches(ave_data: Path, tmp_path: Path) -> None:
    options = dict(num_workers=0, max_frames=15, batch_size=2)
    cached = batches(compose("ave", ave_data, tmp_path / "c1", decode="cached", **options))
    for reader in io.STREAM_READERS:
        streamed = batches(compose("ave", ave_data, tmp_path / f"s-{reader}", decode="stream",
                                   stream_reader=reader, **options))
        for ours, theirs in zip(cached, streamed, strict=True):
            assert ours["key"] == theirs["key"]
            for name in ("lq", "gt", "audio"):
                torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0)


def test_stream_setup_decodes_no_frame(
    ave_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_frames(*args, **kwargs):
        raise AssertionError("setup decoded frames")

    for name in ("read_frames", "iter_frame_chunks", "read_clip"):
        monkeypatch.setattr(io, name, no_frames)
    module = compose("ave", ave_data, tmp_path / "cache", decode="stream", num_workers=0)
    module.setup("fit")
    assert len(module.datasets["train"]) == 2 and len(module.datasets["val"]) == 1
    assert list((tmp_path / "cache").glob("*/frames-*")) == []
    monkeypatch.undo()
    assert next(iter(module.train_dataloader()))["gt"].shape == (2, 5, 3, 128, 128)


def test_cached_path_stores_only_the_event_windows_in_parallel(
    ave_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Train records v1 0-3 s and v3 1-3 s (frames 0..29, 10..29), max_frames 12; val v2 1-2 s
    (frames 10..19), eval_max_frames 4 -> frames 0-12, 10-22 and 10-14 cached, by 2 processes."""
    module = compose("ave", ave_data, tmp_path / "cache", decode="cached", cache_workers=2,
                     max_frames=12, eval_max_frames=4)
    module.setup("fit")
    stored = sorted(p.name for p in (tmp_path / "cache").glob("*/frames-*"))
    assert stored == ["frames-0-12.npy", "frames-10-14.npy", "frames-10-22.npy"]
    bars = capsys.readouterr().err
    assert "probing 2 videos" in bars and "caching 2 files" in bars and "2/2" in bars
    firsts = {int(module.datasets["train"][(0, seed)]["key"].rsplit(":", 1)[1])
              for seed in range(30)}
    assert max(firsts) <= 12 - module.clip_len  # clips come from the cached frames only


def test_full_disk_on_the_cached_path_reads_from_the_video(
    ave_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import errno

    from avvsr.atomic import PARTIAL_MARKER
    from avvsr.data import cache as cache_module

    write = cache_module._write_npy

    def frames_do_not_fit(path, chunks, shape, dtype):
        if len(shape) == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(path, chunks, shape, dtype)

    monkeypatch.setattr(cache_module, "_write_npy", frames_do_not_fit)
    full = batches(compose("ave", ave_data, tmp_path / "full", decode="cached", num_workers=0))
    assert "disk full" in caplog.text and "read from the video" in caplog.text
    assert list((tmp_path / "full").glob("*/frames-*")) == []
    assert list((tmp_path / "full").glob(f"*/.*{PARTIAL_MARKER}*")) == []
    monkeypatch.undo()
    streamed = batches(compose("ave", ave_data, tmp_path / "s", decode="stream", num_workers=0))
    for ours, theirs in zip(full, streamed, strict=True):
        torch.testing.assert_close(ours["gt"], theirs["gt"], rtol=0, atol=0)


def test_decode_options_are_checked(ave_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="decode must be one of"):
        compose("ave", ave_data, tmp_path / "c", decode="lazy", num_workers=0).setup("fit")
    with pytest.raises(ValueError, match="max_frames 3 is below the 5 frames"):
        compose("ave", ave_data, tmp_path / "c", max_frames=3, num_workers=0).setup("fit")
    with pytest.raises(DatasetError, match="budget of 1e-06 GB"):
        compose("ave", ave_data, tmp_path / "c", cache_budget_gb=1e-6, num_workers=0,
                decode="cached").setup("fit")


def test_synthetic_sets_keep_the_cache_and_ave_streams(data_dir: Path) -> None:
    for name, decode in (("synth_av", "cached"), ("synth_fill", "cached"), ("ave", "stream")):
        config = compose_config("train", [f"data={name}", f"paths.data_dir={data_dir}"])
        assert config.data.decode == decode, name


def test_training_starts_on_the_stream_path(ave_data: Path, tmp_path: Path) -> None:
    from avvsr.train import train
    from helpers.training import compose_train

    cfg = compose_train(ave_data / "AVE_Dataset", tmp_path, [
        "data=ave", "data.decode=stream", "data.crop_size=64", "data.eval_max_frames=4",
        "model/fusion=none", "test=false",
    ])
    train(cfg)
    assert list((tmp_path / "cache").glob("*/frames-*")) == []
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["steps"] == 4


def test_with_several_processes_the_cache_is_built_once_before_setup(
    ave_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    alone = compose("ave", ave_data, tmp_path / "alone", decode="cached", num_workers=0)
    alone.trainer = SimpleNamespace(world_size=1)
    alone.prepare_data()  # one process: setup builds what it needs, nothing twice
    assert not (tmp_path / "alone").exists()

    module = compose("ave", ave_data, tmp_path / "cache", decode="cached", num_workers=0)
    module.trainer = SimpleNamespace(world_size=2)
    module.prepare_data()
    assert module.datasets == {} and len(list((tmp_path / "cache").glob("*/frames-*"))) == 3

    def no_decoding(*args, **kwargs):
        raise AssertionError("setup decoded what prepare_data had cached")

    for name in ("probe_video", "read_frames", "iter_frame_chunks", "read_clip"):
        monkeypatch.setattr(io, name, no_decoding)
    monkeypatch.setattr(audio_io, "read_audio", no_decoding)
    module.setup("fit")
    module.setup("test")
    assert next(iter(module.train_dataloader()))["gt"].shape == (2, 5, 3, 128, 128)
