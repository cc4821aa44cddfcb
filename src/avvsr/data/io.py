"""Video decoding: frames with decord (PyAV where decord is wrong), frame times with PyAV.

Frames come from decord (fast random access, per-frame timestamps that follow variable frame
rate). Everything about audio comes from PyAV: decord cannot report the native sample rate and
raises on files without audio (decoding the soundtrack is :mod:`avvsr.data.audio_io`'s). Files
are first opened with PyAV, so that bad input is reported with our error types
(``avvsr.errors``) and decord only sees files FFmpeg can demux.

Frame timestamps come from PyAV (the video packets' presentation times, sorted), not from
decord, which reports garbage times for MPEG-4 Part 2 with B-frames in AVI. Frames are decoded
in order from the first: decord's seeking lands on the wrong frame in some files (MPEG-4 Part 2
with B-frames in any container, H.264 in AVI), so no whole-file read depends on it. decord gets
even in-order decoding of MPEG-TS wrong; PyAV decodes those frames (``PYAV_DECODED_FORMATS``).

Random access (:func:`read_clip`, for training straight from the video): PyAV seeks to the key
frame at or before the first frame wanted and decodes forward, matching frames by presentation
time, in the containers where that is verified right (``PYAV_SEEKABLE``: not AVI); decord's
seek, on request, only where it is verified right (``DECORD_SEEKABLE``: H.264 in mp4/mov and
mkv). Both are checked against in-order decoding by tests/test_random_access.py; other files
are decoded in order from the first frame.

Writing is :mod:`avvsr.data.video_writer`'s.

Time origin: frame timestamps are seconds from the start of the first video stream (the
origin :mod:`avvsr.data.audio_io` measures audio from, so audio that starts late, or early,
stays aligned with the frames).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from avvsr.errors import (
    EmptyVideoError,
    MissingFileError,
    NotAVideoError,
    NoVideoStreamError,
    VideoDecodeError,
)

if TYPE_CHECKING:
    import av.container

PathLike = str | os.PathLike[str]



@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a file without decoding its frames."""

    path: str
    num_frames: int
    fps: float  # average frame rate, frames per second
    width: int
    height: int
    timestamps_s: np.ndarray  # (num_frames,) float64 presentation time of each frame, seconds
    has_audio: bool
    audio_sample_rate: int | None  # native rate of the first audio stream, Hz
    audio_channels: int | None
    index: FrameIndex | None = None  # for random access; None: only in-order decoding is safe


@dataclass(frozen=True)
class FrameIndex:
    """Where each frame lies in the video stream, learnt by demuxing (no decoding).

    ``pts`` int64 ``(T,)``: presentation timestamps of the frames in presentation order, in the
    stream's time base; ``keyframes`` int64 ``(K,)``: indices of the key frames, increasing;
    ``demuxer`` FFmpeg's demuxer name (``"mov,mp4,m4a,3gp,3g2,mj2"``, ...); ``codec`` the
    video codec (``"h264"``, ...).
    """

    pts: np.ndarray
    keyframes: np.ndarray
    demuxer: str
    codec: str

    @property
    def decord_seeks_right(self) -> bool:
        """Whether decord's seek is verified right for this container and codec."""
        return (self.demuxer, self.codec) in DECORD_SEEKABLE

    @property
    def seekable(self) -> bool:
        """Whether PyAV's seek and frame matching are verified right for this container."""
        return self.demuxer in PYAV_SEEKABLE


# --------------------------------------------------------------------------------------------
# Opening files


def _open_container(path: PathLike) -> av.container.InputContainer:
    """Open ``path`` with PyAV, translating failures into :class:`~avvsr.errors.MediaError`."""
    import av

    file = Path(path)
    if not file.exists():
        raise MissingFileError(path, "no such file")
    if not file.is_file():
        raise NotAVideoError(path, "not a regular file")
    try:
        return av.open(str(file), metadata_errors="ignore")
    except av.FFmpegError as error:
        raise NotAVideoError(path, f"FFmpeg cannot open it as media ({error})") from error


def _stream_start_s(stream) -> float:
    """Start time of a PyAV stream, seconds (0 when the container does not say)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _count_decodable_frames(path: PathLike) -> tuple[int, int]:
    """``(promised, decoded)``: the frame count the container's index gives for the first video
    stream (0 if it gives none) and how many frames PyAV decodes before the first error."""
    import av

    decoded = 0
    with _open_container(path) as container:
        promised = container.streams.video[0].frames
        with contextlib.suppress(av.FFmpegError):
            for _ in container.decode(video=0):
                decoded += 1
    return promised, decoded


# decord prefixes its messages with a clock time and its source location, some with the path.
_DECORD_PREFIX = re.compile(r"^(\[[0-9:]+\] \S+:\d+: )?(Error: )?(\[[^\]]*\] ?)?")


def _decord_reason(error: Exception) -> str:
    """decord's message without its clock time, source location or stack trace."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _DECORD_PREFIX.sub("", first_line)


