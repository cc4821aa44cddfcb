"""Data sets of aligned (LR, HR, audio, mask) clips, read through the decode cache.

Items follow the batch contract of ``docs/ARCHITECTURE.md`` (one clip, no batch dim):
``lq`` (T, 3, h, w) and ``gt`` (T, 3, H, W) float32 in [0, 1]; ``audio`` (T, n_mels,
n_frames) log-mel of each frame's ``window_s`` window centred on its timestamp; ``has_audio``
bool; ``mask`` (T, 1, H, W) in {0, 1} when the source knows the sounding objects and
``distractor_mask`` (T, 1, H, W), its silent objects, with it; ``key``
``"<relative path>:<first frame index>"``. LR frames are made on the fly:
``degrade(gt, scale, degradation)`` clamped to [0, 1].

Bad files are found when a data set is built: every record is decoded once into the cache
(a hit costs a hash and a small JSON read), so unreadable, truncated or too-short files and
files without audio (with ``audio_policy="require"``) are reported once per file and
kind of error, with a ``logging`` warning and left out. A file that fails later, in
``__getitem__`` (its cache entry gone and the file damaged since), is reported and replaced
by another clip drawn deterministically from the sample's seed. A data set with no usable
file raises :class:`~avvsr.errors.DatasetError` naming the source and every reason.
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
from avvsr.data.cache import DecodeCache, DecodedVideo
from avvsr.data.degradations import DEGRADATIONS, crop_to_scale, degrade
from avvsr.data.io import AudioTrack, audio_windows
from avvsr.data.sources import ClipRecord, ClipSource
from avvsr.errors import ClipTooShortError, DatasetError, MediaError, MissingAudioError

log = logging.getLogger(__name__)

AUDIO_POLICIES = ("silence", "require")


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
    """A record that decoded and passed the data set's checks.

    ``cache_key`` names its decode-cache entry; frames ``first .. stop - 1`` lie in the
    record's event window (all frames without one); ``height`` x ``width`` is the frame
    size in pixels.
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

    ``source`` lists the clips, ``cache`` decodes them; ``scale`` and ``degradation``
    (``"BI"``/``"BD"``) make LR frames; ``audio`` says how each frame's audio feature is
    made; ``audio_policy`` ``"silence"``: a file without audio gets silent audio and
    ``has_audio=False``, ``"require"``: such a file is a bad file; ``min_frames`` and
    ``min_size`` (HR pixels) are what a clip needs to be usable.
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
    ) -> None:
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
        self.log_mel = self.audio.log_mel()
        self._failed: set[int] = set()
        self.clips = self._usable_clips(source)

    def __len__(self) -> int:
        return len(self.clips)

    # ------------------------------------------------------------ checks at build time
    def _usable_clips(self, source: ClipSource) -> list[UsableClip]:
        usable, reasons = [], []
        for record in source:
            try:
                usable.append(self._check(record, self.cache.get(record.path)))
            except MediaError as error:
                self.bad_files.report(error)
                reasons.append(str(error))
        if not usable:
            listed = "\n  ".join(reasons) if reasons else "(the source lists no clips)"
            raise DatasetError(source.name, f"no usable clip:\n  {listed}")
        return usable

    def _check(self, record: ClipRecord, video: DecodedVideo) -> UsableClip:
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
            if labels.dtype != np.uint8 or labels.shape != video.frames.shape[:3]:
                raise MediaError(
                    record.labels,
                    f"label maps must be uint8 {video.frames.shape[:3]} like the video's "
                    f"frames ({record.path}), got {labels.dtype} {labels.shape}",
                )
        return UsableClip(record, video.key, first, stop, video.height, video.width)

    # ------------------------------------------------------------ loading
    def _video(self, clip: UsableClip) -> DecodedVideo:
        """The clip's cached video; decoded again if its cache entry has gone."""
        try:
            return self.cache.open(clip.cache_key)
        except FileNotFoundError:
            return self.cache.get(clip.record.path)

    def _load(
        self,
        clip: UsableClip,
        video: DecodedVideo,
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
        pixels = np.array(video.frames[frames, rows, cols])  # a writable copy
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
        return item

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
        max_frames: int | None = None,
        shuffled_audio: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(source, cache, scale=scale, **kwargs)
        self.max_frames = max_frames
        self.audio_partner = _derangement(len(self.clips), seed) if shuffled_audio else None

    def __getitem__(self, index: int) -> dict[str, Any]:
        successors = [(index + step) % len(self.clips) for step in range(len(self.clips))]
        return self._first_usable(successors, self._whole_clip)

    def _whole_clip(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        stop = clip.stop
        if self.max_frames is not None:
            stop = min(stop, clip.first + self.max_frames)
        frames, whole = slice(clip.first, stop), slice(None)
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
