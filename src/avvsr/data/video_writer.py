"""Writing videos with PyAV: frames at a fixed rate or at given times, with audio; one writer.

:class:`VideoWriter` writes every video the package makes: synthetic clips (``avvsr-synth``),
panels (``avvsr-visualize``), benchmark and test media (:func:`write_video`) and upscaled videos
(``avvsr-upscale``, :mod:`avvsr.upscaling`).

- **Frames**: uint8 RGB ``(T, H, W, 3)``, encoded at ``index / fps`` seconds, or at the
  presentation times ``pts`` in ``time_base`` given (a source's, so variable frame rate is kept).
- **Audio**, one of: float32 samples handed to :meth:`VideoWriter.write_audio` and encoded
  (``audio_sample_rate``), or the first audio stream of a source file (``audio_source``),
  copied packet by packet where the output container takes its codec and re-encoded with the
  container's default audio codec otherwise, interleaved with the frames as they arrive.
- **Atomicity**: the file is written through :func:`avvsr.atomic.atomic_write`: under a hidden
  temporary name in the same folder, renamed into place by :meth:`VideoWriter.close` (or a clean
  exit from the ``with`` block), deleted on an exception or SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from avvsr.errors import MissingAudioError

PathLike = str | os.PathLike[str]

# FFmpeg's default layout for each channel count that AAC encodes (mono to 5.1).
DEFAULT_AUDIO_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1"}
# Encoders that take a constant-rate-factor quality setting.
CRF_CODECS = frozenset({"libx264", "libx265", "libvpx", "libvpx-vp9", "libaom-av1"})


def pixel_format_for(width: int, height: int) -> str:
    """``yuv420p`` (what every player takes) when both sides are even, else ``yuv444p``."""
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


class VideoWriter:
    """Write frames (and audio) to ``path`` with PyAV; a context manager.

    Frames of ``width`` x ``height`` px are presented at ``index / fps`` seconds, or, with
    ``pts`` (int ``(T,)``, increasing) and ``time_base`` (seconds per tick), frame ``i`` at
    ``pts[i] * time_base`` (``fps`` is then the stream's nominal rate).
    ``codec`` None is H.264 where the container takes it, else the container's default.
    Frame sizes must be multiples of the pixel format's chroma subsampling (even for
    ``yuv420p``; anything for ``yuv444p`` or ``gray``; :func:`pixel_format_for` picks one).
    ``crf`` applies to encoders that take one (x264, x265, VP9, AV1); ``crf=0`` with x264 is
    lossless in the encoded pixel format (so ``yuv444p`` loses only the RGB-to-YUV rounding,
    and ``gray``, stored full range, keeps grey content exactly). ``lookahead`` sets x264's
    rate-control lookahead (frames; None: x264's default, 40), which most of its memory grows
    with.

    Audio: ``audio_sample_rate`` (Hz) opens an ``audio_codec`` stream of ``audio_channels``
    channels (layout: FFmpeg's default for the count, mono ... 5.1, or ``audio_layout``) that
    :meth:`write_audio` feeds; or ``audio_source`` names a file whose first audio stream is
    carried over (:attr:`audio_mode` says how). Audio packets whose decoding times do not
    increase (repeated, going back or missing: muxers refuse them) are moved to just after the
    packet before them (its time plus its duration), pts with dts;
    :attr:`audio_packets_retimed` counts them.
    """

    def __init__(
        self,
        path: PathLike,
        fps: float,
        width: int,
        height: int,
        *,
        pts: np.ndarray | None = None,
        time_base: Fraction | None = None,
        codec: str | None = None,
        crf: int = 18,
        pix_fmt: str = "yuv420p",
        lookahead: int | None = None,
        audio_sample_rate: int | None = None,
        audio_channels: int = 1,
        audio_codec: str = "aac",
        audio_layout: str | None = None,
        audio_source: PathLike | None = None,
    ) -> None:
        import av
        from av.video.reformatter import ColorRange

        from avvsr.atomic import atomic_write

        self.path = Path(path)
        if fps <= 0:
            raise ValueError(f"{self.path}: fps must be positive, got {fps}")
        if (pts is None) != (time_base is None):
            raise ValueError(f"{self.path}: pts and time_base go together")
        if audio_sample_rate is not None and audio_source is not None:
            raise ValueError(f"{self.path}: audio from samples or from a source file, not both")
        _check_frame_size(self.path, width, height, pix_fmt)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"{self.path}: the folder does not exist")
        self.width, self.height = width, height
        rate = Fraction(fps).limit_denominator(10_000)  # 29.97... -> 30000/1001
        self._pts = pts
        self._time_base = time_base if time_base is not None else 1 / rate
        self._frames_written = 0
        self._closed = False
        self._audio: _EncodedAudio | _SourceAudio | None = None
        self._atomic = contextlib.ExitStack()
        self._temporary = self._atomic.enter_context(atomic_write(self.path))
        self._container = None
        try:
            self._container = av.open(str(self._temporary), mode="w")
            if codec is None:
                supported = self._container.supported_codecs
                codec = "h264" if not supported or "h264" in supported else (
                    self._container.default_video_codec
                )
            self._video = self._container.add_stream(codec, rate=rate)
            self._video.width, self._video.height, self._video.pix_fmt = width, height, pix_fmt
            self._video.codec_context.time_base = self._time_base
            # Grey formats are stored full range: swscale converts RGB to grey over 0..255, and
            # a limited-range flag would make decoders stretch the levels.
            self._color_range = (
                ColorRange.JPEG if len(av.VideoFormat(pix_fmt).components) == 1 else None
            )
            if self._color_range is not None:
                self._video.codec_context.color_range = self._color_range
            encoder = self._video.codec_context.name
            options = {}
            if encoder in CRF_CODECS:
                # Constant quality rather than a bit-rate target (PyAV sets a default bit rate).
                options = {"crf": str(crf), "b": "0"}
            if encoder == "libx264" and lookahead is not None:
                options["rc-lookahead"] = str(lookahead)
            self._video.options = options
            if audio_sample_rate is not None:
                self._audio = _EncodedAudio(
                    self._container, self.path, audio_codec, audio_sample_rate, audio_channels,
                    audio_layout,
                )
            elif audio_source is not None:
                self._audio = _SourceAudio(self._container, Path(audio_source))
        except BaseException as error:
            self._discard(error)
            raise

    def __enter__(self) -> VideoWriter:
        return self

    @property
    def frames_written(self) -> int:
        """Frames encoded so far."""
        return self._frames_written

    @property
    def audio_mode(self) -> str:
        """How the audio is written: ``"none"``, ``"encoded"`` (samples), ``"copied"`` or
        ``"re-encoded"`` (from ``audio_source``)."""
        return self._audio.mode if self._audio is not None else "none"

    @property
    def audio_packets_retimed(self) -> int:
        """Audio packets moved so that their decoding times increase."""
        return self._audio.packets_retimed if self._audio is not None else 0

    def write_frames(self, frames: np.ndarray) -> None:
        """Encode uint8 ``(T, H, W, 3)`` RGB frames (``T`` may be 0), the next ``T`` of them;
        then the source's audio up to the last frame's time."""
        import av

        frames = np.asarray(frames)
        expected = (self.height, self.width, 3)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != expected:
            raise ValueError(
                f"{self.path}: frames must be uint8 (T, {self.height}, {self.width}, 3), "
                f"got {frames.dtype} {frames.shape}"
            )
        if self._pts is not None and self._frames_written + len(frames) > len(self._pts):
            raise ValueError(
                f"{self.path}: {self._frames_written + len(frames)} frames written, but pts "
                f"gives the times of {len(self._pts)}"
            )
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if self._color_range is not None:
                frame.color_range = self._color_range
            frame.pts = self._frame_pts(self._frames_written)
            frame.time_base = self._time_base
            self._container.mux(self._video.encode(frame))
            self._frames_written += 1
        if isinstance(self._audio, _SourceAudio) and self._frames_written:
            last_s = float(self._frame_pts(self._frames_written - 1) * self._time_base)
            self._audio.mux_until(last_s)

    def _frame_pts(self, index: int) -> int:
        return int(self._pts[index]) if self._pts is not None else index

    def write_audio(self, samples: np.ndarray) -> None:
        """Encode float32 samples in [-1, 1]: ``(N,)`` (mono) or ``(C, N)``, following those
        written before."""
        if not isinstance(self._audio, _EncodedAudio):
            raise ValueError(f"{self.path}: the writer was opened without audio_sample_rate")
        self._audio.write(samples)

    def close(self) -> Path:
        """Flush the encoders (and the rest of the source's audio), close the file and rename
        it into place; returns the path. Closing again does nothing."""
        if self._closed:
            return self.path
        if self._frames_written == 0:
            error = ValueError(f"{self.path}: no frames were written")
            self._discard(error)
            raise error
        try:
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._audio.finish()
            self._container.close()
        except BaseException as error:
            self._discard(error)
            raise
        self._atomic.close()  # renames the temporary file onto self.path
        self._closed = True
        return self.path

    def _discard(self, error: BaseException) -> None:
        """Close everything without flushing and delete the temporary file, because of
        ``error``."""
        self._closed = True
        if isinstance(self._audio, _SourceAudio):
            self._audio.close()
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
        self._atomic.__exit__(type(error), error, error.__traceback__)  # deletes the file

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:
            self._discard(exc)


class _EncodedAudio:
    """An audio stream encoded from the samples the caller hands over."""

    mode = "encoded"
    packets_retimed = 0  # the encoder's packets increase

    def __init__(
        self, container, path: Path, codec: str, sample_rate: int, channels: int,
        layout: str | None,
    ) -> None:
        import av

        self.path = path
        supported_rates = av.Codec(codec, "w").audio_rates
        if supported_rates and sample_rate not in supported_rates:
            raise ValueError(
                f"{path}: {codec} cannot encode {sample_rate} Hz; "
                f"it takes {sorted(supported_rates)}"
            )
        if layout is None:
            if channels not in DEFAULT_AUDIO_LAYOUTS:
                raise ValueError(
                    f"{path}: no default layout for {channels} audio channels; pass audio_layout"
                )
            layout = DEFAULT_AUDIO_LAYOUTS[channels]
        if len(av.AudioLayout(layout).channels) != channels:
            raise ValueError(f"{path}: layout {layout!r} does not have {channels} channels")
        self.container = container
        self.channels, self.layout = channels, layout
        self.stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        self.samples_written = 0

    def write(self, samples: np.ndarray) -> None:
        import av

        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim == 1:
            samples = samples[None, :]
        if samples.ndim != 2 or samples.shape[0] != self.channels:
            raise ValueError(
                f"{self.path}: audio must be (N,) or ({self.channels}, N), got {samples.shape}"
            )
        if samples.shape[1] == 0:
            return
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples), format="fltp", layout=self.layout
        )
        frame.sample_rate = self.stream.rate
        frame.pts = self.samples_written
        frame.time_base = Fraction(1, self.stream.rate)
        self.container.mux(self.stream.encode(frame))
        self.samples_written += samples.shape[1]

    def finish(self) -> None:
        """Flush the encoder."""
        self.container.mux(self.stream.encode(None))


class _SourceAudio:
    """The first audio stream of a source file, copied packet by packet where the container
    takes its codec (``mode`` ``"copied"``), else decoded and re-encoded (``"re-encoded"``)."""

    def __init__(self, container, source: Path) -> None:
        import av

        from avvsr.data.io import _open_container

        self.container = container
        self.source = _open_container(source)
        try:
            if not self.source.streams.audio:
                raise MissingAudioError(source, "has no audio stream to carry over")
            stream = self.source.streams.audio[0]
            supported = container.supported_codecs
            # An empty set means the muxer cannot say; FFmpeg then tries, as `ffmpeg -c copy`
            # does.
            if not supported or stream.codec_context.name in supported:
                self.stream = container.add_stream_from_template(stream)
                self.mode = "copied"
            else:
                codec = container.default_audio_codec
                rates = av.Codec(codec, "w").audio_rates or [stream.rate]
                rate = min((r for r in rates if r >= stream.rate), default=max(rates))
                # The encoder converts sample format, layout and rate itself (PyAV resamples).
                self.stream = container.add_stream(codec, rate=rate, layout=stream.layout.name)
                self.mode = "re-encoded"
        except BaseException:
            self.source.close()
            raise
        self.packets_retimed = 0
        self._packets = self.source.demux(stream)
        self._next = None  # a demuxed packet beyond the frames written so far
        self._last: tuple[Fraction, Fraction] | None = None  # (dts, duration) seconds

    def mux_until(self, until_s: float | None) -> None:
        """Mux the source's audio packets up to ``until_s`` seconds (None: all the rest)."""
        import av

        while True:
            packet, self._next = self._next, None
            if packet is None:
                try:
                    packet = next(self._packets, None)
                except av.FFmpegError as error:  # a damaged end of the source file
                    warnings.warn(f"{self.source.name}: audio ends early ({error})", stacklevel=3)
                    packet = None
            if packet is None:
                break
            if not packet.size:  # the demuxer's empty end-of-stream packet
                continue
            packet_s = packet.pts * packet.time_base if packet.pts is not None else None
            if until_s is not None and packet_s is not None and packet_s > until_s:
                self._next = packet
                return
            if self.mode == "copied":
                packet.stream = self.stream
                self._mux(packet)
                continue
            try:
                decoded = packet.decode()
            except av.FFmpegError as error:
                warnings.warn(f"{self.source.name}: audio packet skipped ({error})", stacklevel=3)
                continue
            for frame in decoded:
                for encoded in self.stream.encode(frame):
                    self._mux(encoded)
        if self.mode == "re-encoded":
            for encoded in self.stream.encode(None):
                self._mux(encoded)

    def _mux(self, packet) -> None:
        """Mux one audio packet, first moving it after the last one where its decoding time
        (seconds) does not increase, pts with dts (``packets_retimed`` counts)."""
        time_base = packet.time_base
        dts = packet.dts if packet.dts is not None else packet.pts
        if self._last is not None:
            last_s, last_duration_s = self._last
            if dts is None or dts * time_base <= last_s:
                after = math.ceil((last_s + last_duration_s) / time_base)
                new_dts = max(after, math.floor(last_s / time_base) + 1)
                # dts is None only where pts is None too.
                packet.pts = packet.pts + new_dts - dts if dts is not None else new_dts
                packet.dts = dts = new_dts
                self.packets_retimed += 1
        if dts is not None:
            self._last = (dts * time_base, (packet.duration or 0) * time_base)
        self.container.mux(packet)

    def finish(self) -> None:
        """Mux the rest of the source's audio and close the source."""
        self.mux_until(None)
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.source.close()


def _check_frame_size(path: Path, width: int, height: int, pix_fmt: str) -> None:
    """Raise ``ValueError`` unless the size is positive and fits the format's chroma grid."""
    import av

    if width < 1 or height < 1:
        raise ValueError(f"{path}: frame size must be positive, got {width}x{height}")
    fmt = av.VideoFormat(pix_fmt)
    probe = 64  # any multiple of the largest subsampling factor
    step_w = probe // fmt.chroma_width(probe)
    step_h = probe // fmt.chroma_height(probe)
    if width % step_w or height % step_h:
        raise ValueError(
            f"{path}: {pix_fmt} needs width a multiple of {step_w} and height of {step_h}, "
            f"got {width}x{height} (crop the frames, or use yuv444p)"
        )


def _chunks(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    if isinstance(frames, np.ndarray):
        yield frames
    else:
        yield from frames


def write_video(
    path: PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    *,
    codec: str | None = None,
    crf: int = 18,
    pix_fmt: str = "yuv420p",
    audio_codec: str = "aac",
) -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames (an array or an iterable of chunks) and audio.

    ``audio`` is float32 ``(N,)`` or ``(C, N)`` at ``sample_rate`` Hz, starting with the
    first frame; it is interleaved with the frames chunk by chunk. Returns the final path.
    """
    path = Path(path)
    if audio is not None:
        if sample_rate is None:
            raise ValueError(f"{path}: audio given without sample_rate")
        audio = np.asarray(audio, dtype=np.float32)
        audio = audio[None, :] if audio.ndim == 1 else audio
    chunks = _chunks(frames)
    first = next(chunks, None)
    if first is None or len(first) == 0:
        raise ValueError(f"{path}: no frames to write")
    if first.ndim != 4:
        raise ValueError(f"{path}: frames must be (T, H, W, 3), got shape {first.shape}")
    height, width = first.shape[1:3]
    writer = VideoWriter(
        path,
        fps,
        width,
        height,
        codec=codec,
        crf=crf,
        pix_fmt=pix_fmt,
        audio_sample_rate=sample_rate if audio is not None else None,
        audio_channels=audio.shape[0] if audio is not None else 1,
        audio_codec=audio_codec,
    )
    audio_cursor = 0
    with writer:
        for chunk in itertools.chain([first], chunks):
            writer.write_frames(chunk)
            if audio is not None:
                until = min(audio.shape[1], round(writer.frames_written / fps * sample_rate))
                writer.write_audio(audio[:, audio_cursor:until])
                audio_cursor = max(audio_cursor, until)
        if audio is not None:
            writer.write_audio(audio[:, audio_cursor:])
    return path
