"""The decode cache: small per-file entries (probe results and audio) and, for the cached decode
path, the frames training reads, as memory-mappable ``.npy``.

An entry is a folder ``<root>/<key>/`` holding

- ``meta.json`` (written last): sizes, frame rate, audio start (seconds), the source path and
  the shape of every array, so a truncated or foreign file is found when it is opened;
- ``timestamps_s.npy``: float64 ``(T,)`` presentation time of each frame, seconds;
- ``pts.npy``, ``keyframes.npy``: int64 frame index for random access (absent when the file's
  frame times are unusable; :class:`avvsr.data.io.FrameIndex`);
- ``audio.npy``: float32 ``(N,)`` mono samples at ``sample_rate`` Hz (empty without audio);
- ``frames-<first>-<stop>.npy``: uint8 ``(stop - first, H, W, 3)`` RGB frames ``first ..
  stop - 1``, only for the cached decode path and only the frames a data set reads (its
  clips' windows, at most ``max_frames`` each).

An entry without frames is about 64 kB a second of audio plus 16 bytes a frame; frames cost
``H * W * 3`` bytes each (691 kB at 640x360).

The key is a SHA-256 of the file's bytes combined with the decode parameters (cache format,
audio sample rate), so a renamed file still hits and an edited file misses. Hashing runs at
about 700 MB/s here (one 10 s AVE clip: a few ms) and is memoised per process by the file's
identity (device, inode, size, modification time).

Writes are atomic (:func:`avvsr.atomic.atomic_write`): an entry is written into a hidden
temporary folder beside it and renamed into place when complete, a frames file under a
temporary name in its entry, so a crash never leaves a half entry, and several processes
writing the same entry at once end with one complete copy (the first one renamed in; the others
are discarded). Temporary folders and files left by dead processes on this host are removed
when a cache is opened (:func:`avvsr.atomic.remove_stale_partials_in`). A damaged entry (a
truncated or foreign file) is detected when it is opened, logged, deleted and built again. A
write that finds the disk full (``ENOSPC``, ``EDQUOT``) discards what it wrote and reports the
folder and its free space: the entry is then kept in memory, the frames read from the video.

:meth:`DecodeCache.prepare` and :meth:`DecodeCache.prepare_frames` build many entries with a
pool of processes and a progress bar; complete entries are kept, so an interrupted build
resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from avvsr.atomic import atomic_write, discard, remove_stale_partials_in
from avvsr.data.audio_io import AudioTrack
from avvsr.data.io import FrameIndex
from avvsr.errors import (
    DatasetError,
    MediaError,
    MissingAudioError,
    MissingFileError,
    VideoDecodeError,
)

PathLike = str | os.PathLike[str]
CACHE_FORMAT = "avvsr-decode-v3"  # v3: entries without frames; frames per range; byte sizes
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger(__name__)

_digest_memo: dict[tuple[int, int, int, int], str] = {}


def _identity(path: PathLike) -> tuple[int, int, int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def file_digest(path: PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, memoised per process by the file's identity."""
    identity = _identity(path)
    digest = _digest_memo.get(identity)
    if digest is None:
        with open(path, "rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        _digest_memo[identity] = digest
    return digest


class DamagedEntryError(ValueError):
    """A cache entry (or one of its files) is truncated, foreign or inconsistent."""


@dataclass(frozen=True)
class VideoEntry:
    """What the cache knows of one video without its frames.

    ``timestamps_s`` float64 ``(T,)`` seconds; ``fps`` average frame rate (frames per second);
    ``index`` the frame index for random access (None: decode in order); ``audio`` the mono
    soundtrack at the cache's sample rate, ``None`` when the file has no audio stream;
    ``stored`` False for an entry kept in memory because the disk was full.
    """

    key: str
    source: str
    num_frames: int
    fps: float
    width: int
    height: int
    timestamps_s: np.ndarray
    index: FrameIndex | None
    audio: AudioTrack | None
    stored: bool = True

    def read_frames(self, first: int, stop: int, reader: str = "pyav") -> np.ndarray:
        """uint8 ``(stop - first, H, W, 3)``: frames ``first .. stop - 1`` from the video."""
        from avvsr.data import io

        return io.read_clip(self.source, first, stop, self.index, reader)


@dataclass(frozen=True)
class FramesJob:
    """Frames ``first .. stop - 1`` of the video ``path`` (entry ``key``), to be cached."""

    path: str
    key: str
    first: int
    stop: int
    nbytes: int


class DecodeCache:
    """Entries of videos in ``root``, built on demand or in parallel, read memory-mapped.

    ``sample_rate`` (Hz) is the rate audio is stored at; ``chunk_frames`` bounds how many
    decoded frames are held in memory while frames are written. ``decodes`` and ``hits``
    count, for this instance (and the pools it ran), the entries and frame ranges built and
    those found; ``disk_full`` the writes given up because the disk was full.
    """

    def __init__(self, root: PathLike, sample_rate: int = 16000, chunk_frames: int = 32) -> None:
        self.root = Path(root)
        self.sample_rate = sample_rate
        self.chunk_frames = chunk_frames
        self.decodes = 0
        self.hits = 0
        self.disk_full = 0
        self._memory: dict[str, VideoEntry] = {}  # entries the disk had no room for
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()

    def __getstate__(self) -> dict:
        # Counters are per process; a copy sent to a worker starts at zero.
        return {**self.__dict__, "decodes": 0, "hits": 0, "disk_full": 0}

    def key(self, path: PathLike) -> str:
        """The entry name of ``path``: hash of its bytes and of the decode parameters."""
        if not Path(path).is_file():
            raise MissingFileError(path, "no such file")
        params = json.dumps({"format": CACHE_FORMAT, "sample_rate": self.sample_rate})
        return hashlib.sha256(f"{file_digest(path)}\n{params}".encode()).hexdigest()[:40]

    # ------------------------------------------------------------------ entries
    def entry(self, path: PathLike) -> VideoEntry:
        """The entry of ``path``, from the cache or probed now (and stored): no frame is decoded
        (frame times, size and the frame index come from demuxing; the audio is decoded).

        Raises :class:`~avvsr.errors.MediaError` when the file cannot be used.
        """
        key = self.key(path)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        found = self._open_or_discard(key, path)
        if found is not None:
            self.hits += 1
            return found
        self.decodes += 1
        entry = self._build_entry(path, key)
        if not entry.stored:
            self._memory[key] = entry
        return entry

    def open(self, key: str) -> VideoEntry:
        """Entry ``key`` (``FileNotFoundError`` when absent, :class:`DamagedEntryError` when
        damaged); audio memory-mapped."""
        if key in self._memory:
            return self._memory[key]
        folder = self.root / key
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except json.JSONDecodeError as error:
            raise DamagedEntryError(f"{folder}: meta.json does not parse ({error})") from None
        if meta.get("format") != CACHE_FORMAT:
            raise DamagedEntryError(f"{folder}: format {meta.get('format')!r}, not {CACHE_FORMAT}")
        arrays = {
            name: _load(folder / f"{name}.npy", spec) for name, spec in meta["arrays"].items()
        }
        index = None
        if "pts" in arrays:
            index = FrameIndex(arrays["pts"], arrays["keyframes"], meta["demuxer"], meta["codec"])
        audio = None
        if meta["has_audio"]:
            audio = AudioTrack(arrays["audio"], meta["sample_rate"], meta["audio_start_s"])
        return VideoEntry(
            key, meta["source"], meta["num_frames"], meta["fps"], meta["width"], meta["height"],
            arrays["timestamps_s"], index, audio,
        )

    def _open_or_discard(self, key: str, path: PathLike) -> VideoEntry | None:
        """Entry ``key`` if it is there and sound; a damaged one is logged and deleted."""
        try:
            return self.open(key)
        except FileNotFoundError as error:
            # Entries are renamed into place whole: a folder with a file missing is damaged.
            if (self.root / key).exists():
                self._discard_damaged(self.root / key, path, f"{error.filename} is missing")
            return None
        except (DamagedEntryError, OSError, KeyError, ValueError) as error:
            self._discard_damaged(self.root / key, path, str(error))
            return None

    def _discard_damaged(self, entry: Path, path: PathLike, why: str) -> None:
        log.warning("%s: damaged cache entry (%s); building it again from %s", entry, why, path)
        with contextlib.suppress(OSError):
            discard(entry)  # moved aside atomically, then deleted

    def _build_entry(self, path: PathLike, key: str) -> VideoEntry:
        """Probe ``path`` and decode its audio; store the entry (in memory if the disk is full)."""
        from avvsr.data import audio_io, io

        info = io.probe_video(path)
        try:
            track = audio_io.read_audio(path, self.sample_rate)
        except MissingAudioError:
            track = None
        entry = VideoEntry(
            key, str(path), info.num_frames, info.fps, info.width, info.height,
            np.asarray(info.timestamps_s, dtype=np.float64), info.index, track,
        )
        meta = {
            "format": CACHE_FORMAT, "source": str(path), "num_frames": info.num_frames,
            "fps": info.fps, "width": info.width, "height": info.height,
            "has_audio": track is not None, "sample_rate": self.sample_rate,
            "audio_start_s": track.start_s if track is not None else 0.0,
        }
        arrays = {
            "timestamps_s": entry.timestamps_s,
            "audio": (track.samples if track is not None else np.zeros(0)).astype(np.float32),
        }
        if info.index is not None:
            arrays.update(pts=info.index.pts, keyframes=info.index.keyframes)
            meta.update(demuxer=info.index.demuxer, codec=info.index.codec)
        try:
            # Another process's copy of the entry may be renamed in first: it is the same.
            with atomic_write(self.root / key, folder=True, keep_existing=True,
                              remove_stale=False) as temporary:
                meta["arrays"] = {
                    name: _write_npy(temporary / f"{name}.npy", [array], array.shape,
                                     array.dtype)
                    for name, array in arrays.items()
                }
                # Written last: an entry with meta.json is complete.
                (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
        except OSError as error:
            if error.errno not in DISK_FULL:
                raise
            self._report_disk_full(self.root, path, "its probe and audio are kept in memory")
            return replace(entry, stored=False)
        return self.open(key)

    # ------------------------------------------------------------------ frames
    def frames_path(self, key: str, first: int, stop: int) -> Path:
        return self.root / key / f"frames-{first}-{stop}.npy"

    def open_frames(self, entry: VideoEntry, first: int, stop: int) -> np.ndarray:
        """Memory-mapped uint8 ``(stop - first, H, W, 3)`` frames of ``entry`` from the cache
        (``FileNotFoundError`` when absent, :class:`DamagedEntryError` when damaged)."""
        spec = {"shape": [stop - first, entry.height, entry.width, 3], "dtype": "|u1"}
        return _load(self.frames_path(entry.key, first, stop), spec)

    def frames(self, entry: VideoEntry, first: int, stop: int) -> np.ndarray | None:
        """Frames ``first .. stop - 1`` of ``entry`` from the cache, decoded and stored now if
        absent or damaged; ``None`` when they do not fit on the disk (read them from the video).
        """
        if not entry.stored:
            return None
        try:
            frames = self.open_frames(entry, first, stop)
        except FileNotFoundError:
            pass
        except (DamagedEntryError, OSError) as error:
            self._discard_damaged(self.frames_path(entry.key, first, stop), entry.source,
                                  str(error))
        else:
            self.hits += 1
            return frames
        self.decodes += 1
        if not self._write_frames(entry, first, stop):
            return None
        return self.open_frames(entry, first, stop)

    def _write_frames(self, entry: VideoEntry, first: int, stop: int) -> bool:
        """Decode the video in order from its first frame up to ``stop``, writing frames
        ``first .. stop - 1`` chunk by chunk into a temporary file in the entry, then rename
        it; False (nothing left behind) when the disk is full."""
        from avvsr.data import io

        target = self.frames_path(entry.key, first, stop)
        shape = (stop - first, entry.height, entry.width, 3)
        chunks = _frame_range_in_order(
            io.iter_frame_chunks(entry.source, self.chunk_frames), first, stop
        )
        try:
            with atomic_write(target, remove_stale=False) as temporary:
                _write_npy(temporary, chunks, shape, np.dtype(np.uint8))
        except OSError as error:
            if error.errno not in DISK_FULL:
                raise
            self._report_disk_full(target.parent, entry.source,
                                   "its frames are read from the video")
            return False
        except ValueError as error:  # fewer frames decode than the probe counted
            raise VideoDecodeError(entry.source, f"frames {first}..{stop - 1}: {error}") from None
        return True

    # ------------------------------------------------------------------ in parallel
    def prepare(
        self, paths: Sequence[PathLike], workers: int = 0, progress: bool = True
    ) -> list[VideoEntry | MediaError]:
        """The entry of each of ``paths`` (or the :class:`MediaError` that makes it unusable),
        built by ``workers`` processes (0 or 1: in this one) with a progress bar."""
        unique = list(dict.fromkeys(str(path) for path in paths))
        results: dict[str, Any] = {}
        for path in unique:  # entries already there: a hash and a small read, no pool
            with contextlib.suppress(MediaError):
                key = self.key(path)
                if key in self._memory or (self.root / key / "meta.json").is_file():
                    with contextlib.suppress(DamagedEntryError, OSError, KeyError, ValueError):
                        results[path] = self.entry(path)
        missing = [path for path in unique if path not in results]
        results.update(zip(missing, self._pool(
            _entry_task, missing, workers, progress, f"probing {len(missing):,} videos",
        ), strict=True))
        entries: list[VideoEntry | MediaError] = []
        for path in (str(path) for path in paths):
            outcome = results[path]
            if isinstance(outcome, str):
                outcome = self.open(outcome)
            elif isinstance(outcome, VideoEntry):
                if not outcome.stored:
                    self._memory[outcome.key] = outcome
            else:
                error_type, error_path, reason = outcome
                outcome = error_type(error_path, reason)
            entries.append(outcome)
        return entries

    def prepare_frames(
        self,
        ranges: Sequence[tuple[VideoEntry, int, int]],
        workers: int = 0,
        progress: bool = True,
        budget_gb: float | None = None,
    ) -> None:
        """Cache frames ``first .. stop - 1`` of each ``(entry, first, stop)`` with ``workers``
        processes and a progress bar; ranges already cached are kept.

        Before it starts it logs how many files, about how many GB, into which folder; raises
        :class:`~avvsr.errors.DatasetError` when that is over ``budget_gb`` or over the free
        space. Ranges the disk turns out to have no room for are read from the video.
        """
        jobs, seen = [], set()
        for entry, first, stop in ranges:
            if not entry.stored or (entry.key, first, stop) in seen:
                continue
            seen.add((entry.key, first, stop))
            try:
                self.open_frames(entry, first, stop)
                self.hits += 1
                continue
            except (FileNotFoundError, DamagedEntryError, ValueError, OSError):
                pass
            nbytes = (stop - first) * entry.height * entry.width * 3
            jobs.append(FramesJob(entry.source, entry.key, first, stop, nbytes))
        if not jobs:
            return
        need_gb = sum(job.nbytes for job in jobs) / 1e9
        free_gb = shutil.disk_usage(self.root).free / 1e9
        message = f"caching {len(jobs):,} files, about {need_gb:.2f} GB, into {self.root}"
        if budget_gb is not None and need_gb > budget_gb:
            raise DatasetError(self.root, f"{message}: over the budget of {budget_gb:g} GB "
                               "(data.cache_budget_gb); use data.decode=stream, or lower "
                               "data.max_frames")
        if need_gb > free_gb:
            raise DatasetError(self.root, f"{message}: only {free_gb:.2f} GB free; use "
                               "data.decode=stream, lower data.max_frames, or free space")
        log.info("%s (%.1f GB free)", message, free_gb)
        self._pool(_frames_task, jobs, workers, progress, message)

    def _pool(
        self, task: Callable, items: Sequence, workers: int, progress: bool, what: str
    ) -> list:
        """``task(self, item)`` for every item, in order, in ``workers`` processes; folds the
        workers' counters into this instance and logs one line for writes the disk refused."""
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=what, unit="file", disable=not progress or not items,
                   dynamic_ncols=True)
        outcomes = []
        with bar, _executor(workers) as executor:
            if executor is None:  # here: the task counts on this instance itself
                calls = ((task(self, item)[0], (0, 0, 0)) for item in items)
            else:
                calls = executor.map(task, [self] * len(items), items, chunksize=1)
            for outcome, counts in calls:
                outcomes.append(outcome)
                self.decodes, self.hits = self.decodes + counts[0], self.hits + counts[1]
                self.disk_full += counts[2]
                bar.update()
        if executor is not None and self.disk_full:
            log.warning("%s: the disk was full for %d write(s); their files are read from the "
                        "video (%.2f GB free)", self.root, self.disk_full,
                        shutil.disk_usage(self.root).free / 1e9)
        return outcomes

    # ------------------------------------------------------------------ housekeeping
    def _report_disk_full(self, folder: Path, path: PathLike, outcome: str) -> None:
        self.disk_full += 1
        free_mb = shutil.disk_usage(self.root).free / 1e6
        log.warning("%s: disk full writing the cache entry of %s (%.1f MB free); "
                    "the partial entry was discarded and %s", folder, path, free_mb, outcome)

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary folders (of entries) and files (of frames, in entries) whose
        writer, a process on this host, is gone: once here rather than on every write."""
        remove_stale_partials_in(self.root)
        for entry in self.root.iterdir():
            if entry.is_dir():
                remove_stale_partials_in(entry)


# ---------------------------------------------------------------------- pool tasks
def _counted(cache: DecodeCache, run: Callable[[], Any]) -> tuple[Any, tuple[int, int, int]]:
    before = (cache.decodes, cache.hits, cache.disk_full)
    outcome = run()
    after = (cache.decodes, cache.hits, cache.disk_full)
    return outcome, tuple(b - a for a, b in zip(before, after, strict=True))


def _entry_task(cache: DecodeCache, path: str) -> tuple[Any, tuple]:
    """A worker's job: the key of ``path``'s stored entry (the caller opens it memory-mapped),
    the entry itself when it is kept in memory, or the MediaError it raised as ``(type, path,
    reason)`` (exceptions that take two arguments do not survive pickling)."""

    def run() -> str | VideoEntry | tuple[type[MediaError], str, str]:
        try:
            entry = cache.entry(path)
        except MediaError as error:
            return type(error), error.path, error.reason
        return entry.key if entry.stored else entry

    return _counted(cache, run)


def _frames_task(cache: DecodeCache, job: FramesJob) -> tuple[None, tuple]:
    def run() -> None:
        try:
            cache.frames(cache.open(job.key), job.first, job.stop)
        except MediaError as error:  # the file changed since it was probed: reported later
            log.warning("%s", error)

    return _counted(cache, run)


@contextlib.contextmanager
def _executor(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of ``workers`` fresh (spawned) processes, or None to work in this process."""
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


# ---------------------------------------------------------------------- files
def _write_npy(
    path: Path, chunks: Iterable[np.ndarray], shape: tuple[int, ...], dtype: np.dtype
) -> dict:
    """Write a ``.npy`` of ``shape`` and ``dtype`` from ``chunks`` (along axis 0), synced to
    disk; returns its spec (shape, dtype) for ``meta.json``. Raises ``ValueError`` when the
    chunks do not add up to ``shape``."""
    dtype = np.dtype(dtype)
    written = 0
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(
            file, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                   "shape": tuple(shape)},
        )
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            file.write(chunk.tobytes())
            written += len(chunk) if chunk.ndim else 1
        file.flush()
        os.fsync(file.fileno())
    if written != (shape[0] if shape else 1):
        raise ValueError(f"{path}: wrote {written} of {shape[0] if shape else 1} rows")
    return {"shape": list(shape), "dtype": dtype.str}


