"""Decode-once cache: each video's frames, timestamps and audio as memory-mappable ``.npy``.

An entry is a folder ``<root>/<key>/`` holding

- ``frames.npy``: uint8 ``(T, H, W, 3)`` RGB frames;
- ``timestamps_s.npy``: float64 ``(T,)`` presentation time of each frame, seconds;
- ``audio.npy``: float32 ``(N,)`` mono samples at ``sample_rate`` Hz (empty without audio);
- ``meta.json``: sizes, frame rate, audio start (seconds) and the source path.

The key is a SHA-256 of the file's bytes combined with the decode parameters (cache format,
audio sample rate), so a renamed file still hits and an edited file misses. Hashing runs at
about 700 MB/s here (one 10 s AVE clip: a few ms) and is memoised per process by the file's
identity (device, inode, size, modification time).

Writes are atomic: an entry is written into a temporary folder ``<root>/.tmp-...`` and
renamed into place when complete, so a crash never leaves a half entry, and several
processes decoding the same file at once end with one complete entry (the first rename
wins; the others discard their copy). Temporary folders left by dead processes on this host
are removed when a cache is opened. Reads use ``np.load(mmap_mode="r")``: nothing is copied
until a clip's frames are sliced.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avvsr.data.io import AudioTrack
from avvsr.errors import MissingAudioError, MissingFileError, VideoDecodeError

PathLike = str | os.PathLike[str]
CACHE_FORMAT = "avvsr-decode-v2"  # v2: frame times from PyAV, all decoded audio
TEMP_PREFIX = ".tmp-"

log = logging.getLogger(__name__)

_digest_memo: dict[tuple[int, int, int, int], str] = {}


def file_digest(path: PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, memoised per process by the file's identity."""
    stat = os.stat(path)
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    digest = _digest_memo.get(identity)
    if digest is None:
        with open(path, "rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        _digest_memo[identity] = digest
    return digest


@dataclass(frozen=True)
class DecodedVideo:
    """One cached video: memory-mapped frames and audio.

    ``frames`` uint8 ``(T, H, W, 3)``; ``timestamps_s`` float64 ``(T,)`` seconds;
    ``audio`` the mono soundtrack at the cache's sample rate, ``None`` when the file has no
    audio stream; ``fps`` the average frame rate (frames per second).
    """

    key: str
    source: str
    frames: np.ndarray
    timestamps_s: np.ndarray
    fps: float
    audio: AudioTrack | None

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]


