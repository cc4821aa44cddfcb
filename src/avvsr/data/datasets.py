"""Data sets of aligned (LR, HR, audio, mask) clips, read through the decode cache or straight
from the videos.

Items follow the batch contract of ``docs/ARCHITECTURE.md`` (one clip, no batch dim):
``lq`` (T, 3, h, w) and ``gt`` (T, 3, H, W) float32 in [0, 1]; ``audio`` (T, n_mels,
n_frames) log-mel of each frame's ``window_s`` window centred on its timestamp; ``has_audio``
bool; ``mask`` (T, 1, H, W) in {0, 1} when the source knows the sounding objects and
``distractor_mask`` (T, 1, H, W), its silent objects, with it; ``key``
``"<relative path>:<first frame index>"``. LR frames are made on the fly:
``degrade(gt, scale, degradation)`` clamped to [0, 1].

Decode paths (``decode``): ``"cached"`` decodes the frames each record's clips are drawn
from (its event window, at most ``max_frames``) once into the cache when the data set is
built, by a pool of ``workers`` processes, and reads them memory-mapped; ``"stream"`` caches
only the probe results and audio and decodes each sample's frames from the video
(:func:`avvsr.data.io.read_clip`, with ``reader`` ``"pyav"`` or ``"decord"``). Both give the
same items.

Bad files are found when a data set is built: every record is probed once into the cache
(frame times, size, audio; a hit costs a hash and a small JSON read), so unreadable,
truncated or too-short files and files without audio (with ``audio_policy="require"``) are
reported once per file and kind of error, with a ``logging`` warning and left out. A file
that fails later, in ``__getitem__`` (its frames damaged, or the file changed since), is
reported and replaced by another clip drawn deterministically from the sample's seed. A data
set with no usable file raises :class:`~avvsr.errors.DatasetError` naming the source and
every reason.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from avvsr.data.audio_features import AudioFeatureSettings
from avvsr.data.audio_io import AudioTrack, audio_windows
from avvsr.data.cache import DamagedEntryError, DecodeCache, VideoEntry
from avvsr.data.degradations import DEGRADATIONS, crop_to_scale, degrade
from avvsr.data.io import STREAM_READERS
from avvsr.data.sources import ClipRecord, ClipSource
from avvsr.errors import ClipTooShortError, DatasetError, MediaError, MissingAudioError

log = logging.getLogger(__name__)

AUDIO_POLICIES = ("silence", "require")
DECODE_PATHS = ("cached", "stream")


# ---------------------------------------------------------------------------- reporting
class BadFileLog:
    """Reports each bad file once per kind of error, across this process and its workers.

    The first report of a (path, error type) pair logs a warning; later ones are silent,
    whatever their message says (decord's messages, for one, carry a clock time). Data loader
    workers share the decision through marker files created exclusively in a private
    temporary folder, which the creating process removes when this object is collected.
    """

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="avvsr-bad-files-")
        weakref.finalize(self, _remove_if_owner, self.folder, os.getpid())

    def report(self, error: MediaError) -> None:
        """Log ``error`` (``<path>: <reason>``) unless its file had an error of its type."""
        identity = f"{error.path}\0{type(error).__module__}.{type(error).__qualname__}"
        marker = Path(self.folder) / hashlib.sha256(identity.encode()).hexdigest()
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return
        except OSError:  # the folder is gone (owner exited): report rather than stay silent
            pass
        log.warning("skipping bad file %s", error)


def _remove_if_owner(folder: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------- clips
@dataclass(frozen=True)
class UsableClip:
    """A record that was probed and passed the data set's checks.

    ``cache_key`` names its decode-cache entry; frames ``first .. stop - 1`` are the ones the
    data set reads: the record's event window (all frames without one), at most its
    ``max_frames`` from the window's start; ``height`` x ``width`` is the frame size in pixels.
    """

    record: ClipRecord
    cache_key: str
    first: int
    stop: int
    height: int
    width: int


class SampleRequest(NamedTuple):
    """What a training sampler asks for: clip ``index`` with randomness drawn from ``seed``."""

    index: int
    seed: int


class ClipDataset(Dataset):
    """Shared part of the training and evaluation data sets: checks, loading, skipping.

    ``source`` lists the clips, ``cache`` holds their probe results, audio and (``decode``
    ``"cached"``) frames; ``max_frames`` bounds the frames read of each record, from its
    window's start (None: all); ``workers`` processes build the cache entries
    (0: this one), with a progress bar if ``progress``, within ``cache_budget_gb`` (None:
    no limit but the free space); ``reader`` is how the stream path seeks
    (:func:`avvsr.data.io.read_clip`). ``scale`` and ``degradation`` (``"BI"``/``"BD"``) make
    LR frames; ``audio`` says how each frame's audio feature is made; ``audio_policy``
    ``"silence"``: a file without audio gets silent audio and ``has_audio=False``,
    ``"require"``: such a file is a bad file; ``min_frames`` and ``min_size`` (HR pixels)
    are what a clip needs to be usable; ``item_transform`` maps each loaded item (None: none).
    """

    def __init__(
        self,
        source: ClipSource,
        cache: DecodeCache,
        *,
        scale: int,
        degradation: str = "BI",
        audio: AudioFeatureSettings | None = None,
        audio_policy: str = "silence",
        min_frames: int = 1,
        min_size: int = 1,
        bad_files: BadFileLog | None = None,
        decode: str = "cached",
        max_frames: int | None = None,
        workers: int = 0,
        progress: bool = False,
        cache_budget_gb: float | None = None,
        reader: str = "pyav",
        item_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if decode not in DECODE_PATHS:
            raise ValueError(f"decode must be one of {DECODE_PATHS}, got {decode!r}")
        if reader not in STREAM_READERS:
            raise ValueError(f"reader must be one of {STREAM_READERS}, got {reader!r}")
        if max_frames is not None and max_frames < max(min_frames, 1):
            raise ValueError(f"max_frames {max_frames} is below the {min_frames} frames of a clip")
        if degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")
        self.audio = audio or AudioFeatureSettings()
        if audio_policy not in AUDIO_POLICIES:
            raise ValueError(f"audio policy must be one of {AUDIO_POLICIES}, got {audio_policy!r}")
        self.audio_policy = audio_policy
        if cache.sample_rate != self.audio.sample_rate:
            raise ValueError(
                f"the cache stores audio at {cache.sample_rate} Hz, "
                f"the features need {self.audio.sample_rate} Hz"
            )
        self.source_name = source.name
        self.cache = cache
        self.scale = scale
        self.degradation = degradation
        self.min_frames = max(min_frames, 1)
        self.min_size = max(min_size, scale)
        self.bad_files = bad_files or BadFileLog()
        self.decode = decode
        self.max_frames = max_frames
        self.reader = reader
        self.item_transform = item_transform
        self.log_mel = self.audio.log_mel()
        self._failed: set[int] = set()
        self.clips = self._usable_clips(source, workers, progress, cache_budget_gb)

    def __len__(self) -> int:
        return len(self.clips)

    # ------------------------------------------------------------ checks at build time
    def _usable_clips(
        self, source: ClipSource, workers: int, progress: bool, budget_gb: float | None
    ) -> list[UsableClip]:
        records = list(source)
        entries = self.cache.prepare([record.path for record in records], workers, progress)
        usable, reasons, frame_ranges = [], [], []
        for record, entry in zip(records, entries, strict=True):
            try:
                if isinstance(entry, MediaError):
                    raise entry
                usable.append(self._check(record, entry))
                frame_ranges.append((entry, usable[-1].first, usable[-1].stop))
            except MediaError as error:
                self.bad_files.report(error)
                reasons.append(str(error))
        if not usable:
            listed = "\n  ".join(reasons) if reasons else "(the source lists no clips)"
            raise DatasetError(source.name, f"no usable clip:\n  {listed}")
        if self.decode == "cached":
            self.cache.prepare_frames(frame_ranges, workers, progress, budget_gb)
        return usable

    def _check(self, record: ClipRecord, video: VideoEntry) -> UsableClip:
        """Raise :class:`MediaError` unless ``video`` can give this data set's clips."""
        if video.audio is None and self.audio_policy == "require":
            raise MissingAudioError(
                record.path, "the file has no audio stream (audio_policy is 'require')"
            )
        if min(video.height, video.width) < self.min_size:
            raise MediaError(
                record.path,
                f"frames {video.width}x{video.height} are smaller than the "
                f"{self.min_size}x{self.min_size} this data set needs",
            )
        first, stop = frame_range(video.timestamps_s, record.start_s, record.end_s)
        if stop - first < self.min_frames:
            where = (
                f" in the event window {record.start_s}-{record.end_s} s"
                if (record.start_s, record.end_s) != (None, None)
                else ""
            )
            raise ClipTooShortError(
                record.path, f"{stop - first} frames{where}, a clip needs {self.min_frames}"
            )
        if record.labels is not None:
            labels = _load_labels(record.labels)
            expected = (video.num_frames, video.height, video.width)
            if labels.dtype != np.uint8 or labels.shape != expected:
                raise MediaError(
                    record.labels,
                    f"label maps must be uint8 {expected} like the video's "
                    f"frames ({record.path}), got {labels.dtype} {labels.shape}",
                )
        if self.max_frames is not None:
            stop = min(stop, first + self.max_frames)
        return UsableClip(record, video.key, first, stop, video.height, video.width)

    # ------------------------------------------------------------ loading
    def _video(self, clip: UsableClip) -> VideoEntry:
        """The clip's cache entry; built again if it has gone or is damaged."""
        try:
            return self.cache.open(clip.cache_key)
        except (FileNotFoundError, DamagedEntryError):
            return self.cache.entry(clip.record.path)

    def _frames(self, clip: UsableClip, video: VideoEntry, frames: slice) -> np.ndarray:
        """uint8 ``(T, H, W, 3)`` frames ``frames`` (within the clip's range): from the cache
        on the cached path (unless the disk had no room for them), else from the video."""
        if self.decode == "cached":
            cached = self.cache.frames(video, clip.first, clip.stop)
            if cached is not None:
                return cached[frames.start - clip.first : frames.stop - clip.first]
        return video.read_frames(frames.start, frames.stop, self.reader)

    def _load(
        self,
        clip: UsableClip,
        video: VideoEntry,
        frames: slice,
        rows: slice,
        cols: slice,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Any]:
        """One item from ``video``'s frames ``frames`` cropped to ``rows`` x ``cols`` (HR px).

        ``transform`` is applied to ``gt`` (T, 3, H, W) and ``mask`` (T, 1, H, W) alike,
        before the LR frames are made from ``gt``.
        """
        transform = transform or (lambda images: images)
        pixels = np.array(self._frames(clip, video, frames)[:, rows, cols])  # a writable copy
        gt = transform(torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0))
        item: dict[str, Any] = {
            "lq": degrade(gt, self.scale, self.degradation).clamp_(0.0, 1.0),
            "gt": gt.contiguous(),
            "audio": self._log_mel(video.audio, video.timestamps_s[frames]),
            "has_audio": torch.tensor(video.audio is not None),
            "key": f"{clip.record.key}:{frames.start}",
        }
        if clip.record.labels is not None:
            labels = _load_labels(clip.record.labels)[frames, rows, cols]
            mask = np.isin(labels, clip.record.sounding_ids)
            item["mask"] = transform(torch.from_numpy(mask).unsqueeze(1).float()).contiguous()
            distractors = torch.from_numpy((labels > 0) & ~mask).unsqueeze(1).float()
            item["distractor_mask"] = transform(distractors).contiguous()
        return self.item_transform(item) if self.item_transform is not None else item

    def _log_mel(self, track: AudioTrack | None, timestamps_s: np.ndarray) -> Tensor:
        """``(T, n_mels, n_frames)`` log-mel of the windows around ``timestamps_s``."""
        if track is None:
            track = AudioTrack(np.zeros(0, np.float32), self.audio.sample_rate, 0.0)
        windows = audio_windows(track, timestamps_s, self.audio.window_s)
        with torch.no_grad():
            return self.log_mel(torch.from_numpy(windows))

    def _first_usable(self, candidates: Iterable[int], load: Callable[[int], dict]) -> dict:
        """``load`` the first candidate clip that does not fail; report those that do.

        Runs with one torch thread: the tensors of one clip are too small to share out, and
        on a busy machine several threads spinning over them made loading 10x slower (as
        DataLoader workers do, which torch already limits to one thread).
        """
        with _one_torch_thread():
            for index in candidates:
                if index in self._failed:
                    continue
                try:
                    return load(index)
                except MediaError as error:
                    self._failed.add(index)
                    self.bad_files.report(error)
        raise DatasetError(self.source_name, "no clip could be loaded")


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Limit torch to one intra-op thread inside the block; restore the setting after."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def frame_range(
    timestamps_s: np.ndarray, start_s: float | None, end_s: float | None
) -> tuple[int, int]:
    """Indices ``first, stop`` of the frames with ``start_s <= t < end_s`` (seconds).

    ``None`` bounds are open; ``timestamps_s`` must be increasing.
    """
    first = 0 if start_s is None else int(np.searchsorted(timestamps_s, start_s, "left"))
    stop = (
        len(timestamps_s) if end_s is None else int(np.searchsorted(timestamps_s, end_s, "left"))
    )
    return first, max(first, stop)