def _load(path: Path, spec: dict) -> np.ndarray:
    """The ``.npy`` at ``path``, memory-mapped, if it has the spec's shape and dtype and the
    file's size is its header's plus its data's, else :class:`DamagedEntryError` (truncated,
    too long or foreign); ``FileNotFoundError`` when absent."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise DamagedEntryError(f"{path}: not a readable array ({error})") from None
    size = path.stat().st_size
    if size != array.offset + array.nbytes:
        raise DamagedEntryError(f"{path}: {size} bytes, {array.offset + array.nbytes} expected")
    if list(array.shape) != list(spec["shape"]) or array.dtype != np.dtype(spec["dtype"]):
        raise DamagedEntryError(
            f"{path}: {array.dtype} {array.shape}, {spec['dtype']} {tuple(spec['shape'])} expected"
        )
    return array


def _frame_range_in_order(
    chunks: Iterator[np.ndarray], first: int, stop: int
) -> Iterator[np.ndarray]:
    """The frames ``first .. stop - 1`` of chunks that cover a video from its first frame."""
    position = 0
    for chunk in chunks:
        if position >= stop:
            return
        lo, hi = max(first - position, 0), min(stop - position, len(chunk))
        if lo < hi:
            yield chunk[lo:hi]
        position += len(chunk)
