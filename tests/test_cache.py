"""The decode cache: round trip, content keys, hits, atomic and concurrent writes, damaged
entries, full disks, parallel resumable builds and the size budget."""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from avvsr.atomic import PARTIAL_MARKER
from avvsr.data import audio_io, io
from avvsr.data import cache as cache_module
from avvsr.data.cache import DecodeCache
from avvsr.errors import DatasetError, MissingFileError, NotAVideoError, NoVideoStreamError
from media import truncate_tail, write_audio_only, write_garbage, write_test_video


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_test_video(tmp_path / "clip.mp4", num_frames=12, video_settings={"gop_size": 4})


def entries(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if PARTIAL_MARKER not in p.name]


def temporaries(root: Path) -> list[Path]:
    """The temporary (partial) names of entries in ``root`` and of files in its entries."""
    pattern = f".*{PARTIAL_MARKER}*"
    return list(root.glob(pattern)) + list(root.glob(f"*/{pattern}"))


def test_round_trip_matches_direct_decoding(tmp_path: Path, video: Path) -> None:
    cache = DecodeCache(tmp_path / "cache", sample_rate=16000)
    entry = cache.entry(video)
    info = io.probe_video(video)
    np.testing.assert_array_equal(entry.timestamps_s, info.timestamps_s)
    np.testing.assert_array_equal(entry.index.keyframes, info.index.keyframes)
    assert (entry.num_frames, entry.height, entry.width) == (12, 48, 64)
    assert entry.fps == pytest.approx(info.fps)
    track = audio_io.read_audio(video, 16000)
    np.testing.assert_array_equal(entry.audio.samples, track.samples)
    assert entry.audio.start_s == pytest.approx(track.start_s)
    assert list(cache.root.glob("*/frames-*")) == []  # probing decodes no frames
    frames = cache.frames(entry, 3, 10)
    np.testing.assert_array_equal(frames, io.read_frames(video)[3:10])
    # Read back memory-mapped, not loaded.
    assert isinstance(frames, np.memmap) and isinstance(entry.audio.samples, np.memmap)
    assert (cache.decodes, cache.hits) == (2, 0)


def test_second_run_reads_the_cache_without_decoding(
    tmp_path: Path, video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = DecodeCache(tmp_path / "cache")
    first_frames = np.array(first.frames(first.entry(video), 0, 12))

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache decoded a file it holds")

    for name in ("probe_video", "read_frames", "iter_frame_chunks", "read_clip"):
        monkeypatch.setattr(io, name, no_decoding)
    monkeypatch.setattr(audio_io, "read_audio", no_decoding)
    again = DecodeCache(tmp_path / "cache")  # a new run: nothing shared but the folder
    entry = again.entry(video)
    np.testing.assert_array_equal(again.frames(entry, 0, 12), first_frames)
    assert (again.decodes, again.hits) == (0, 2)


def test_key_follows_content_and_decode_parameters(tmp_path: Path, video: Path) -> None:
    cache = DecodeCache(tmp_path / "cache", sample_rate=16000)
    renamed = shutil.copy(video, tmp_path / "renamed.mp4")
    assert cache.key(renamed) == cache.key(video)
    other = write_test_video(tmp_path / "other.mp4", num_frames=12, tone_hz=880.0)
    assert cache.key(other) != cache.key(video)
    assert DecodeCache(tmp_path / "cache", sample_rate=8000).key(video) != cache.key(video)
    cache.entry(video)
    cache.entry(renamed)
    assert (cache.decodes, cache.hits) == (1, 1)
    assert DecodeCache(tmp_path / "cache", sample_rate=8000).entry(video).audio.sample_rate == 8000
    assert len(entries(tmp_path / "cache")) == 2


def test_file_without_audio_is_cached_with_no_track(tmp_path: Path) -> None:
    silent = write_test_video(tmp_path / "silent.mp4", num_frames=6, tone_hz=None)
    entry = DecodeCache(tmp_path / "cache").entry(silent)
    assert entry.audio is None and entry.num_frames == 6


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda p: write_garbage(p / "garbage.mp4"), NotAVideoError),
        (lambda p: truncate_tail(write_test_video(p / "cut.mp4"), 0.5), NotAVideoError),
        (lambda p: write_audio_only(p / "sound.m4a"), NoVideoStreamError),
        (lambda p: p / "missing.mp4", MissingFileError),
    ],
)
def test_bad_files_raise_media_errors_and_store_nothing(tmp_path: Path, make, error) -> None:
    path = make(tmp_path)
    cache = DecodeCache(tmp_path / "cache")
    with pytest.raises(error, match=str(path.name)):
        cache.entry(path)
    assert entries(cache.root) == [] and temporaries(cache.root) == []
    # From a pool of workers the same error comes back, as a value.
    (outcome,) = cache.prepare([path], workers=2, progress=False)
    assert isinstance(outcome, error) and path.name in str(outcome)


