"""Audio decoding (PyAV): a file's first audio stream as mono float32 at a chosen rate.

One decoder, used two ways. :class:`AudioReader` decodes forward as its samples are asked for
and keeps only those a later request can still need, so its memory does not grow with the
length of the soundtrack (``avvsr-upscale`` cuts each frame's window from it);
:func:`read_audio` reads a reader to its end into an :class:`AudioTrack` (the data sets' cache
of each file's audio). Damaged timestamps and packets are repaired and reported in one place
(:class:`_AudioTimeline`), so both give the same samples, bit for bit. Each frame's window is
cut by :func:`audio_windows` (from a track) or :meth:`AudioReader.windows`, the same way.

Time origin: ``start_s`` is the first sample's presentation time, seconds from the start of
the first video stream (the origin of :func:`avvsr.data.io.probe_video`'s frame times), so
audio that starts late (or early) stays aligned with the frames.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from avvsr.data.io import PathLike, _open_container, _stream_start_s
from avvsr.errors import MissingAudioError

# Timestamp gaps shorter than this are rounding in the container's time base, not lost audio.
AUDIO_GAP_TOLERANCE_S = 0.005
# A stream that ends this much before its declared end is reported as truncated (FFmpeg's AVI
# muxer declares 4 AC3 frames, 0.128 s, too many next to video with B-frames).
AUDIO_TRUNCATION_TOLERANCE_S = 0.25
# A forward jump in timestamps longer than this is a broken timestamp, not a gap in the audio.
AUDIO_MAX_GAP_S = 10.0
# Native-rate samples handed to the resampler at once (per-frame calls cost more than the work).
RESAMPLE_BLOCK = 65536


@dataclass(frozen=True)
class AudioTrack:
    """A decoded soundtrack: mono float32 samples and where they start on the video's clock."""

    samples: np.ndarray  # float32 (N,), mono, in [-1, 1]
    sample_rate: int  # Hz
    start_s: float  # presentation time of samples[0], seconds from the video start

    @property
    def duration_s(self) -> float:
        """Length of the track, seconds."""
        return len(self.samples) / self.sample_rate


# --------------------------------------------------------------------------------------------
# Decoded frames to mono samples


def _frame_channels(frame) -> np.ndarray:
    """float32 ``(C, n)`` samples of a decoded audio frame, integers scaled to [-1, 1)."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: (1, n * C), channels interleaved
        data = data.reshape(-1, len(frame.layout.channels)).T
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128) / 128
    if data.dtype.kind == "i":
        return data.astype(np.float32) / -float(np.iinfo(data.dtype).min)
    return data.astype(np.float32)


# Low-frequency effects channels: left out of the downmix, as FFmpeg's default matrix does.
LFE_CHANNELS = frozenset({"LFE", "LFE2"})


def _downmix(channels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Mono ``(n,)``: the mean of the ``(C, n)`` channels named ``names``, LFE left out.

    A sound on every main channel keeps its level whatever the layout, and the result never
    exceeds the loudest channel (no clipping), unlike FFmpeg's default matrix, whose gains
    (up to 1 per channel) add up to more than 1 for stereo and surround.
    """
    main = [i for i, name in enumerate(names) if name not in LFE_CHANNELS]
    return channels[main or list(range(len(names)))].mean(axis=0)


# --------------------------------------------------------------------------------------------
# The timeline: where decoded frames go, and what was repaired


@dataclass
class _Jumps:
    """Where timestamps disagree with the decoded sample count: ``(time s, size s)`` each."""

    events: list[tuple[float, float]]

    def describe(self, what: str, outcome: str) -> str | None:
        """One line for the warning, or None if there were none."""
        if not self.events:
            return None
        first_s, _ = self.events[0]
        largest = max(size for _, size in self.events)
        return (
            f"timestamps {what} {len(self.events)} time(s) (first at {first_s:.3f} s, "
            f"by up to {largest:.3f} s): {outcome}"
        )