def _unopenable_video_error(path: PathLike, error: Exception) -> VideoDecodeError:
    """Say what is wrong with a file whose video stream decord cannot open."""
    promised, decoded = _count_decodable_frames(path)
    if decoded == 0:
        return EmptyVideoError(path, "the video stream decodes to no frames")
    if promised > decoded:
        return VideoDecodeError(
            path,
            f"truncated or damaged video: the container's index promises {promised} frames, "
            f"only {decoded} decode",
        )
    return VideoDecodeError(path, f"decord cannot read the video stream ({_decord_reason(error)})")


# Containers whose frames decord decodes wrongly even in order (MPEG-TS: it loses the first
# frames and repeats the last); PyAV decodes their frames instead.
PYAV_DECODED_FORMATS = frozenset({"mpegts"})


def _pyav_frames(path: PathLike) -> Iterator[np.ndarray]:
    """uint8 ``(H, W, 3)`` RGB frames of the first video stream, in order, decoded by PyAV."""
    import av

    with _open_container(path) as container:
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as error:
            raise VideoDecodeError(path, f"FFmpeg cannot decode the frames ({error})") from error


class _FrameReader:
    """A fresh decord reader for one file (one per call: decord keeps decoder state in it).

    Works around a decord 0.6 bug: for some frame widths (16, 24, 48, 72 px, ...) FFmpeg pads
    the rows of the RGB frames, and decord's ``get_batch`` then fails on a size check while
    ``next()`` returns the padded rows. Such files are read frame by frame and the padding cut.
    Frames of the containers in ``PYAV_DECODED_FORMATS`` are decoded by PyAV (decord still
    counts them).
    """

    def __init__(self, path: PathLike) -> None:
        with _open_container(path) as container:
            if not container.streams.video:
                raise NoVideoStreamError(path, "the container holds no video stream")
            formats = set(container.format.name.split(","))
            self._pyav = _pyav_frames(path) if formats & PYAV_DECODED_FORMATS else None
            video = container.streams.video[0].codec_context
            self.width, self.height = video.width, video.height
            audio_streams = container.streams.audio
            audio = audio_streams[0].codec_context if audio_streams else None
            self.audio_sample_rate = audio.sample_rate if audio is not None else None
            self.audio_channels = audio.channels if audio is not None else None
        import decord

        decord.logging.set_level(decord.logging.QUIET)
        self.path = path
        try:
            self.reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        except (RuntimeError, AssertionError, decord.DECORDError) as error:
            raise _unopenable_video_error(path, error) from error
        if len(self.reader) == 0:
            raise EmptyVideoError(path, "the video stream has no frames")
        self._rows_padded = False
        self._position: int | None = None  # next frame ``next()`` returns, once known

    def __len__(self) -> int:
        return len(self.reader)

    def run(self, first: int, stop: int) -> np.ndarray:
        """uint8 ``(stop - first, H, W, 3)``: frames ``first .. stop - 1``. ``first`` must be 0
        or the ``stop`` of the previous call (decoding in order), unless decord's seek is
        known right for the file (:attr:`FrameIndex.decord_seeks_right`)."""
        import decord

        if self._pyav is not None:
            frames = list(itertools.islice(self._pyav, stop - first))
            if len(frames) < stop - first:
                reason = f"decoded {first + len(frames)} of {len(self)} frames"
                raise VideoDecodeError(self.path, reason)
            return np.stack(frames)
        indices = list(range(first, stop))
        try:
            if not self._rows_padded:
                return self.reader.get_batch(indices).asnumpy()
        except decord.DECORDError:
            self._rows_padded = True
        try:
            return self._one_by_one(indices)
        except decord.DECORDError as error:
            reason = f"decord cannot decode frames {first}..{stop - 1} ({_decord_reason(error)})"
            raise VideoDecodeError(self.path, reason) from error

    def _one_by_one(self, indices: Sequence[int]) -> np.ndarray:
        """Consecutive frames with ``next()``, rewinding with ``seek_accurate`` only where the
        reader is not already at ``indices[0]`` (after a failed ``get_batch``)."""
        if indices[0] != self._position:
            self.reader.seek_accurate(indices[0])
        frames = [self._unpadded(self.reader.next().asnumpy()) for _ in indices]
        self._position = indices[-1] + 1
        return np.stack(frames)

    def _unpadded(self, raw: np.ndarray) -> np.ndarray:
        """decord's ``(H, W, linesize // W)`` view of a padded frame -> ``(H, W, 3)``."""
        height, width = raw.shape[:2]
        rows = raw.reshape(height, -1)
        if rows.shape[1] < 3 * width:
            raise VideoDecodeError(self.path, f"decord returned a frame of shape {raw.shape}")
        return np.ascontiguousarray(rows[:, : 3 * width]).reshape(height, width, 3)