def test_failure_mid_write_leaves_no_frames(
    tmp_path: Path, video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails_after_a_chunk(path, chunk):
        yield io.read_frames(path)[:chunk]
        raise OSError(errno.EIO, "input/output error")

    cache = DecodeCache(tmp_path / "cache", chunk_frames=4)
    entry = cache.entry(video)
    monkeypatch.setattr(io, "iter_frame_chunks", fails_after_a_chunk)
    with pytest.raises(OSError, match="input/output"):
        cache.frames(entry, 0, 12)
    assert temporaries(cache.root) == [] and list(cache.root.glob("*/frames-*")) == []
    monkeypatch.undo()
    np.testing.assert_array_equal(cache.frames(entry, 0, 12), io.read_frames(video))


def test_crash_mid_write_leaves_no_half_entry(tmp_path: Path, video: Path) -> None:
    """A process killed while writing frames leaves only a temporary file, removed by the next
    run (its writer is dead), which then builds the frames."""
    root = tmp_path / "cache"
    crash = textwrap.dedent(
        f"""
        import os
        from avvsr.data import io
        from avvsr.data.cache import DecodeCache

        real = io.iter_frame_chunks
        def dies_after_a_chunk(path, chunk):
            yield next(real(path, chunk))
            os._exit(7)  # no cleanup, as a kill or power loss

        io.iter_frame_chunks = dies_after_a_chunk
        cache = DecodeCache({str(root)!r}, chunk_frames=4)
        cache.frames(cache.entry({str(video)!r}), 0, 12)
        """
    )
    result = subprocess.run([sys.executable, "-c", crash], timeout=120)
    assert result.returncode == 7
    (leftover,) = temporaries(root)
    assert leftover.stat().st_size > 0 and list(root.glob("*/frames-*")) == []

    cache = DecodeCache(root)  # the writer is dead: its file goes
    assert temporaries(root) == []
    entry = cache.entry(video)
    assert cache.hits == 1  # the entry itself was complete
    np.testing.assert_array_equal(cache.frames(entry, 0, 12), io.read_frames(video))


def _die_after_the_first_file_of_an_entry(root: str, video: str) -> None:
    real = cache_module._write_npy

    def dies_after_a_file(path, *args):
        real(path, *args)
        os._exit(7)  # no cleanup, as a kill or power loss

    cache_module._write_npy = dies_after_a_file
    DecodeCache(root).entry(video)


def test_a_writer_killed_while_writing_an_entry_leaves_a_folder_the_next_run_removes(
    tmp_path: Path, video: Path
) -> None:
    root = tmp_path / "cache"
    writer = multiprocessing.get_context("fork").Process(
        target=_die_after_the_first_file_of_an_entry, args=(str(root), str(video))
    )
    writer.start()
    writer.join(timeout=120)
    assert writer.exitcode == 7
    (leftover,) = temporaries(root)
    assert leftover.is_dir() and list(leftover.iterdir()) and entries(root) == []

    cache = DecodeCache(root)  # the writer is dead: its folder goes
    assert temporaries(root) == []
    assert cache.entry(video).num_frames == 12 and cache.decodes == 1


def _build_together(root: str, video: str, barrier, results) -> None:
    """Build ``video``'s entry, waiting for the other processes before publishing it."""
    atomic_write = cache_module.atomic_write

    @contextlib.contextmanager
    def wait_then_publish(target, **options):
        with atomic_write(target, **options) as temporary:
            yield temporary
            if options.get("folder"):  # the entry, complete: renamed when the block ends
                barrier.wait(timeout=60)

    cache_module.atomic_write = wait_then_publish
    cache = DecodeCache(root)
    entry = cache.entry(video)
    results.put((cache.decodes, float(entry.audio.samples.sum()), entry.key))


def test_concurrent_writers_end_with_one_complete_entry(tmp_path: Path, video: Path) -> None:
    context = multiprocessing.get_context("fork")
    processes = 3
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_build_together, args=(str(tmp_path / "c"), str(video), barrier,
                                                      results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    # Every process built (none could see another's entry), all read the same data.
    assert [decodes for decodes, _, _ in outcomes] == [1] * processes
    assert len({(total, key) for _, total, key in outcomes}) == 1
    assert [p.name for p in entries(tmp_path / "c")] == [outcomes[0][2]]
    assert temporaries(tmp_path / "c") == []


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), id="cut"),
        pytest.param(lambda f: f.write_bytes(f.read_bytes() + b"\0" * 64), id="too-long"),
        pytest.param(lambda f: f.write_bytes(b"not an array"), id="foreign"),
        pytest.param(lambda f: f.unlink(), id="gone"),
    ],
)
@pytest.mark.parametrize("name", ["audio.npy", "timestamps_s.npy", "meta.json"])
def test_damaged_entry_is_detected_and_built_again(
    tmp_path: Path, video: Path, caplog: pytest.LogCaptureFixture, name: str, damage
) -> None:
    cache = DecodeCache(tmp_path / "cache")
    key = cache.entry(video).key
    damage(cache.root / key / name)
    again = DecodeCache(tmp_path / "cache")
    entry = again.entry(video)
    assert again.decodes == 1
    if name != "meta.json" or (cache.root / key / name).exists():
        assert "damaged cache entry" in caplog.text
    np.testing.assert_array_equal(entry.audio.samples, audio_io.read_audio(video).samples)
    np.testing.assert_array_equal(entry.timestamps_s, io.probe_video(video).timestamps_s)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), id="cut"),
        pytest.param(lambda f: f.write_bytes(f.read_bytes()[:100]), id="cut-in-header"),
        pytest.param(lambda f: f.write_bytes(f.read_bytes() + b"\0" * 64), id="too-long"),
    ],
)
def test_truncated_frames_are_detected_and_decoded_again(
    tmp_path: Path, video: Path, caplog: pytest.LogCaptureFixture, damage
) -> None:
    cache = DecodeCache(tmp_path / "cache")
    entry = cache.entry(video)
    cache.frames(entry, 2, 12)
    damage(cache.frames_path(entry.key, 2, 12))
    frames = cache.frames(entry, 2, 12)
    assert "damaged cache entry" in caplog.text and cache.decodes == 3
    np.testing.assert_array_equal(frames, io.read_frames(video)[2:12])


