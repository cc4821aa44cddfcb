"""Sources: synthetic manifest, folder of videos (with and without split lists), AVE layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avvsr.data.cache import DecodeCache
from avvsr.data.datasets import EvalClipDataset, TrainClipDataset
from avvsr.data.sources import (
    AVE_HEADER,
    AVESource,
    FolderSource,
    SyntheticSource,
    parse_ave_annotations,
)
from avvsr.data.synthetic import load_manifest
from avvsr.errors import DatasetError
from media import write_av, write_test_video

# ------------------------------------------------------------------------------ synthetic


def test_synthetic_source_lists_clips_labels_and_sounding_objects(synth_root: Path) -> None:
    root, manifest = synth_root, load_manifest(synth_root)
    assert (manifest.params["num_objects"], manifest.params["num_sounding"]) == (2, 1)
    for split in ("train", "val", "test"):
        records = SyntheticSource(root, split).records
        entries = manifest.splits[split]
        assert [r.key for r in records] == [e.video for e in entries]
        for record, entry in zip(records, entries, strict=True):
            assert record.path == root / entry.video and record.path.is_file()
            assert record.labels == root / entry.labels and record.labels.is_file()
            sounding = [obj.id for obj in entry.objects if obj.sounding]
            assert list(record.sounding_ids) == sounding and len(sounding) == 1
            assert record.start_s is None and record.end_s is None


def test_synthetic_source_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        SyntheticSource(tmp_path / "absent", "train")
    (tmp_path / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(DatasetError, match="manifest.json"):
        SyntheticSource(tmp_path, "train")


# ------------------------------------------------------------------------------ folder


@pytest.fixture
def video_folder(tmp_path: Path) -> Path:
    """Videos in four containers (two nested), plus files that are not videos."""
    root = tmp_path / "videos"
    (root / "b" / "deep").mkdir(parents=True)
    write_test_video(root / "a.mp4", num_frames=8)
    write_test_video(root / "b" / "c.mkv", num_frames=8)
    write_test_video(root / "b" / "deep" / "d.avi", num_frames=8, video_codec="mpeg4",
                     audio_codec="libmp3lame")
    write_test_video(root / "e.webm", num_frames=8, video_codec="libvpx-vp9",
                     audio_codec="libopus", sample_rate=48000)
    (root / "notes.txt").write_text("not a video")
    np.save(root / "b" / "labels.npy", np.zeros(3))
    return root


def test_folder_without_lists_takes_every_video(video_folder: Path) -> None:
    expected = ["a.mp4", "b/c.mkv", "b/deep/d.avi", "e.webm"]
    for split in (None, "train", "test"):
        source = FolderSource(video_folder, split)
        assert [r.key for r in source] == expected
        assert all(r.path == video_folder / r.key for r in source)


def test_folder_videos_of_every_container_decode(video_folder: Path, tmp_path: Path) -> None:
    """The whole folder gives data: mp4/H.264+AAC, mkv, avi/MPEG-4+MP3, webm/VP9+Opus."""
    data = EvalClipDataset(FolderSource(video_folder), DecodeCache(tmp_path / "cache"), scale=4)
    assert [clip.record.key for clip in data.clips] == ["a.mp4", "b/c.mkv", "b/deep/d.avi",
                                                        "e.webm"]
    for index in range(len(data)):
        item = data[index]
        assert item["gt"].shape == (8, 3, 48, 64) and item["lq"].shape == (8, 3, 12, 16)
        assert bool(item["has_audio"])


def test_folder_split_lists_choose_and_order_files(video_folder: Path) -> None:
    (video_folder / "train.txt").write_text("# training videos\nb/deep/d.avi\n\n  a.mp4  \n")
    (video_folder / "val.txt").write_text("e.webm\n")
    assert [r.key for r in FolderSource(video_folder, "train")] == ["b/deep/d.avi", "a.mp4"]
    assert [r.key for r in FolderSource(video_folder, "val")] == ["e.webm"]
    # No split asked: every video, lists or not.
    assert len(FolderSource(video_folder)) == 4
    # A split without its list while others have lists would mix splits: refused.
    with pytest.raises(DatasetError, match="test.txt"):
        FolderSource(video_folder, "test")


@pytest.mark.parametrize("line", ["/etc/passwd", "../outside.mp4", "b/../../x.mp4"])
def test_folder_list_line_outside_the_root_names_file_and_line(tmp_path: Path, line) -> None:
    (tmp_path / "train.txt").write_text(f"a.mp4\n{line}\n")
    with pytest.raises(DatasetError, match=r"train\.txt: line 2:"):
        FolderSource(tmp_path, "train")


def test_folder_listed_but_missing_file_is_a_bad_file_not_a_listing_error(
    tmp_path: Path,
) -> None:
    write_test_video(tmp_path / "a.mp4", num_frames=6)
    (tmp_path / "train.txt").write_text("a.mp4\nmissing.mp4\n")
    source = FolderSource(tmp_path, "train")
    assert [r.key for r in source] == ["a.mp4", "missing.mp4"]
    data = EvalClipDataset(source, DecodeCache(tmp_path / "cache"), scale=4)
    assert [clip.record.key for clip in data.clips] == ["a.mp4"]


# ------------------------------------------------------------------------------ AVE


def write_ave_tree(root: Path, durations_s: dict[str, float], fps: float = 10.0) -> None:
    """Videos ``<root>/AVE/<id>.mp4`` of the given lengths (frames at ``i / fps``)."""
    (root / "AVE").mkdir(parents=True)
    for video_id, duration_s in durations_s.items():
        write_test_video(root / "AVE" / f"{video_id}.mp4", num_frames=round(duration_s * fps),
                         fps=fps)


@pytest.fixture
def ave_root(tmp_path: Path) -> Path:
    root = tmp_path / "AVE_Dataset"
    write_ave_tree(root, {"RUhOCu3LNXM": 3.0, "Xy_-9a": 3.0, "k3": 3.0})
    (root / "Annotations.txt").write_text(
        f"{AVE_HEADER}\n"
        "Church bell&RUhOCu3LNXM&good&0&3\n"
        "Dog&Xy_-9a&good&1&2\n"
        "Race car, auto racing&k3&bad&0.5&2.5\n"
    )
    (root / "trainSet.txt").write_text("Church bell&RUhOCu3LNXM&good&0&3\nDog&Xy_-9a&good&1&2\n")
    (root / "valSet.txt").write_text("Race car, auto racing&k3&bad&0.5&2.5\n")
    (root / "testSet.txt").write_text(f"{AVE_HEADER}\nDog&Xy_-9a&good&1&2\n")
    return root


def test_ave_annotations_parse(ave_root: Path) -> None:
    records = parse_ave_annotations(ave_root / "Annotations.txt")
    assert [(r.category, r.video_id, r.quality, r.start_s, r.end_s) for r in records] == [
        ("Church bell", "RUhOCu3LNXM", "good", 0.0, 3.0),
        ("Dog", "Xy_-9a", "good", 1.0, 2.0),
        ("Race car, auto racing", "k3", "bad", 0.5, 2.5),
    ]


def test_ave_splits_and_event_windows(ave_root: Path) -> None:
    train = AVESource(ave_root, "train")
    assert [(r.key, r.start_s, r.end_s) for r in train] == [
        ("AVE/RUhOCu3LNXM.mp4", 0.0, 3.0),
        ("AVE/Xy_-9a.mp4", 1.0, 2.0),
    ]
    assert all(r.path == ave_root / r.key and r.path.is_file() for r in train)
    assert [r.key for r in AVESource(ave_root, "val")] == ["AVE/k3.mp4"]
    assert [r.key for r in AVESource(ave_root, "test")] == ["AVE/Xy_-9a.mp4"]  # header skipped
    assert len(AVESource(ave_root, None)) == 3  # every annotation
    whole = AVESource(ave_root, "train", event_window=False)
    assert all(r.start_s is None and r.end_s is None for r in whole)


def test_ave_clips_come_from_inside_the_event_window(ave_root: Path, tmp_path: Path) -> None:
    """Dog (Xy_-9a): event 1-2 s, frames at i / 10 s -> frames 10..19 only."""
    cache = DecodeCache(tmp_path / "cache")
    dog = AVESource(ave_root, "test")
    train = TrainClipDataset(dog, cache, scale=4, clip_len=4, crop_size=32)
    firsts = {int(train[(0, seed)]["key"].rsplit(":", 1)[1]) for seed in range(40)}
    assert min(firsts) >= 10 and max(firsts) <= 20 - 4
    assert len(firsts) > 1  # the start is random within the window
    evaluation = EvalClipDataset(dog, cache, scale=4)
    item = evaluation[0]
    assert item["key"] == "AVE/Xy_-9a.mp4:10" and item["gt"].shape[0] == 10


def test_ave_event_window_too_short_for_the_clip_is_skipped(
    ave_root: Path, tmp_path: Path
) -> None:
    (ave_root / "trainSet.txt").write_text(
        "Dog&Xy_-9a&good&1&1.3\nChurch bell&RUhOCu3LNXM&good&0&3\n"
    )
    data = TrainClipDataset(AVESource(ave_root, "train"), DecodeCache(tmp_path / "c"), scale=4,
                            clip_len=5, crop_size=32)
    assert [clip.record.key for clip in data.clips] == ["AVE/RUhOCu3LNXM.mp4"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("Dog&Xy_-9a&good&1", "expected 'Category&VideoID"),
        ("Dog&Xy_-9a&good&one&2", "must be numbers"),
        ("Dog&Xy_-9a&good&2&1", "StartTime < EndTime"),
        ("Dog&&good&1&2", "expected 'Category&VideoID"),
    ],
)
def test_ave_malformed_line_names_file_and_line(ave_root: Path, line, problem) -> None:
    (ave_root / "valSet.txt").write_text(f"Dog&Xy_-9a&good&1&2\n\n{line}\n")
    with pytest.raises(DatasetError, match=rf"valSet\.txt: line 3: .*{problem}"):
        AVESource(ave_root, "val")


def test_ave_missing_listing_or_unknown_split(ave_root: Path) -> None:
    (ave_root / "valSet.txt").unlink()
    with pytest.raises(DatasetError, match="valSet.txt"):
        AVESource(ave_root, "val")
    with pytest.raises(DatasetError, match="unknown AVE split"):
        AVESource(ave_root, "holdout")


def test_ave_video_ids_map_to_files_of_any_layout(tmp_path: Path) -> None:
    root = tmp_path / "ave"
    (root / "clips").mkdir(parents=True)
    write_av(root / "clips" / "v1.mp4", np.full((6, 32, 32, 3), 100, np.uint8))
    (root / "testSet.txt").write_text("Dog&v1&good&0&10\n")
    records = AVESource(root, "test", videos_dir="clips").records
    assert [r.path for r in records] == [root / "clips" / "v1.mp4"]