class _AudioTimeline:
    """Decoded frames laid end to end at the native rate, downmixed and resampled as they come.

    The decoded samples are the truth: every one is kept, in decode order. Timestamps only add
    silence where they jump forward by a plausible amount (after a skipped packet, or a gap in
    the stream); where they go back or jump implausibly far they are ignored, and recorded.
    The resampled samples wait in ``output`` until :meth:`take` hands them on.
    """

    def __init__(self, sample_rate: int, latest_end_s: float | None) -> None:
        import av

        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self.sample_rate = sample_rate
        self.latest_end_s = latest_end_s  # no audio is placed after this, seconds (if known)
        self.native_rate: int | None = None
        self.output: list[np.ndarray] = []  # resampled mono samples not taken yet
        self.pending: list[np.ndarray] = []  # native-rate mono samples not resampled yet
        self.pending_length = 0
        self.start_s: float | None = None  # presentation time of the first sample, seconds
        self.length = 0  # samples placed, at the native rate
        self.last_frame = 0  # samples of the last frame placed, at the native rate
        self.next_s = 0.0  # where the last frame's timestamp says the next one starts, s
        self.packets_end_s: float | None = None  # latest packet end (pts + duration), seconds
        self.skipped_since_s: float | None = None  # first skipped packet since the last frame
        self.skipped: list[str] = []
        self.gaps = _Jumps([])
        self.backs = _Jumps([])
        self.ignored = _Jumps([])
        self.other_rates = 0  # frames dropped because their rate differs from the first's

    @property
    def end_s(self) -> float:
        """Presentation time just after the last sample placed, seconds."""
        return (self.start_s or 0.0) + self.length / (self.native_rate or 1)

    @property
    def timestamps_agree(self) -> bool:
        return not (self.backs.events or self.ignored.events)

    def skip(self, time_s: float | None, error: Exception) -> None:
        """Record that the packet at ``time_s`` failed to decode."""
        where = f"{time_s:.3f} s" if time_s is not None else "an unknown time"
        self.skipped.append(f"packet at {where} skipped ({error})")
        if self.skipped_since_s is None and time_s is not None:
            self.skipped_since_s = time_s

    def add(self, frame) -> None:
        """Place one decoded frame after the previous one (and any silence it is due)."""
        if self.native_rate is None:
            self.native_rate = frame.sample_rate
        if frame.sample_rate != self.native_rate:
            self.other_rates += 1
            return
        names = [channel.name for channel in frame.layout.channels]
        mono = _downmix(_frame_channels(frame), names)
        time_s = None
        if frame.pts is not None and frame.time_base is not None:
            time_s = float(frame.pts * frame.time_base)
        if self.start_s is None:
            known = [t for t in (time_s, self.skipped_since_s) if t is not None]
            self.start_s = self.next_s = min(known, default=0.0)
        if time_s is not None:
            self._follow(time_s)
            self.next_s = time_s
        self.next_s += len(mono) / self.native_rate
        self.skipped_since_s = None
        self._feed(mono)
        self.last_frame = len(mono)

    def _follow(self, time_s: float) -> None:
        """Compare a frame's timestamp with where the previous frame ended."""
        jump = time_s - self.next_s
        here = self.end_s
        if jump < -AUDIO_GAP_TOLERANCE_S:
            self.backs.events.append((here, -jump))
        elif jump > AUDIO_GAP_TOLERANCE_S:
            too_late = self.latest_end_s is not None and here + jump > self.latest_end_s
            if jump > AUDIO_MAX_GAP_S or too_late:
                self.ignored.events.append((here, jump))
                return
            if self.skipped_since_s is None:
                self.gaps.events.append((here, jump))
            self._feed(np.zeros(round(jump * self.native_rate), dtype=np.float32))

    def _feed(self, mono: np.ndarray) -> None:
        """Queue native-rate samples; resample them in blocks of ``RESAMPLE_BLOCK`` or more."""
        self.pending.append(mono.astype(np.float32, copy=False))
        self.pending_length += len(mono)
        self.length += len(mono)
        if self.pending_length >= RESAMPLE_BLOCK:
            self._resample_pending()

    def _resample_pending(self) -> None:
        import av

        if self.pending_length:
            block = np.concatenate(self.pending)[None, :]
            frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
            frame.sample_rate = self.native_rate
            self._keep(self.resampler.resample(frame))
        self.pending, self.pending_length = [], 0

    def _keep(self, frames) -> None:
        self.output.extend(out.to_ndarray().reshape(-1) for out in frames)

    def take(self) -> list[np.ndarray]:
        """The resampled float32 ``(n,)`` pieces made since the last call, in order."""
        pieces, self.output = self.output, []
        return pieces

    def finish(self) -> None:
        """Resample what is still queued and flush the resampler (the end of the stream)."""
        self._resample_pending()
        self._keep(self.resampler.resample(None))

    def trim_s(self) -> float:
        """Seconds to cut off the end once the stream has ended: where the timestamps agree
        with the samples, those past the packets' recorded end (an encoder's end padding,
        where the container records it), at most the last frame."""
        if self.packets_end_s is None or not self.timestamps_agree:
            return 0.0
        last_frame_s = self.last_frame / self.native_rate
        return min(max(0.0, self.end_s - self.packets_end_s), last_frame_s)

    def output_length(self, trim_s: float) -> int:
        """Samples at ``sample_rate`` of the track without its last ``trim_s`` seconds."""
        kept = max(0.0, self.length / (self.native_rate or 1) - trim_s)
        return round(kept * self.sample_rate)

    def certain_length(self) -> int:
        """Samples at ``sample_rate`` that no trim of the end can remove, whatever is still to
        come: those before the last frame placed (a trim is at most the stream's last frame),
        less one for rounding."""
        before_last_s = (self.length - self.last_frame) / (self.native_rate or 1)
        return max(0, math.floor(before_last_s * self.sample_rate) - 1)

    def problems(self) -> list[str]:
        """What went wrong, one line each (empty for an intact stream)."""
        lines = [
            self.gaps.describe("jump forward", "filled with silence"),
            self.backs.describe("go back", "ignored, the decoded samples kept in order"),
            self.ignored.describe("jump implausibly far", "ignored"),
        ]
        if self.other_rates:
            lines.append(f"{self.other_rates} frame(s) at another sample rate dropped")
        return self.skipped + [line for line in lines if line]