def _disk_full_after_header(path, chunks, shape, dtype):
    """A write that finds the disk full once part of the file is written."""
    with open(path, "wb") as file:
        file.write(b"\x93NUMPY partial")
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_full_disk_while_caching_frames_reads_them_from_the_video(
    tmp_path: Path, video: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = DecodeCache(tmp_path / "cache")
    entry = cache.entry(video)
    monkeypatch.setattr(cache_module, "_write_npy", _disk_full_after_header)
    assert cache.frames(entry, 0, 12) is None
    assert temporaries(cache.root) == [] and list(cache.root.glob("*/frames-*")) == []
    assert cache.disk_full == 1
    message = caplog.records[-1].getMessage()
    assert "disk full" in message and str(video) in message and "MB free" in message
    assert str(cache.root / entry.key) in message


def test_full_disk_while_probing_keeps_the_entry_in_memory(
    tmp_path: Path, video: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = DecodeCache(tmp_path / "cache")
    monkeypatch.setattr(cache_module, "_write_npy", _disk_full_after_header)
    entry = cache.entry(video)
    assert not entry.stored and entries(cache.root) == [] and temporaries(cache.root) == []
    assert "disk full" in caplog.text and "kept in memory" in caplog.text
    np.testing.assert_array_equal(entry.audio.samples, audio_io.read_audio(video).samples)
    assert cache.entry(video) is entry and cache.frames(entry, 0, 4) is None
    np.testing.assert_array_equal(entry.read_frames(3, 7), io.read_frames(video)[3:7])


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 1 MiB tmpfs (skipped where this user cannot mount one)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # detached even if busy


def test_a_really_full_disk_leaves_no_half_entry(tmp_path: Path, tiny_disk: Path) -> None:
    big = write_test_video(tmp_path / "big.mp4", num_frames=20, height=128, width=160)
    cache = DecodeCache(tiny_disk / "cache")
    entry = cache.entry(big)  # probe and audio fit in 1 MiB, 20 frames of 61 kB do not
    assert entry.stored and cache.frames(entry, 0, 20) is None and cache.disk_full == 1
    assert temporaries(cache.root) == [] and list(cache.root.glob("*/frames-*")) == []


def test_parallel_build_shows_progress_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    videos = [write_test_video(tmp_path / f"v{i}.mp4", num_frames=10, tone_hz=300.0 + 100 * i)
              for i in range(4)]
    cache = DecodeCache(tmp_path / "cache")
    built = cache.prepare(videos, workers=2)
    assert (cache.decodes, cache.hits) == (4, 0)
    caplog.set_level(logging.INFO, logger="avvsr.data.cache")
    cache.prepare_frames([(entry, 2, 8) for entry in built[:2]], workers=2)
    # Interrupted after two files: the next build keeps them and does the other two.
    cache.prepare_frames([(entry, 2, 8) for entry in built], workers=2)
    assert (cache.decodes, cache.hits) == (8, 2)
    assert "caching 2 files, about 0.00 GB, into" in caplog.text
    bars = capsys.readouterr().err
    assert "probing 4 videos" in bars and "4/4" in bars and "caching 2 files" in bars
    for entry, path in zip(built, videos, strict=True):
        np.testing.assert_array_equal(cache.open_frames(entry, 2, 8), io.read_frames(path)[2:8])


def test_the_size_budget_is_checked_before_caching_starts(tmp_path: Path, video: Path) -> None:
    cache = DecodeCache(tmp_path / "cache")
    entry = cache.entry(video)
    with pytest.raises(DatasetError, match=r"caching 1 files, about 0\.00 GB, into .*budget"):
        cache.prepare_frames([(entry, 0, 12)], budget_gb=1e-6)
    assert list(cache.root.glob("*/frames-*")) == []


def test_frames_that_no_longer_decode_are_a_media_error(
    tmp_path: Path, video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avvsr.errors import VideoDecodeError

    cache = DecodeCache(tmp_path / "cache", chunk_frames=4)
    entry = cache.entry(video)
    four_frames = io.read_frames(video)[:4]  # the file decodes shorter than it was probed
    monkeypatch.setattr(io, "iter_frame_chunks", lambda path, chunk: iter([four_frames]))
    with pytest.raises(VideoDecodeError, match=r"clip\.mp4: frames 0\.\.11: .*wrote 4 of 12"):
        cache.frames(entry, 0, 12)
    assert temporaries(cache.root) == [] and list(cache.root.glob("*/frames-*")) == []