def _load_labels(path: Path) -> np.ndarray:
    """Memory-mapped uint8 ``(T, H, W)`` label maps, as a :class:`MediaError` when unreadable."""
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise MediaError(path, f"cannot read the label maps ({error})") from error


# ---------------------------------------------------------------------------- training
def _dihedral(hflip: bool, vflip: bool, transpose: bool) -> Callable[[Tensor], Tensor]:
    """One of the 8 flips/transposes of ``(..., H, W)`` square images."""

    def apply(images: Tensor) -> Tensor:
        if hflip:
            images = images.flip(-1)
        if vflip:
            images = images.flip(-2)
        if transpose:
            images = images.transpose(-1, -2)
        return images

    return apply


class TrainClipDataset(ClipDataset):
    """Random training clips: ``clip_len`` consecutive frames, an HR crop of ``crop_size``.

    Items are indexed by :class:`SampleRequest` (clip index, seed): the seed decides the
    first frame, the crop (top-left at multiples of the scale, so the LR crop is
    ``crop_size / scale``) and, with ``augment``, a random flip/transpose of frames and mask
    together. A plain ``int`` index uses ``seed`` = the index. Video without an event
    window draws from all frames, AVE records from their event window.
    """

    def __init__(
        self,
        source: ClipSource,
        cache: DecodeCache,
        *,
        scale: int,
        clip_len: int = 5,
        crop_size: int = 64,
        augment: bool = True,
        **kwargs: Any,
    ) -> None:
        if crop_size % scale:
            raise ValueError(f"crop_size {crop_size} must be a multiple of the scale {scale}")
        self.clip_len = clip_len
        self.crop_size = crop_size
        self.augment = augment
        super().__init__(
            source, cache, scale=scale, min_frames=clip_len, min_size=crop_size, **kwargs
        )

    def __getitem__(self, request: SampleRequest | int) -> dict[str, Any]:
        index, seed = request if isinstance(request, tuple) else (request, request)
        fallbacks = np.random.default_rng([seed, 0]).permutation(len(self.clips)).tolist()
        return self._first_usable(
            itertools.chain([index], fallbacks), lambda i: self._random_clip(i, seed)
        )

    def _random_clip(self, index: int, seed: int) -> dict[str, Any]:
        clip = self.clips[index]
        rng = np.random.default_rng([seed, 1, index])
        start = int(rng.integers(clip.first, clip.stop - self.clip_len + 1))
        top, left = (
            self.scale * int(rng.integers((size - self.crop_size) // self.scale + 1))
            for size in (clip.height, clip.width)
        )
        flips = rng.integers(2, size=3).astype(bool) if self.augment else (False,) * 3
        return self._load(
            clip,
            self._video(clip),
            slice(start, start + self.clip_len),
            slice(top, top + self.crop_size),
            slice(left, left + self.crop_size),
            _dihedral(*flips),
        )


class ShuffledSeededSampler(Sampler[SampleRequest]):
    """Each epoch, every clip once in a random order, with a seed for its randomness.

    Order and seeds depend only on ``seed`` and the epoch (:meth:`set_epoch`, which
    Lightning calls every epoch, as for ``DistributedSampler``), not on which worker loads
    the sample: the batches are the same with any number of workers.
    """

    def __init__(self, num_clips: int, seed: int = 0) -> None:
        self.num_clips = num_clips
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_clips

    def __iter__(self) -> Iterator[SampleRequest]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_clips)
        seeds = rng.integers(2**62, size=self.num_clips)
        return (SampleRequest(int(i), int(s)) for i, s in zip(order, seeds, strict=True))


# ---------------------------------------------------------------------------- evaluation
class EvalClipDataset(ClipDataset):
    """Whole clips for validation and test: every frame of the clip's range (at most
    ``max_frames`` from its start), the whole frame cropped to a multiple of the scale.

    With ``shuffled_audio`` items also carry ``audio_shuffled`` (T, n_mels, n_frames): the
    log-mel of another clip's soundtrack at this clip's frame times (a fixed derangement
    drawn from ``seed``; silence when the data set has a single clip), the control that
    removes any real audio-visual link.
    """

    def __init__(
        self,
        source: ClipSource,
        cache: DecodeCache,
        *,
        scale: int,
        shuffled_audio: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(source, cache, scale=scale, **kwargs)
        self.audio_partner = _derangement(len(self.clips), seed) if shuffled_audio else None

    def __getitem__(self, index: int) -> dict[str, Any]:
        successors = [(index + step) % len(self.clips) for step in range(len(self.clips))]
        return self._first_usable(successors, self._whole_clip)

    def _whole_clip(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        frames, whole = slice(clip.first, clip.stop), slice(None)
        video = self._video(clip)
        item = self._load(
            clip, video, frames, whole, whole, functools.partial(crop_to_scale, scale=self.scale)
        )
        if self.audio_partner is not None:
            partner = self.audio_partner[index]
            track = self._video(self.clips[partner]).audio if partner != index else None
            item["audio_shuffled"] = self._log_mel(track, video.timestamps_s[frames])
        return item


def _derangement(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` without fixed points (identity for ``n < 2``)."""
    if n < 2:
        return list(range(n))
    order = np.random.default_rng([seed, 2]).permutation(n)
    partner = [0] * n
    for position, index in enumerate(order):
        partner[index] = int(order[(position + 1) % n])
    return partner


def collate_clips(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch (one torch thread, as loading); clips of different shapes
    get a clear error."""
    from torch.utils.data import default_collate

    shapes = {tuple(item["gt"].shape) for item in items}
    if len(shapes) > 1:
        keys = [item["key"] for item in items]
        raise ValueError(
            f"clips {keys} have different shapes {sorted(shapes)} (T, C, H, W) and cannot "
            "share a batch; use an evaluation batch size of 1 for videos of mixed sizes"
        )
    with _one_torch_thread():
        return default_collate(list(items))