# --------------------------------------------------------------------------------------------
# Frames


# Frame times may lead the stream's start or pass the container's duration by this much.
FRAME_TIME_SLACK_S = 1.0


def _frame_times_s(
    path: PathLike, num_frames: int
) -> tuple[np.ndarray | None, str | None, FrameIndex | None]:
    """Presentation time of each of ``num_frames`` frames, seconds from the video stream's
    start, in presentation order (the order decord returns frames in): the video packets'
    presentation times, sorted. ``(times, None, index)`` when those are usable, else
    ``(None, why, None)``; ``index`` locates the frames and key frames for random access.
    """
    import av

    with _open_container(path) as container:
        stream = container.streams.video[0]
        pts: list[int | None] = []
        key_pts: list[int | None] = []
        with contextlib.suppress(av.FFmpegError):  # a damaged tail: the count check decides
            for packet in container.demux(stream):
                if packet.size:
                    pts.append(packet.pts)
                    if packet.is_keyframe:
                        key_pts.append(packet.pts)
        time_base = stream.time_base
        start = stream.start_time
        duration_s = container.duration / av.time_base if container.duration else None
        demuxer, codec = container.format.name, stream.codec_context.name
    if len(pts) != num_frames:
        return None, f"{len(pts)} video packets for {num_frames} frames", None
    if time_base is None or any(value is None for value in pts):
        return None, "frames without presentation times", None
    ordered = np.sort(np.asarray(pts, dtype=np.int64))
    origin = start if start is not None else int(ordered[0])
    times = (ordered - origin).astype(np.float64) * float(time_base)
    if num_frames > 1 and not np.all(np.diff(times) > 0):
        return None, "presentation times repeat", None
    last_allowed = (duration_s or 0.0) + FRAME_TIME_SLACK_S
    if not (
        np.all(np.isfinite(times))
        and times[0] >= -FRAME_TIME_SLACK_S
        and (duration_s is None or times[-1] <= last_allowed)
    ):
        return None, f"presentation times {times[0]:.6g} .. {times[-1]:.6g} s out of range", None
    keyframes = np.searchsorted(ordered, np.asarray(key_pts, dtype=np.int64))
    index = FrameIndex(ordered, np.unique(keyframes).astype(np.int64), demuxer, codec)
    return times, None, index


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, rate and size (decord), per-frame timestamps and audio properties (PyAV).

    Timestamps are the video packets' presentation times in presentation order. Where those
    are missing, repeat, are out of range or do not match the frame count, frame ``i`` is
    placed at ``i / fps`` instead, with a warning naming the file (and ``index`` is None).
    """
    reader = _FrameReader(path)
    num_frames = len(reader)
    fps = float(reader.reader.get_avg_fps())
    timestamps_s, problem, index = _frame_times_s(path, num_frames)
    if timestamps_s is None:
        if not np.isfinite(fps) or fps <= 0:
            raise VideoDecodeError(path, f"no usable frame times ({problem}) and no frame rate")
        warnings.warn(
            f"{path}: frame times repaired ({problem}); frame i is placed at i / {fps:g} s",
            stacklevel=2,
        )
        timestamps_s = np.arange(num_frames, dtype=np.float64) / fps
    if not np.isfinite(fps) or fps <= 0:
        span = timestamps_s[-1] - timestamps_s[0]
        fps = (num_frames - 1) / span if span > 0 else 0.0
    return VideoInfo(
        path=str(path),
        num_frames=num_frames,
        fps=fps,
        width=reader.width,
        height=reader.height,
        timestamps_s=timestamps_s,
        has_audio=reader.audio_sample_rate is not None,
        audio_sample_rate=reader.audio_sample_rate,
        audio_channels=reader.audio_channels,
        index=index,
    )


def _check_indices(path: PathLike, indices: Sequence[int], num_frames: int) -> np.ndarray:
    index_array = np.asarray(indices, dtype=np.int64).reshape(-1)
    bad = index_array[(index_array < 0) | (index_array >= num_frames)]
    if bad.size:
        raise IndexError(
            f"{path}: frame indices {bad.tolist()[:8]} out of range for {num_frames} frames"
        )
    return index_array


# Frames decoded per step when reading in order.
DECODE_STEP_FRAMES = 16


def read_frames(path: PathLike, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode frames by index (``None``: all). Returns uint8 ``(T, H, W, 3)`` RGB.

    The video is decoded in order from its first frame up to the largest index (see the
    module's note on seeking); only the requested frames are kept.
    """
    reader = _FrameReader(path)
    num_frames = len(reader)
    if indices is None:
        return reader.run(0, num_frames)
    index_array = _check_indices(path, indices, num_frames)
    if index_array.size == 0:
        return reader.run(0, 1)[:0]
    wanted = np.unique(index_array)
    kept: dict[int, np.ndarray] = {}
    stop = int(wanted[-1]) + 1
    for first in range(0, stop, DECODE_STEP_FRAMES):
        frames = reader.run(first, min(first + DECODE_STEP_FRAMES, stop))
        for index in wanted[(wanted >= first) & (wanted < first + len(frames))]:
            kept[int(index)] = frames[index - first].copy()
    return np.stack([kept[int(index)] for index in index_array])