class DecodeCache:
    """Decode videos once into ``root`` and read them back memory-mapped.

    ``sample_rate`` (Hz) is the rate audio is stored at; ``chunk_frames`` bounds how many
    decoded frames are held in memory while an entry is written. ``decodes`` and ``hits``
    count, for this instance, the videos decoded and the entries found.
    """

    def __init__(self, root: PathLike, sample_rate: int = 16000, chunk_frames: int = 32) -> None:
        self.root = Path(root)
        self.sample_rate = sample_rate
        self.chunk_frames = chunk_frames
        self.decodes = 0
        self.hits = 0
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_orphaned_temporaries()

    def __getstate__(self) -> dict:
        # Counters are per process; a copy sent to a DataLoader worker starts at zero.
        return {**self.__dict__, "decodes": 0, "hits": 0}

    def key(self, path: PathLike) -> str:
        """The entry name of ``path``: hash of its bytes and of the decode parameters."""
        if not Path(path).is_file():
            raise MissingFileError(path, "no such file")
        params = json.dumps({"format": CACHE_FORMAT, "sample_rate": self.sample_rate})
        return hashlib.sha256(f"{file_digest(path)}\n{params}".encode()).hexdigest()[:40]

    def get(self, path: PathLike) -> DecodedVideo:
        """The decoded video of ``path``, from the cache or decoded now (and stored).

        Raises :class:`~avvsr.errors.MediaError` when the file cannot be decoded.
        """
        key = self.key(path)
        entry = self.root / key
        if (entry / "meta.json").is_file():
            try:
                decoded = self.open(key)
            except (OSError, ValueError) as error:
                log.warning("%s: damaged cache entry (%s); decoding %s again", entry, error, path)
                self._discard_entry(entry)
            else:
                self.hits += 1
                return decoded
        self._decode_into(path, key)
        self.decodes += 1
        return self.open(key)

    def open(self, key: str) -> DecodedVideo:
        """Read entry ``key`` memory-mapped (``FileNotFoundError`` when it does not exist)."""
        entry = self.root / key
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{entry}: cache format {meta.get('format')!r}, not {CACHE_FORMAT}")
        frames = np.load(entry / "frames.npy", mmap_mode="r")
        timestamps_s = np.load(entry / "timestamps_s.npy")
        if frames.shape[0] != timestamps_s.shape[0] or frames.shape[0] != meta["num_frames"]:
            raise ValueError(f"{entry}: frame count does not match its metadata")
        audio = None
        if meta["has_audio"]:
            audio = AudioTrack(
                samples=np.load(entry / "audio.npy", mmap_mode="r"),
                sample_rate=meta["sample_rate"],
                start_s=meta["audio_start_s"],
            )
        return DecodedVideo(key, meta["source"], frames, timestamps_s, meta["fps"], audio)

    # ------------------------------------------------------------------ writing
    def _decode_into(self, path: PathLike, key: str) -> None:
        """Decode ``path`` into a temporary folder, then rename it to entry ``key``."""
        temporary = self.root / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}@{_host()}"
        temporary.mkdir()
        try:
            self._write_entry(path, temporary)
            try:
                temporary.rename(self.root / key)
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # Another process stored the same entry first; its copy is identical.
        finally:
            shutil.rmtree(temporary, ignore_errors=True)

    def _write_entry(self, path: PathLike, folder: Path) -> None:
        """Decode ``path`` into the arrays and ``meta.json`` (written last) in ``folder``."""
        from avvsr.data import io

        info = io.probe_video(path)
        frames = None
        count = 0
        for chunk in io.iter_frame_chunks(path, self.chunk_frames):
            if frames is None:
                frames = np.lib.format.open_memmap(
                    folder / "frames.npy", mode="w+", dtype=np.uint8,
                    shape=(info.num_frames, *chunk.shape[1:]),
                )
            frames[count : count + len(chunk)] = chunk
            count += len(chunk)
        if frames is None or count != info.num_frames:
            raise VideoDecodeError(path, f"decoded {count} of {info.num_frames} frames")
        frames.flush()
        del frames
        np.save(folder / "timestamps_s.npy", np.asarray(info.timestamps_s, dtype=np.float64))
        try:
            track = io.read_audio(path, self.sample_rate)
        except MissingAudioError:
            track = None
        samples = track.samples if track is not None else np.zeros(0, dtype=np.float32)
        np.save(folder / "audio.npy", samples.astype(np.float32, copy=False))
        meta = {
            "format": CACHE_FORMAT,
            "source": str(path),
            "num_frames": info.num_frames,
            "fps": info.fps,
            "has_audio": track is not None,
            "sample_rate": self.sample_rate,
            "audio_start_s": track.start_s if track is not None else 0.0,
        }
        # Written last: an entry with meta.json is complete.
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))

    def _discard_entry(self, entry: Path) -> None:
        """Move a damaged entry aside atomically, then delete it."""
        aside = self.root / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}@{_host()}"
        with contextlib.suppress(OSError):
            entry.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)

    def _remove_orphaned_temporaries(self) -> None:
        """Delete temporary folders whose writer (a process on this host) no longer runs."""
        for folder in self.root.glob(f"{TEMP_PREFIX}*"):
            owner, _, host = folder.name[len(TEMP_PREFIX) :].partition("@")
            pid = owner.split("-")[0]
            if host == _host() and pid.isdigit() and not _process_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


def _host() -> str:
    return socket.gethostname().replace("@", "_")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
