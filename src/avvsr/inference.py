"""Upscaling real videos with a trained model: per-frame audio, chunked/tiled inference, writing.

Three parts, used by ``avvsr-upscale`` and ``avvsr-visualize``:

- **Per-frame audio** (:class:`FrameAudio`): the log-mel features of any run of frames, made
  as the loaded model (:func:`avvsr.checkpoint.load_model`) says its features were made.
- **Inference** (:class:`ChunkedUpscaler`): frames stream in, the network runs on overlapping
  temporal windows (and optionally overlapping spatial tiles), overlaps are blended with linear
  ramps (a cross-fade in time, feathering in space), and finished frames stream out. Only one
  window of LR frames and its HR output are held, so frame memory does not grow with video
  length. A fusion model's soundtrack is decoded whole (:func:`frame_audio_for`; mono float32
  at the model's rate, 230 MB an hour at 16 kHz).
- **Writing** (:class:`UpscaledVideoWriter`): frames are encoded at the source frame times
  (variable frame rate is kept) and the source's audio packets are copied unchanged when the
  output container takes their codec, re-encoded otherwise; the file appears under its name
  only when complete.

Why the default window (:data:`DEFAULT_CHUNK` frames, :data:`DEFAULT_OVERLAP` shared): a
recurrent backbone (BasicVSR, BasicVSR++) carries its state through every frame, so cutting the
sequence costs the frames near a cut the context beyond it. That context's influence fades over
a few frames (each step warps and refines the state), so a frame more than a few frames from a
cut is almost unaffected. With an overlap of 8 the cross-fade gives the frames nearest a cut
little weight, and a window of 32 frames keeps the share of frames near a cut small; both are
measured by ``tests/test_upscale.py`` (chunked vs whole-sequence PSNR). A sliding-window
backbone (EDVR, window ``2r + 1``) sees reflected neighbours only within ``r`` frames of a cut,
and the cross-fade gives those frames little weight.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avvsr.atomic import refuse_existing, temporary_path
from avvsr.checkpoint import LoadedModel
from avvsr.data.audio_features import AudioFeatureSettings
from avvsr.errors import MissingAudioError

DEFAULT_CHUNK = 32
DEFAULT_OVERLAP = 8
DEFAULT_TILE_OVERLAP = 16
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------
# Per-frame audio features


class FrameAudio:
    """Log-mel features of each frame's audio window, for any run of frames.

    ``features(first, last)`` -> ``(last - first, n_mels, n_frames)`` float32: the window of
    ``settings.window_s`` seconds centred on each frame's timestamp (zeros where the track does
    not reach), or silence (:data:`~avvsr.data.audio_features.SILENCE_LOG_MEL`) when ``track``
    is None.
    """

    def __init__(self, settings: AudioFeatureSettings, track, timestamps_s: np.ndarray) -> None:
        self.settings = settings
        self.track = track
        self.timestamps_s = timestamps_s
        self.log_mel = settings.log_mel()

    def features(self, first: int, last: int) -> Tensor:
        from avvsr.data.audio_features import SILENCE_LOG_MEL
        from avvsr.data.io import audio_windows

        if self.track is None:
            n_frames = self.log_mel.num_frames(self.settings.window_samples)
            return torch.full((last - first, self.settings.n_mels, n_frames), SILENCE_LOG_MEL)
        windows = audio_windows(self.track, self.timestamps_s[first:last], self.settings.window_s)
        return self.log_mel(torch.from_numpy(windows))


def frame_audio_for(
    model: LoadedModel, path: str | Path, has_audio: bool, timestamps_s: np.ndarray,
    allow_silent: bool,
) -> FrameAudio | None:
    """The per-frame audio a model needs for the video at ``path`` (None without fusion).

    A fusion model refuses a video without audio (:class:`MissingAudioError`) unless
    ``allow_silent``, which gives it silence.
    """
    from avvsr.data.io import read_audio

    if not model.uses_audio:
        return None
    if not has_audio and not allow_silent:
        raise MissingAudioError(
            path, "has no audio stream and the model fuses audio; allow silent audio "
            "(--allow-silent) to upscale it with silence"
        )
    settings = model.audio_features
    track = read_audio(path, settings.sample_rate) if has_audio else None
    return FrameAudio(settings, track, timestamps_s)


# --------------------------------------------------------------------------------------------
# Windows and blending


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """First index of each window of ``window`` items covering ``range(length)``.

    Neighbouring windows share ``overlap`` items; the last window is moved back to end at
    ``length`` (sharing more), so every window is full when ``length >= window``.
    """
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, {window}), got {overlap}")
    if length <= window:
        return [0]
    return [*range(0, length - window, window - overlap), length - window]


def blend_weights(starts: list[int], window: int, length: int) -> list[Tensor]:
    """Weight of each item of each window (from :func:`window_starts`): ``(window_length,)``.

    Weights ramp linearly over the items a window shares with its neighbours, so two windows
    cross-fade across their overlap, and are 1 elsewhere; they are normalised so that at every
    item the weights of all windows sum to 1 (also where more than two windows meet).
    """
    weights = []
    total = torch.zeros(length)
    for index, start in enumerate(starts):
        end = min(start + window, length)
        position = torch.arange(start, end, dtype=torch.float32)
        weight = torch.ones(end - start)
        if index > 0:
            shared = min(starts[index - 1] + window, length) - start
            weight = torch.minimum(weight, (position - start + 1) / (shared + 1))
        if index + 1 < len(starts):
            shared = end - starts[index + 1]
            weight = torch.minimum(weight, (end - position) / (shared + 1))
        weights.append(weight)
        total[start:end] += weight
    return [
        weight / total[start : start + len(weight)]
        for start, weight in zip(starts, weights, strict=True)
    ]


# --------------------------------------------------------------------------------------------
# Inference


@dataclass(frozen=True)
class InferenceSettings:
    """How the network is run: temporal windows, spatial tiles (LR pixels), device, precision."""

    chunk: int = DEFAULT_CHUNK  # frames per temporal window
    overlap: int = DEFAULT_OVERLAP  # frames shared by neighbouring windows
    tile: int = 0  # LR tile size in pixels; 0: whole frames
    tile_overlap: int = DEFAULT_TILE_OVERLAP  # LR pixels shared by neighbouring tiles
    device: str = "cpu"
    precision: str = "fp32"  # fp32, or bf16/fp16 autocast

    def __post_init__(self) -> None:
        if self.chunk < 1 or not 0 <= self.overlap < self.chunk:
            raise ValueError(
                f"need chunk >= 1 and 0 <= overlap < chunk, got chunk={self.chunk} "
                f"overlap={self.overlap}"
            )
        if self.tile < 0 or (self.tile and not 0 <= self.tile_overlap < self.tile):
            raise ValueError(
                f"need tile >= 0 (0: off) and 0 <= tile_overlap < tile, got tile={self.tile} "
                f"tile_overlap={self.tile_overlap}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision}")
        try:
            device = torch.device(self.device)
        except RuntimeError as error:
            raise ValueError(f"not a torch device: {self.device!r} ({error})") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but CUDA is not available here")


@dataclass
class StageTimes:
    """Wall-clock seconds spent in each stage of upscaling a video."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class ChunkedUpscaler:
    """Runs a network over a stream of frames in overlapping temporal windows and spatial tiles.

    :meth:`upscale` takes uint8 frame chunks ``(n, h, w, 3)`` and yields the finished HR frames
    uint8 ``(m, s*h, s*w, 3)`` in order, as soon as no later window touches them.
    """

    def __init__(self, net: torch.nn.Module, settings: InferenceSettings = InferenceSettings()):
        self.settings = settings
        self.device = torch.device(settings.device)
        self.net = net.to(self.device).eval()
        self.scale = net.scale
        self.times = StageTimes()

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.settings.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def forward(self, lq: Tensor, audio: Tensor | None):
        """One clip through the network: ``lq`` (T, 3, h, w) in [0, 1], ``audio``
        (T, n_mels, n_frames) or None -> :class:`~avvsr.models.avvsr_net.AVVSROutput` with
        ``sr`` (1, T, 3, s*h, s*w) and masks ``(1, T, 1, h_s, w_s)``, float32 on the CPU.

        Any frame size works: backbones that need a multiple (EDVR's pyramid) pad and crop
        inside, and MS-AVF's pyramid rounds odd sizes up.
        """
        batch_audio = audio[None].to(self.device) if audio is not None else None
        with self._autocast():
            out = self.net(lq[None].to(self.device), batch_audio)
        out.sr = out.sr.float().cpu()
        out.masks = [mask.float().cpu() for mask in out.masks]
        return out

    def upscale_window(self, lq: Tensor, audio: Tensor | None) -> Tensor:
        """``lq`` (T, 3, h, w) -> ``(T, 3, s*h, s*w)`` float32, tile by tile if tiling is on."""
        tile, height, width = self.settings.tile, *lq.shape[-2:]
        if not tile or (height <= tile and width <= tile):
            return self.forward(lq, audio).sr[0]
        overlap, scale = self.settings.tile_overlap, self.scale
        rows = window_starts(height, tile, overlap)
        cols = window_starts(width, tile, overlap)
        row_weights = blend_weights([r * scale for r in rows], tile * scale, height * scale)
        col_weights = blend_weights([c * scale for c in cols], tile * scale, width * scale)
        total = torch.zeros(lq.shape[0], 3, height * scale, width * scale)
        for row, row_weight in zip(rows, row_weights, strict=True):
            for col, col_weight in zip(cols, col_weights, strict=True):
                sr = self.forward(lq[..., row : row + tile, col : col + tile], audio).sr[0]
                weight = row_weight[:, None] * col_weight[None, :]
                rows_hr = slice(row * scale, row * scale + sr.shape[-2])
                cols_hr = slice(col * scale, col * scale + sr.shape[-1])
                total[..., rows_hr, cols_hr] += sr * weight
        return total

    def upscale(
        self,
        chunks: Iterable[np.ndarray],
        num_frames: int,
        audio: Callable[[int, int], Tensor] | None = None,
    ) -> Iterator[np.ndarray]:
        """Upscale ``num_frames`` frames arriving as uint8 chunks ``(n, h, w, 3)``.

        ``audio(first, last)`` gives the log-mel ``(last - first, n_mels, n_frames)`` of those
        frames (fusion models). Yields finished uint8 ``(m, s*h, s*w, 3)`` frames in order.
        """
        chunk, overlap = self.settings.chunk, self.settings.overlap
        starts = window_starts(num_frames, chunk, overlap)
        frames = _FrameBuffer(iter(chunks), self.times)
        blended = _BlendedFrames()
        for index, weight in enumerate(blend_weights(starts, chunk, num_frames)):
            start, end = starts[index], starts[index] + len(weight)
            lq = torch.from_numpy(frames.take(start, end)).permute(0, 3, 1, 2) / 255
            with self.times.stage("model"):
                window_audio = audio(start, end) if audio is not None else None
                blended.add(start, self.upscale_window(lq, window_audio), weight)
                # Frames before the next window's start are touched by no later window.
                done = blended.pop_before(starts[index + 1] if index + 1 < len(starts) else end)
            yield (done.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class _BlendedFrames:
    """The weighted sum of overlapping windows' outputs for the frames still being blended."""

    def __init__(self) -> None:
        self.first = 0  # index of the first frame held
        self.total: Tensor | None = None  # (n, 3, H, W)

    def add(self, start: int, frames: Tensor, weight: Tensor) -> None:
        """Add ``frames`` (m, 3, H, W), the outputs for frames ``start...``, times ``weight``."""
        if self.total is None:
            self.total = frames.new_zeros(0, *frames.shape[1:])
        grow = start + len(frames) - self.first - len(self.total)
        self.total = torch.cat([self.total, frames.new_zeros(grow, *frames.shape[1:])])
        offset = start - self.first
        self.total[offset : offset + len(frames)] += frames * weight[:, None, None, None]

    def pop_before(self, end: int) -> Tensor:
        """Remove and return the blended frames before ``end``: ``(end - first, 3, H, W)``."""
        done, self.total = self.total[: end - self.first], self.total[end - self.first :]
        self.first = end
        return done


class _FrameBuffer:
    """The decoded frames of a stream that later windows still need (indices only increase)."""

    def __init__(self, chunks: Iterator[np.ndarray], times: StageTimes) -> None:
        self.chunks = chunks
        self.times = times
        self.frames: np.ndarray | None = None
        self.first = 0  # index of self.frames[0]

    def take(self, start: int, end: int) -> np.ndarray:
        """Frames ``[start, end)`` uint8 ``(end - start, h, w, 3)``; frames before ``start``
        are dropped for good."""
        with self.times.stage("decode"):
            while self.frames is None or self.first + len(self.frames) < end:
                new = next(self.chunks, None)
                if new is None:
                    raise EOFError(f"the video ended before frame {end}")
                self.frames = new if self.frames is None else np.concatenate([self.frames, new])
            self.frames = self.frames[start - self.first :]
            self.first = start
        return self.frames[: end - start]


# --------------------------------------------------------------------------------------------
# Writing


def pixel_format_for(width: int, height: int) -> str:
    """``yuv420p`` (what every player takes) when both sides are even, else ``yuv444p``."""
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


class UpscaledVideoWriter:
    """Write upscaled frames at given times and carry a source file's audio; a context manager.

    Frames are encoded (H.264 where the container takes it, else the container's default
    codec) with presentation times ``pts`` in ``time_base`` (the source's, so variable frame
    rate is kept). The source's first audio stream is copied packet by packet when the output
    container takes its codec, otherwise decoded and re-encoded with the container's default
    audio codec; audio is interleaved with the video as the frames arrive. The file is written
    under a temporary name and renamed on a clean exit; an exception deletes it.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: float,
        time_base: Fraction,
        pts: np.ndarray,
        audio_source: Path | None = None,
        *,
        crf: int = 18,
        times: StageTimes | None = None,
    ) -> None:
        import av

        from avvsr.data.io import CRF_CODECS

        self.path = Path(path)
        self.pts = pts
        self.time_base = time_base
        self.times = times or StageTimes()
        self.temporary = temporary_path(self.path)
        self.container = av.open(str(self.temporary), mode="w")
        self.frames_written = 0
        self.audio_mode = "none"
        self._source = None
        try:
            supported = self.container.supported_codecs
            codec = "h264" if not supported or "h264" in supported else None
            self.video = self.container.add_stream(
                codec or self.container.default_video_codec,
                rate=Fraction(fps).limit_denominator(10_000),
            )
            self.video.width, self.video.height = width, height
            self.video.pix_fmt = pixel_format_for(width, height)
            self.video.codec_context.time_base = time_base
            if self.video.codec_context.name in CRF_CODECS:
                self.video.options = {"crf": str(crf), "b": "0"}
            if audio_source is not None:
                self._open_audio_source(audio_source)
        except BaseException:
            self._discard()
            raise

    def _open_audio_source(self, source: Path) -> None:
        import av

        self._source = av.open(str(source), metadata_errors="ignore")
        stream = self._source.streams.audio[0]
        supported = self.container.supported_codecs
        # An empty set means the muxer cannot say; FFmpeg then tries, as `ffmpeg -c copy` does.
        if not supported or stream.codec_context.name in supported:
            self.audio = self.container.add_stream_from_template(stream)
            self.audio_mode = "copied"
        else:
            codec = self.container.default_audio_codec
            rates = av.Codec(codec, "w").audio_rates or [stream.rate]
            rate = min((r for r in rates if r >= stream.rate), default=max(rates))
            # The encoder converts sample format, layout and rate itself (PyAV resamples).
            self.audio = self.container.add_stream(codec, rate=rate, layout=stream.layout.name)
            self.audio_mode = "re-encoded"
        self._audio_packets = self._source.demux(stream)
        self._audio_next = None  # a demuxed packet beyond the frames written so far

    def write(self, frames: np.ndarray) -> None:
        """Encode uint8 ``(n, H, W, 3)`` RGB frames, the next ``n`` of ``pts``."""
        import av

        with self.times.stage("encode"):
            for image in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts = int(self.pts[self.frames_written])
                frame.time_base = self.time_base
                self.container.mux(self.video.encode(frame))
                self.frames_written += 1
            if self._source is not None:
                self._mux_audio(until_s=float(self.pts[self.frames_written - 1] * self.time_base))

    def _mux_audio(self, until_s: float | None) -> None:
        """Mux the source audio packets up to ``until_s`` seconds (None: all the rest)."""
        import av

        while True:
            packet, self._audio_next = self._audio_next, None
            if packet is None:
                try:
                    packet = next(self._audio_packets, None)
                except av.FFmpegError as error:  # a damaged end of the source file
                    warnings.warn(f"{self._source.name}: audio ends early ({error})", stacklevel=2)
                    packet = None
            if packet is None:
                break
            if packet.dts is None:  # the demuxer's empty end-of-stream packet
                continue
            packet_s = packet.pts * packet.time_base if packet.pts is not None else None
            if until_s is not None and packet_s is not None and packet_s > until_s:
                self._audio_next = packet
                return
            if self.audio_mode == "copied":
                packet.stream = self.audio
                self.container.mux(packet)
                continue
            try:
                decoded = packet.decode()
            except av.FFmpegError as error:
                warnings.warn(f"{self._source.name}: audio packet skipped ({error})", stacklevel=2)
                continue
            for frame in decoded:
                self.container.mux(self.audio.encode(frame))
        if self.audio_mode == "re-encoded":
            self.container.mux(self.audio.encode(None))

    def close(self) -> Path:
        """Flush, close and rename the file into place."""
        if self.frames_written == 0:
            self._discard()
            raise ValueError(f"{self.path}: no frames were written")
        try:
            with self.times.stage("encode"):
                self.container.mux(self.video.encode(None))
                if self._source is not None:
                    self._mux_audio(until_s=None)
                    self._source.close()
                self.container.close()
        except BaseException:
            self._discard()
            raise
        os.replace(self.temporary, self.path)
        return self.path

    def _discard(self) -> None:
        for container in (self.container, self._source):
            with contextlib.suppress(Exception):
                container.close()
        self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> UpscaledVideoWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()


# --------------------------------------------------------------------------------------------
# The whole job


@dataclass(frozen=True)
class UpscaleReport:
    """What :func:`upscale_video` did: frames, sizes, audio handling, seconds per stage."""

    path: Path
    num_frames: int
    input_size: tuple[int, int]  # (width, height)
    output_size: tuple[int, int]
    audio: str  # "copied", "re-encoded" or "none"
    seconds: float
    stage_seconds: dict[str, float]

    @property
    def frames_per_s(self) -> float:
        return self.num_frames / self.seconds if self.seconds > 0 else float("inf")


def source_pts(path: Path, timestamps_s: np.ndarray) -> tuple[np.ndarray, Fraction]:
    """Each frame's presentation time in the source video stream's time base, strictly
    increasing: ``(pts (T,) int64, time_base)``."""
    import av

    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 90_000)
        start = stream.start_time or 0
    pts = start + np.rint(np.asarray(timestamps_s) / float(time_base)).astype(np.int64)
    ramp = np.arange(len(pts))
    return np.maximum.accumulate(pts - ramp) + ramp, time_base


def upscale_video(
    source: str | Path,
    destination: str | Path,
    model: LoadedModel,
    settings: InferenceSettings = InferenceSettings(),
    *,
    overwrite: bool = False,
    allow_silent: bool = False,
    progress: bool = True,
    crf: int = 18,
) -> UpscaleReport:
    """Upscale the video ``source`` into ``destination``, with the source's audio.

    Streams the frames (bounded memory), runs ``model`` as ``settings`` say, keeps the source
    frame times, copies (or re-encodes) the audio. Nothing is written when the input is bad; a
    failure mid-way leaves no ``destination``.
    """
    from tqdm import tqdm

    from avvsr.data.io import iter_frame_chunks, probe_video

    source, destination = Path(source), Path(destination)
    refuse_existing(destination, overwrite)
    started = time.perf_counter()
    upscaler = ChunkedUpscaler(model.net, settings)
    with upscaler.times.stage("decode"):
        info = probe_video(source)
        frame_audio = frame_audio_for(
            model, source, info.has_audio, info.timestamps_s, allow_silent
        )
    pts, time_base = source_pts(source, info.timestamps_s)
    out_width, out_height = info.width * model.scale, info.height * model.scale
    destination.parent.mkdir(parents=True, exist_ok=True)
    writer = UpscaledVideoWriter(
        destination, out_width, out_height, info.fps, time_base, pts,
        audio_source=source if info.has_audio else None, crf=crf, times=upscaler.times,
    )
    bar = tqdm(total=info.num_frames, unit="frame", desc=source.name, disable=not progress)
    with writer, bar:
        chunks = iter_frame_chunks(source, settings.chunk - settings.overlap)
        audio = frame_audio.features if frame_audio is not None else None
        for frames in upscaler.upscale(chunks, info.num_frames, audio):
            writer.write(frames)
            bar.update(len(frames))
    return UpscaleReport(
        path=destination,
        num_frames=info.num_frames,
        input_size=(info.width, info.height),
        output_size=(out_width, out_height),
        audio=writer.audio_mode,
        seconds=time.perf_counter() - started,
        stage_seconds=dict(upscaler.times.seconds),
    )