# (demuxer, codec) pairs whose decord seek gives the right frames: checked against in-order
# decoding, for files PyAV writes, by tests/test_random_access.py.
DECORD_SEEKABLE = frozenset({("mov,mp4,m4a,3gp,3g2,mj2", "h264"), ("matroska,webm", "h264")})
# Demuxers whose packets carry the presentation times PyAV's seek and frame matching rely on
# (checked the same way, every codec tested). Not AVI: it stores none, FFmpeg derives them,
# and H.264 in AVI then comes out as the wrong frames. Other containers decode in order.
PYAV_SEEKABLE = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpegts"})
# Key frames tried, from the nearest before the first frame wanted back, before decoding from
# the first frame (an open GOP can need the previous key frame).
SEEK_ATTEMPTS = 2
STREAM_READERS = ("pyav", "decord")


def read_clip(
    path: PathLike, first: int, stop: int, index: FrameIndex | None, reader: str = "pyav"
) -> np.ndarray:
    """uint8 ``(stop - first, H, W, 3)``: frames ``first .. stop - 1``, by random access.

    ``reader`` ``"pyav"``: PyAV seeks to the key frame at or before ``first`` and decodes
    forward (faster than decord here, which builds a reader per call: ``make bench-data``);
    ``"decord"``: decord's seek where it is known right (``DECORD_SEEKABLE``), PyAV's
    elsewhere. Without an
    ``index`` (no usable frame times) or where PyAV's seek is not known right
    (``PYAV_SEEKABLE``), the video is decoded in order from its first frame.
    """
    if reader not in STREAM_READERS:
        raise ValueError(f"reader must be one of {STREAM_READERS}, got {reader!r}")
    if index is None or not index.seekable:
        return read_frames(path, range(first, stop))
    _check_indices(path, [first, stop - 1], len(index.pts))
    if reader == "decord" and index.decord_seeks_right:
        return _FrameReader(path).run(first, stop)
    earlier = index.keyframes[index.keyframes <= first][::-1]
    for keyframe in earlier[:SEEK_ATTEMPTS]:
        frames = _decode_after_seek(path, int(index.pts[keyframe]), index.pts[first:stop])
        if frames is not None:
            return frames
    return read_frames(path, range(first, stop))


def _decode_after_seek(path: PathLike, seek_pts: int, wanted_pts: np.ndarray) -> np.ndarray | None:
    """The frames presented at ``wanted_pts`` (increasing, the stream's time base), decoded
    after seeking to the key frame at or before ``seek_pts``; None if some of them do not
    come out (the seek landed after them, or decoded frames carry no presentation time)."""
    import av

    frames: list[np.ndarray | None] = [None] * len(wanted_pts)
    with _open_container(path) as container:
        stream = container.streams.video[0]
        try:
            container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    return None
                if frame.pts > wanted_pts[-1]:
                    break
                position = int(np.searchsorted(wanted_pts, frame.pts))
                if position < len(wanted_pts) and wanted_pts[position] == frame.pts:
                    frames[position] = frame.to_ndarray(format="rgb24")
        except av.FFmpegError as error:
            raise VideoDecodeError(path, f"FFmpeg cannot decode the frames ({error})") from error
    if any(frame is None for frame in frames):
        return None
    return np.stack(frames)


def iter_frame_chunks(path: PathLike, chunk: int) -> Iterator[np.ndarray]:
    """Decode the whole video in order, ``chunk`` frames at a time: uint8 ``(<=chunk, H, W, 3)``.

    Only one chunk is held at a time, so arbitrarily long videos stream in bounded memory.
    """
    if chunk < 1:
        raise ValueError(f"{path}: chunk must be a positive number of frames, got {chunk}")
    reader = _FrameReader(path)
    for first in range(0, len(reader), chunk):
        yield reader.run(first, min(first + chunk, len(reader)))