def _decode_packets(container, stream, timeline: _AudioTimeline) -> Iterator[None]:
    """Demux and decode ``stream`` into ``timeline``, yielding after each packet; damaged
    packets are skipped. Records the latest packet end in ``timeline.packets_end_s``."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as error:  # the container itself is damaged from here on
            timeline.skipped.append(f"demuxing stopped ({error})")
            return
        time_s = float(packet.pts * packet.time_base) if packet.pts is not None else None
        if time_s is not None and packet.duration:
            end_s = time_s + float(packet.duration * packet.time_base)
            timeline.packets_end_s = max(timeline.packets_end_s or end_s, end_s)
        try:
            frames = packet.decode()
        except av.FFmpegError as error:
            timeline.skip(time_s, error)
        else:
            for frame in frames:
                timeline.add(frame)
        yield


def _declared_end_s(stream) -> float | None:
    """Where the container's header says the stream ends, seconds (None if it does not)."""
    if stream.duration is not None and stream.time_base is not None:
        start = stream.start_time or 0
        return float((start + stream.duration) * stream.time_base)
    tag = stream.metadata.get("DURATION")  # Matroska: end time of the track, "HH:MM:SS.fff"
    if tag:
        with contextlib.suppress(ValueError):
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return None


# --------------------------------------------------------------------------------------------
# Reading


