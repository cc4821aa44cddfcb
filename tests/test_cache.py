"""The decode cache: round trip, content keys, cache hits, atomic and concurrent writes."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from avvsr.data import io
from avvsr.data.cache import TEMP_PREFIX, DecodeCache
from avvsr.errors import MissingFileError, NotAVideoError, NoVideoStreamError
from media import truncate_tail, write_audio_only, write_garbage, write_test_video


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_test_video(tmp_path / "clip.mp4", num_frames=12)


def entries(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if not p.name.startswith(TEMP_PREFIX)]


def temporaries(root: Path) -> list[Path]:
    return list(root.glob(f"{TEMP_PREFIX}*"))


def test_round_trip_matches_direct_decoding(tmp_path: Path, video: Path) -> None:
    cache = DecodeCache(tmp_path / "cache", sample_rate=16000)
    decoded = cache.get(video)
    np.testing.assert_array_equal(decoded.frames, io.read_frames(video))
    info = io.probe_video(video)
    np.testing.assert_array_equal(decoded.timestamps_s, info.timestamps_s)
    assert decoded.fps == pytest.approx(info.fps)
    track = io.read_audio(video, 16000)
    np.testing.assert_array_equal(decoded.audio.samples, track.samples)
    assert decoded.audio.start_s == pytest.approx(track.start_s)
    assert decoded.audio.sample_rate == 16000
    # Read back memory-mapped, not loaded.
    assert isinstance(decoded.frames, np.memmap)
    assert isinstance(decoded.audio.samples, np.memmap)
    assert cache.decodes == 1 and cache.hits == 0


def test_second_run_reads_the_cache_without_decoding(
    tmp_path: Path, video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = DecodeCache(tmp_path / "cache").get(video)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache decoded a file it holds")

    for name in ("probe_video", "read_frames", "iter_frame_chunks", "read_audio"):
        monkeypatch.setattr(io, name, no_decoding)
    again = DecodeCache(tmp_path / "cache")  # a new run: nothing shared but the folder
    second = again.get(video)
    assert (again.decodes, again.hits) == (0, 1)
    np.testing.assert_array_equal(second.frames, first.frames)
    np.testing.assert_array_equal(second.audio.samples, first.audio.samples)


def test_key_follows_content_and_decode_parameters(tmp_path: Path, video: Path) -> None:
    cache = DecodeCache(tmp_path / "cache", sample_rate=16000)
    renamed = shutil.copy(video, tmp_path / "renamed.mp4")
    assert cache.key(renamed) == cache.key(video)
    other = write_test_video(tmp_path / "other.mp4", num_frames=12, tone_hz=880.0)
    assert cache.key(other) != cache.key(video)
    assert DecodeCache(tmp_path / "cache", sample_rate=8000).key(video) != cache.key(video)
    cache.get(video)
    cache.get(renamed)
    assert (cache.decodes, cache.hits) == (1, 1)
    assert DecodeCache(tmp_path / "cache", sample_rate=8000).get(video).audio.sample_rate == 8000
    assert len(entries(tmp_path / "cache")) == 2


def test_file_without_audio_is_cached_with_no_track(tmp_path: Path) -> None:
    silent = write_test_video(tmp_path / "silent.mp4", num_frames=6, tone_hz=None)
    decoded = DecodeCache(tmp_path / "cache").get(silent)
    assert decoded.audio is None
    assert decoded.num_frames == 6


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
        cache.get(path)
    assert entries(cache.root) == [] and temporaries(cache.root) == []


def test_failure_mid_write_leaves_no_entry(
    tmp_path: Path, video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def audio_fails(*args, **kwargs):
        raise OSError("disk full")  # after the frames were written

    monkeypatch.setattr(io, "read_audio", audio_fails)
    cache = DecodeCache(tmp_path / "cache")
    with pytest.raises(OSError, match="disk full"):
        cache.get(video)
    assert entries(cache.root) == [] and temporaries(cache.root) == []
    monkeypatch.undo()
    assert cache.get(video).num_frames == 12


def test_crash_mid_write_leaves_no_half_entry(tmp_path: Path, video: Path) -> None:
    """A process killed while writing leaves only a temporary folder, removed by the next run."""
    root = tmp_path / "cache"
    crash = textwrap.dedent(
        f"""
        import os
        from avvsr.data import io
        from avvsr.data.cache import DecodeCache

        def die(*args, **kwargs):
            os._exit(7)  # no cleanup, as a kill or power loss

        io.read_audio = die  # runs after the frames are on disk
        DecodeCache({str(root)!r}).get({str(video)!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", crash], timeout=120)
    assert result.returncode == 7
    leftovers = temporaries(root)
    assert len(leftovers) == 1 and (leftovers[0] / "frames.npy").is_file()
    assert entries(root) == []

    cache = DecodeCache(root)  # the writer is dead: its folder goes
    assert temporaries(root) == []
    decoded = cache.get(video)
    assert cache.decodes == 1
    np.testing.assert_array_equal(decoded.frames, io.read_frames(video))


def _decode_together(root: str, video: str, barrier, results) -> None:
    """Decode ``video``, waiting for the other processes before publishing the entry."""
    cache = DecodeCache(root)
    write_entry = cache._write_entry

    def write_then_wait(path, folder):
        write_entry(path, folder)
        barrier.wait(timeout=60)

    cache._write_entry = write_then_wait
    decoded = cache.get(video)
    results.put((cache.decodes, int(decoded.frames.sum()), decoded.key))


def test_concurrent_writers_end_with_one_complete_entry(tmp_path: Path, video: Path) -> None:
    context = multiprocessing.get_context("fork")
    processes = 3
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_decode_together, args=(str(tmp_path / "c"), str(video), barrier,
                                                       results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    # Every process decoded (none could see another's entry), all read the same data.
    assert [decodes for decodes, _, _ in outcomes] == [1] * processes
    assert len({(total, key) for _, total, key in outcomes}) == 1
    assert [p.name for p in entries(tmp_path / "c")] == [outcomes[0][2]]
    assert temporaries(tmp_path / "c") == []
    assert outcomes[0][1] == int(io.read_frames(video).sum())


def test_damaged_entry_is_decoded_again(
    tmp_path: Path, video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = DecodeCache(tmp_path / "cache")
    key = cache.get(video).key
    (cache.root / key / "frames.npy").write_bytes(b"not an array")
    decoded = cache.get(video)
    assert cache.decodes == 2
    assert "damaged cache entry" in caplog.text
    np.testing.assert_array_equal(decoded.frames, io.read_frames(video))