class AudioReader:
    """The first audio stream of ``path``, decoded forward as its samples are asked for; a
    context manager (:meth:`close`).

    The samples are :func:`read_audio`'s, bit for bit: mono float32 in [-1, 1] at
    ``sample_rate`` Hz, sample 0 presented at :attr:`start_s` (seconds from the video stream's
    start). :meth:`samples` ``(first, stop)`` decodes only as far as ``stop`` needs and keeps
    only the samples from ``first`` on (and at most one resampling block of
    :data:`RESAMPLE_BLOCK` native-rate samples decoded beyond ``stop``), so requests that move
    forward (each starting at or after the previous one's start, overlapping it or not) decode
    the file once, in memory that does not grow with the soundtrack's length. A request that
    starts before the samples kept decodes the file again from its start
    (:attr:`rewinds` counts those).
    The track's end (and its trim, see :func:`read_audio`) is known once decoding reaches it;
    samples past it are zeros. Damage is reported as :func:`read_audio` reports it, with one
    warning naming the file when decoding reaches the end, or, for the part decoded, at
    :meth:`close`.
    Raises, when opened, :class:`~avvsr.errors.MissingAudioError` without an audio stream or
    when nothing in it decodes, and the errors of :mod:`avvsr.data.io` for files that are
    missing or not media.
    """

    def __init__(self, path: PathLike, sample_rate: int = 16000) -> None:
        if sample_rate <= 0:
            raise ValueError(f"{path}: sample_rate must be positive, got {sample_rate}")
        self.path = path
        self.sample_rate = sample_rate
        self.rewinds = 0
        self._open()

    def _open(self) -> None:
        """Open the file and decode up to its first audio frame (which fixes ``start_s``)."""
        self._container = _open_container(self.path)
        try:
            container = self._container
            if not container.streams.audio:
                raise MissingAudioError(self.path, "the container holds no audio stream")
            stream = container.streams.audio[0]
            video_start_s = (
                _stream_start_s(container.streams.video[0]) if container.streams.video else 0.0
            )
            self._declared_end_s = _declared_end_s(stream)
            self._timeline = _AudioTimeline(self.sample_rate, self._declared_end_s)
            self._packets = _decode_packets(container, stream, self._timeline)
            self._parts: list[np.ndarray] = []  # the samples [_first, _produced), in pieces
            self._first = 0  # index of the first sample kept (or to keep, when produced)
            self._produced = 0  # samples taken from the timeline so far
            self._length: int | None = None  # samples in the track, once the end is reached
            while self._timeline.start_s is None and self._length is None:
                self._step()
            if self._timeline.length == 0:
                raise MissingAudioError(self.path, "the audio stream decodes to no samples")
        except BaseException:
            self._close_container()
            raise
        self.start_s = self._timeline.start_s - video_start_s

    @property
    def kept(self) -> int:
        """Samples held now (float32: 4 bytes each)."""
        return sum(len(part) for part in self._parts)

    def samples(self, first: int, stop: int) -> np.ndarray:
        """float32 ``(stop - first,)``: samples ``first .. stop - 1`` (indices from the track's
        first sample; zeros before it and after its end). Samples before ``first`` are
        dropped (asking for them again decodes the file again)."""
        if stop < first:
            raise ValueError(f"{self.path}: samples {first}..{stop} run backwards")
        wanted = np.zeros(stop - first, dtype=np.float32)
        low, high = max(first, 0), max(stop, 0)
        if low >= high or (self._length is not None and low >= self._length):
            return wanted  # before the track's start or after its end
        if low < self._first:
            self._rewind()
        self._drop_before(low)
        while self._length is None and self._known() < high:
            self._step()
        end = min(high, self._known())
        if end > low:  # the samples kept start at low now
            wanted[low - first : end - first] = self._joined()[: end - low]
        return wanted

    def windows(self, timestamps_s: np.ndarray, window_s: float) -> np.ndarray:
        """float32 ``(T, L)``: the window of ``window_s`` seconds centred on each timestamp
        (seconds, the video's clock), as :func:`audio_windows` cuts it from the whole track.
        Samples before the earliest window's are dropped."""
        index = _window_indices(timestamps_s, self.start_s, self.sample_rate, window_s)
        if index.size == 0:
            return np.zeros(index.shape, dtype=np.float32)
        first = int(index[:, 0].min())
        samples = self.samples(first, int(index[:, -1].max()) + 1)
        index -= first
        return samples[index]

    def read_to_end(self) -> np.ndarray:
        """float32 ``(N,)``: every sample from the first one kept to the end of the track."""
        while self._length is None:
            self._step()
        return self._joined()[: max(0, self._length - self._first)]

    def close(self) -> None:
        """Stop decoding; warn about the damage found so far if decoding did not reach the
        end (where it did, the warning was given then)."""
        if self._container is not None:
            decoded_s = self._timeline.length / self._timeline.native_rate
            self._report(self._timeline.problems(), f" (in the first {decoded_s:.3f} s decoded)")
        self._close_container()

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_container()

    def _step(self) -> None:
        """Decode one more packet (or, at the end of the stream, finish the track)."""
        if self._packets is None:
            raise ValueError(f"{self.path}: the audio reader is closed")
        try:
            next(self._packets)
        except StopIteration:
            self._end()
        else:
            self._take_output()

    def _take_output(self) -> None:
        """Keep the timeline's new samples from ``_first`` on, clipped to [-1, 1]."""
        for piece in self._timeline.take():
            start = self._produced
            self._produced += len(piece)
            wanted = piece[max(0, self._first - start) :]
            if len(wanted):
                self._parts.append(np.clip(wanted, -1.0, 1.0))

    def _end(self) -> None:
        """The stream has ended: flush the resampler, trim the end, report the damage."""
        timeline = self._timeline
        self._close_container()
        if timeline.length == 0:
            self._length = 0
            return  # nothing decoded: opening raises
        timeline.finish()
        self._take_output()
        trim_s = timeline.trim_s()
        self._length = min(self._produced, timeline.output_length(trim_s))
        self._parts = [self._joined()[: max(0, self._length - self._first)]]
        problems = timeline.problems()
        end_s = timeline.end_s - trim_s
        declared_end_s = self._declared_end_s
        if declared_end_s is not None and end_s < declared_end_s - AUDIO_TRUNCATION_TOLERANCE_S:
            problems.append(
                f"audio ends at {end_s:.3f} s but the file declares {declared_end_s:.3f} s"
            )
        self._report(problems)

    def _report(self, problems: list[str], where: str = "") -> None:
        """One warning naming the file and (at most three of) ``problems``, if any."""
        if problems:
            more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            summary = "; ".join(problems[:3]) + more
            warnings.warn(f"{self.path}: damaged audio{where}: {summary}", stacklevel=2)

    def _known(self) -> int:
        """How many of the track's samples are final: all, once the end is reached."""
        if self._length is not None:
            return self._length
        return min(self._produced, self._timeline.certain_length())

    def _joined(self) -> np.ndarray:
        """The samples kept, as one float32 array (joined once, then kept joined)."""
        if len(self._parts) != 1:
            self._parts = [np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)]
        return self._parts[0]

    def _drop_before(self, index: int) -> None:
        """Forget the samples before ``index``, for good."""
        if index <= self._first:
            return
        excess = index - self._first
        while self._parts and excess >= len(self._parts[0]):
            excess -= len(self._parts.pop(0))
        if self._parts and excess:
            self._parts[0] = self._parts[0][excess:].copy()  # no view keeps the dropped ones
        self._first = index

    def _rewind(self) -> None:
        """Decode the file again from its start (what the first pass found is reported by
        the second)."""
        self._close_container()
        self.rewinds += 1
        self._open()

    def _close_container(self) -> None:
        if self._container is not None:
            self._packets = None
            self._container.close()
            self._container = None


def read_audio(path: PathLike, sample_rate: int = 16000) -> AudioTrack:
    """Decode the first audio stream to mono float32 at ``sample_rate`` Hz (PyAV).

    Channels are averaged, LFE left out (:func:`_downmix`: a tone keeps its level in every
    layout, nothing clips)
    and the rate converted by FFmpeg's resampler. ``start_s`` is the first sample's time,
    seconds from the video stream's start (negative if the audio starts first).
    The decoded samples are the truth: all are kept, end to end in decode order. Timestamps
    add silence only where they jump forward (a skipped packet, a gap), by at most
    ``AUDIO_MAX_GAP_S`` and not past the stream's declared end; where they go back (an
    overlap) or jump further, they are ignored. Where they agree with the samples, the end
    is trimmed to the packets' recorded end, by at most the last frame: this removes an
    encoder's end padding where the container records it (mp4 does; mkv does not, so AAC
    in mkv can run up to one AAC frame, 1024 samples at the native rate, long).
    Damage is not fatal; it is reported with one warning naming the file: a packet that fails
    to decode is skipped (its time becomes silence, as FFmpeg's command line skips it),
    timestamps that disagree with the samples are described, and a stream that ends before
    its declared end (a truncated file) is kept as far as it goes.
    Raises :class:`MissingAudioError` without an audio stream, or when nothing in it decodes.
    The whole track is held in memory (4 bytes a sample: 230 MB an hour at 16 kHz);
    :class:`AudioReader` gives the same samples window by window.
    """
    with AudioReader(path, sample_rate) as reader:
        samples = reader.read_to_end()
    return AudioTrack(samples=samples, sample_rate=sample_rate, start_s=reader.start_s)


# --------------------------------------------------------------------------------------------
# Per-frame windows


def _window_indices(
    timestamps_s: np.ndarray, start_s: float, sample_rate: int, window_s: float
) -> np.ndarray:
    """int64 ``(T, L)``, ``L = round(window_s * sample_rate)``: the index in a track starting
    at ``start_s`` (seconds) of sample ``j`` of the window centred on timestamp ``i``
    (seconds), ``(j - L // 2)`` samples from the centre (rounded to the nearest sample)."""
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    times = np.asarray(timestamps_s, dtype=np.float64).reshape(-1)
    length = round(window_s * sample_rate)
    centres = np.rint((times - start_s) * sample_rate).astype(np.int64)
    return centres[:, None] - length // 2 + np.arange(length)[None, :]


def audio_windows(track: AudioTrack, timestamps_s: np.ndarray, window_s: float) -> np.ndarray:
    """Cut a window of ``window_s`` seconds centred on each timestamp; zeros where no audio.

    Returns float32 ``(T, L)`` with ``L = round(window_s * sample_rate)``: sample ``j`` of row
    ``i`` is the audio at time ``timestamps_s[i] + (j - L // 2) / sample_rate`` (seconds,
    rounded to the nearest sample).
    """
    sample_index = _window_indices(timestamps_s, track.start_s, track.sample_rate, window_s)
    inside = (sample_index >= 0) & (sample_index < len(track.samples))
    if len(track.samples) == 0:
        return np.zeros(sample_index.shape, dtype=np.float32)
    gathered = track.samples[np.clip(sample_index, 0, len(track.samples) - 1)]
    return np.where(inside, gathered, np.float32(0.0)).astype(np.float32, copy=False)
