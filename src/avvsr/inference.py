"""Upscaling real videos with a trained model: per-frame audio, chunked/tiled inference, writing.

Three parts, used by ``avvsr-upscale`` and ``avvsr-visualize``:

- **Per-frame audio** (:class:`FrameAudio`): the log-mel features of any run of frames, made
  as the loaded model (:func:`avvsr.checkpoint.load_model`) says its features were made.
- **Inference** (:class:`ChunkedUpscaler`): frames stream in, the network runs on overlapping
  temporal windows (and optionally overlapping spatial tiles), overlaps are blended with linear
  ramps (a cross-fade in time, feathering in space) into one float32 buffer of a window's HR
  frames, and each frame streams out (to the encoder) as soon as it is final. Only one window
  of LR frames and one of HR sums are held, so frame memory does not grow with video length.
  A fusion model's soundtrack streams too (:func:`frame_audio_for`): it is decoded as the
  windows need it and only the samples of the current window's frames are held, so audio
  memory does not grow with the soundtrack's length either.
- **Memory plan** (:func:`plan_inference`): the window and tile sizes not fixed by the caller
  are chosen so that the estimated peak (:func:`estimate_peak`: the network's bytes per LR
  pixel-frame measured by a probe forward, the HR blend buffer, the LR window, the encoder's
  frames) stays within a budget (:func:`default_memory_budget`).
- **Writing** (:class:`UpscaledVideoWriter`): the output path is checked before anything is
  loaded (:func:`check_output`); frames are encoded at the source frame times (variable frame
  rate is kept) and the source's audio packets are copied unchanged when the output container
  takes their codec (re-timed where their decoding times do not increase), re-encoded
  otherwise; the file appears under its name only when complete
  (:func:`avvsr.atomic.atomic_write`).

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
import ctypes
import dataclasses
import gc
import itertools
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avvsr.atomic import atomic_write, partial_path, refuse_existing
from avvsr.checkpoint import LoadedModel
from avvsr.data.audio_features import AudioFeatureSettings
from avvsr.errors import (
    MemoryBudgetError,
    MissingAudioError,
    OutputError,
    VideoDecodeError,
)

DEFAULT_CHUNK = 32  # frames per window where no memory plan chooses
DEFAULT_OVERLAP = 8
DEFAULT_TILE_OVERLAP = 16
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------
# Per-frame audio features


class FrameAudio:
    """Log-mel features of each frame's audio window, for any run of frames; a context manager
    (:meth:`close`).

    ``features(first, last)`` -> ``(last - first, n_mels, n_frames)`` float32: the window of
    ``settings.window_s`` seconds centred on each frame's timestamp (zeros where the track does
    not reach), or silence (:data:`~avvsr.data.audio_features.SILENCE_LOG_MEL`) when
    ``source`` is None. The windows are cut from the soundtrack of ``source`` as it is decoded
    (:class:`~avvsr.data.audio_io.AudioReader`): runs asked for in increasing order of their
    first frame, overlapping or not (as the chunked upscaler and its planner ask), decode the
    file once and hold only the samples of the current run's windows (and one resampling
    block), however long the soundtrack; a run that starts before the previous one decodes
    the file again.
    """

    def __init__(
        self, settings: AudioFeatureSettings, source: str | Path | None, timestamps_s: np.ndarray
    ) -> None:
        from avvsr.data.audio_io import AudioReader

        self.settings = settings
        self.timestamps_s = timestamps_s
        self.log_mel = settings.log_mel()
        self.reader = AudioReader(source, settings.sample_rate) if source is not None else None

    def features(self, first: int, last: int) -> Tensor:
        from avvsr.data.audio_features import SILENCE_LOG_MEL

        if self.reader is None:
            n_frames = self.log_mel.num_frames(self.settings.window_samples)
            return torch.full((last - first, self.settings.n_mels, n_frames), SILENCE_LOG_MEL)
        windows = self.reader.windows(self.timestamps_s[first:last], self.settings.window_s)
        return self.log_mel(torch.from_numpy(windows))

    def close(self) -> None:
        """Close the soundtrack's reader (which warns about damage in the part decoded)."""
        if self.reader is not None:
            self.reader.close()

    def __enter__(self) -> FrameAudio:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        elif self.reader is not None:
            self.reader.__exit__(exc_type, exc, traceback)


def frame_audio_for(
    model: LoadedModel, path: str | Path, has_audio: bool, timestamps_s: np.ndarray,
    allow_silent: bool,
) -> FrameAudio | None:
    """The per-frame audio a model needs for the video at ``path`` (None without fusion).

    A fusion model refuses a video without audio (:class:`MissingAudioError`) unless
    ``allow_silent``, which gives it silence.
    """
    if not model.uses_audio:
        return None
    if not has_audio and not allow_silent:
        raise MissingAudioError(
            path, "has no audio stream and the model fuses audio; allow silent audio "
            "(--allow-silent) to upscale it with silence"
        )
    return FrameAudio(model.audio_features, path if has_audio else None, timestamps_s)


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
    """How the network is run: temporal windows, spatial tiles (LR pixels), device, precision.

    ``None`` for ``chunk``, ``overlap``, ``tile`` or ``tile_overlap`` means "not fixed":
    :func:`upscale_video` chooses it from the memory budget ``max_memory`` (bytes; None:
    :func:`default_memory_budget`) with :func:`plan_inference`, while a bare
    :class:`ChunkedUpscaler` takes :data:`DEFAULT_CHUNK` frames, whole frames (no tiles) and
    :func:`default_overlap` frames / :data:`DEFAULT_TILE_OVERLAP` pixels shared.
    """

    chunk: int | None = None  # frames per temporal window
    overlap: int | None = None  # frames shared by neighbouring windows
    tile: int | None = None  # LR tile size in pixels; 0: whole frames
    tile_overlap: int | None = None  # LR pixels shared by neighbouring tiles
    device: str = "cpu"
    precision: str = "fp32"  # fp32, or bf16/fp16 autocast
    max_memory: int | None = None  # bytes the run may use at its peak (None: the default)

    def __post_init__(self) -> None:
        chunk = self.chunk if self.chunk is not None else DEFAULT_CHUNK
        if chunk < 1 or (self.overlap is not None and not 0 <= self.overlap < chunk):
            raise ValueError(
                f"need chunk >= 1 and 0 <= overlap < chunk, got chunk={self.chunk} "
                f"overlap={self.overlap}"
            )
        tile_overlap = self.tile_overlap if self.tile_overlap is not None else 0
        if (self.tile is not None and self.tile < 0) or (
            self.tile and not 0 <= tile_overlap < self.tile
        ):
            raise ValueError(
                f"need tile >= 0 (0: off) and 0 <= tile_overlap < tile, got tile={self.tile} "
                f"tile_overlap={self.tile_overlap}"
            )
        if self.max_memory is not None and self.max_memory <= 0:
            raise ValueError(f"max_memory must be a positive byte count, got {self.max_memory}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision}")
        try:
            device = torch.device(self.device)
        except RuntimeError as error:
            raise ValueError(f"not a torch device: {self.device!r} ({error})") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but CUDA is not available here")

    def with_defaults(self) -> InferenceSettings:
        """These settings with every unfixed window and tile size at its default."""
        chunk = self.chunk if self.chunk is not None else DEFAULT_CHUNK
        tile = self.tile if self.tile is not None else 0
        return dataclasses.replace(
            self,
            chunk=chunk,
            overlap=self.overlap if self.overlap is not None else default_overlap(chunk),
            tile=tile,
            tile_overlap=(
                self.tile_overlap if self.tile_overlap is not None else default_tile_overlap(tile)
            ),
        )


def default_overlap(chunk: int) -> int:
    """Frames shared by neighbouring windows of ``chunk`` frames: :data:`DEFAULT_OVERLAP`, or a
    quarter of a shorter window."""
    return min(DEFAULT_OVERLAP, chunk // 4)


def default_tile_overlap(tile: int) -> int:
    """LR pixels shared by neighbouring tiles of ``tile`` pixels: :data:`DEFAULT_TILE_OVERLAP`,
    or a quarter of a smaller tile (0 without tiles)."""
    return min(DEFAULT_TILE_OVERLAP, tile // 4)


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
    uint8 ``(m, s*h, s*w, 3)`` in order, as soon as no later window touches them (one frame at
    a time: ``m = 1``).
    Unfixed settings take their defaults (:meth:`InferenceSettings.with_defaults`).
    """

    def __init__(self, net: torch.nn.Module, settings: InferenceSettings = InferenceSettings()):
        self.settings = settings.with_defaults()
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

    def _tiles(self, height: int, width: int) -> list[tuple[slice, slice, Tensor | None]]:
        """The LR tiles of an ``height`` x ``width`` frame: ``(rows, cols, weight)`` with the
        HR feathering weight ``(s*th, s*tw)`` (None for a single whole-frame tile)."""
        tile = self.settings.tile
        if not tile or (height <= tile and width <= tile):
            return [(slice(0, height), slice(0, width), None)]
        overlap, scale = self.settings.tile_overlap, self.scale
        rows = window_starts(height, tile, overlap)
        cols = window_starts(width, tile, overlap)
        row_weights = blend_weights([r * scale for r in rows], tile * scale, height * scale)
        col_weights = blend_weights([c * scale for c in cols], tile * scale, width * scale)
        return [
            (slice(row, row + tile), slice(col, col + tile), row_weight[:, None] * col_weight)
            for row, row_weight in zip(rows, row_weights, strict=True)
            for col, col_weight in zip(cols, col_weights, strict=True)
        ]

    def _add_window(
        self, blend: _BlendBuffer, start: int, lq: Tensor, audio: Tensor | None, weight: Tensor
    ) -> Iterator[float]:
        """Run the network on the window ``lq`` (T, 3, h, w) of frames ``start...`` tile by
        tile and add its output times ``weight`` (T,) into ``blend``; yields, after each tile,
        the share of the window's LR pixels done."""
        height, width = lq.shape[-2:]
        tiles = self._tiles(height, width)
        pixels = sum(
            (min(rows.stop, height) - rows.start) * (min(cols.stop, width) - cols.start)
            for rows, cols, _ in tiles
        )
        scale = self.scale
        for rows, cols, tile_weight in tiles:
            tile_lq = lq[..., rows, cols]
            sr = self.forward(tile_lq, audio).sr[0]
            hr_rows = slice(rows.start * scale, rows.start * scale + sr.shape[-2])
            hr_cols = slice(cols.start * scale, cols.start * scale + sr.shape[-1])
            with torch.inference_mode():  # sr is an inference tensor: weighted in place
                if tile_weight is not None:
                    sr.mul_(tile_weight)
                blend.add(start, hr_rows, hr_cols, sr.mul_(weight[:, None, None, None]))
            yield tile_lq.shape[-2] * tile_lq.shape[-1] / pixels

    def upscale_window(self, lq: Tensor, audio: Tensor | None) -> Tensor:
        """``lq`` (T, 3, h, w) -> ``(T, 3, s*h, s*w)`` float32, tile by tile if tiling is on."""
        frames, _, height, width = lq.shape
        blend = _BlendBuffer(frames, height * self.scale, width * self.scale)
        for _ in self._add_window(blend, 0, lq, audio, torch.ones(frames)):
            pass
        return blend.buffer

    def upscale(
        self,
        chunks: Iterable[np.ndarray],
        num_frames: int,
        audio: Callable[[int, int], Tensor] | None = None,
        progress: Callable[[float], None] | None = None,
        source: str | os.PathLike[str] = "the video",
    ) -> Iterator[np.ndarray]:
        """Upscale ``num_frames`` frames arriving as uint8 chunks ``(n, h, w, 3)``.

        ``audio(first, last)`` gives the log-mel ``(last - first, n_mels, n_frames)`` of those
        frames (fusion models). Yields the finished frames in order, each as uint8
        ``(1, s*h, s*w, 3)``.
        ``progress(frames)`` is called after each tile with the frames' worth of work it did
        (the frames a window finishes, shared among its tiles by area), so a progress bar
        moves from the first tile on.
        """
        chunk, overlap = self.settings.chunk, self.settings.overlap
        starts = window_starts(num_frames, chunk, overlap)
        frames = _FrameBuffer(iter(chunks), self.times, source)
        blend = None
        for index, weight in enumerate(blend_weights(starts, chunk, num_frames)):
            start, end = starts[index], starts[index] + len(weight)
            # Frames before the next window's start are touched by no later window.
            finished = starts[index + 1] if index + 1 < len(starts) else end
            lq = torch.from_numpy(frames.take(start, end)).permute(0, 3, 1, 2) / 255
            if blend is None:
                blend = _BlendBuffer(len(weight), *(self.scale * n for n in lq.shape[-2:]))
            with self.times.stage("model"):
                window_audio = audio(start, end) if audio is not None else None
                for share in self._add_window(blend, start, lq, window_audio, weight):
                    if progress is not None:
                        progress(share * (finished - start))
            yield from blend.pop_before(finished)


class _BlendBuffer:
    """The weighted sums of the frames still being blended, in one float32 buffer of
    ``frames`` HR frames ``(frames, 3, H, W)`` used as a ring (frame ``i`` in slot
    ``i % frames``): every window's frames fit, and finished frames leave one by one."""

    def __init__(self, frames: int, height: int, width: int) -> None:
        self.buffer = torch.zeros(frames, 3, height, width)
        self.first = 0  # index of the first frame not yet finished

    def add(self, start: int, rows: slice, cols: slice, values: Tensor) -> None:
        """Add ``values`` (m, 3, rows, cols), weighted outputs for frames ``start...``."""
        for offset, frame in enumerate(values):
            self.buffer[(start + offset) % len(self.buffer), :, rows, cols].add_(frame)

    def pop_before(self, end: int) -> Iterator[np.ndarray]:
        """Yield the finished frames before ``end``, each as uint8 ``(1, H, W, 3)``, and clear
        their slots."""
        while self.first < end:
            slot = self.buffer[self.first % len(self.buffer)]
            frame = torch.empty(1, *slot.shape[1:], 3, dtype=torch.uint8)  # contiguous (H, W, 3)
            frame[0].copy_(slot.clamp_(0, 1).mul_(255).round_().permute(1, 2, 0))
            slot.zero_()
            self.first += 1
            yield frame.numpy()


class _FrameBuffer:
    """The decoded frames of a stream that later windows still need (indices only increase)."""

    def __init__(
        self, chunks: Iterator[np.ndarray], times: StageTimes, source: str | os.PathLike[str]
    ) -> None:
        self.chunks = chunks
        self.times = times
        self.source = source  # named in errors
        self.frames: np.ndarray | None = None
        self.first = 0  # index of self.frames[0]

    def take(self, start: int, end: int) -> np.ndarray:
        """Frames ``[start, end)`` uint8 ``(end - start, h, w, 3)``; frames before ``start``
        are dropped for good."""
        with self.times.stage("decode"):
            while self.frames is None or self.first + len(self.frames) < end:
                new = next(self.chunks, None)
                if new is None:
                    decoded = self.first + (len(self.frames) if self.frames is not None else 0)
                    raise VideoDecodeError(
                        self.source, f"the video ends after {decoded} frames, before frame "
                        f"{end} that its probe promised (truncated or damaged)"
                    )
                self.frames = new if self.frames is None else np.concatenate([self.frames, new])
            self.frames = self.frames[start - self.first :]
            self.first = start
        return self.frames[: end - start]


# --------------------------------------------------------------------------------------------
# Memory plan

GIB = 1 << 30
DEFAULT_MAX_MEMORY = 8 * GIB  # fits a 24 GiB machine next to other work, and a 12 GiB GPU
CHUNK_CHOICES = (32, 24, 16, 12, 8, 6, 4, 2, 1)  # frames, tried longest first
TILE_CHOICES = (0, 512, 384, 256, 192, 128, 96, 64, 48, 32)  # LR pixels, 0 (whole) first
# Smaller tiles recompute much of their area (a 16 px overlap on each side of a 96 px tile
# doubles the work), so a shorter window with larger tiles is preferred to them.
SMALLEST_EFFICIENT_TILE = 128
PROBE_FRAMES = 4  # frames of the probe forward
PROBE_TILE = 64  # LR pixels per side of the probe forward
# The probe sees one shape; other shapes get other per-shape workspaces (cuDNN, oneDNN) and
# the allocators fragment, which the measurement cannot see: a quarter more is planned for.
MODEL_MARGIN = 1.25
# x264 (preset medium, CRF) holds its lookahead's frames with their half-pel and low-res
# planes. The peak RSS of this module's writer measured here (benchmarks/bench_upscale.py
# --encoder, 70 frames at 1280x720 and 2560x1440; 1 and 6 x264 threads gave the same) is
# about 50 MB plus 51 bytes per pixel plus 3 per pixel and frame of lookahead; the plan
# assumes a little more of each. x264's default lookahead is 40; the plan shortens it (a
# larger file at the same CRF) before it shortens the window.
ENCODER_BYTES = 64 << 20
ENCODER_BYTES_PER_PIXEL = 48.0
ENCODER_BYTES_PER_PIXEL_PER_LOOKAHEAD = 3.2
LOOKAHEAD_CHOICES = (40, 20, 10)  # frames, tried longest first
# Per HR pixel besides the encoder's frames: the uint8 RGB frame handed over, its copy in an
# FFmpeg frame and its conversion to yuv420p.
WRITER_BYTES_PER_PIXEL = 3 + 3 + 1.5
SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20,
              "mib": 1 << 20, "mb": 1000**2, "g": GIB, "gib": GIB, "gb": 1000**3, "t": 1 << 40,
              "tib": 1 << 40, "tb": 1000**4}


def parse_size(text: str) -> int:
    """Bytes of a size such as ``8GiB``, ``512 MiB``, ``1.5G`` (binary) or ``2GB`` (decimal)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match[2].lower() if match else None
    if unit not in SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (write e.g. 8GiB, 512MiB, 2GB)")
    return int(float(match[1]) * SIZE_UNITS[unit])


def format_size(num_bytes: float) -> str:
    """``num_bytes`` in MiB or GiB, one decimal."""
    if num_bytes >= GIB:
        return f"{num_bytes / GIB:.1f} GiB"
    return f"{num_bytes / (1 << 20):.1f} MiB"


def default_memory_budget() -> int:
    """:data:`DEFAULT_MAX_MEMORY`, or half of this machine's memory where that is less."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return DEFAULT_MAX_MEMORY
    return min(DEFAULT_MAX_MEMORY, physical // 2)


def _proc_status_bytes(field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux) in bytes, or None where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field_name}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Set this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where the
    kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _peak_memory_of(run: Callable[[], None], device: torch.device) -> int:
    """Bytes ``run()`` used at its peak above what was in use before: CUDA's peak allocated
    memory on a CUDA device, else the rise of the process's peak RSS over its RSS after
    returning the C allocator's free memory to the system (0 where the kernel gives no
    resettable peak)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        # glibc keeps freed memory resident for reuse, which a probe would not register.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _proc_status_bytes("VmRSS")
    if before is None or not _reset_peak_rss():
        run()
        return 0
    run()
    return max(0, (_proc_status_bytes("VmHWM") or 0) - before)


def measure_model_memory(
    upscaler: ChunkedUpscaler, height: int, width: int, audio: Tensor | None
) -> float:
    """Bytes per LR pixel-frame the network uses, measured on a probe forward of
    ``PROBE_FRAMES`` frames of at most ``PROBE_TILE`` x ``PROBE_TILE`` LR pixels of a
    ``height`` x ``width`` video, after a warm-up forward on one small frame (one-off
    allocations are not per pixel). ``audio`` (PROBE_FRAMES, n_mels, n_frames) is the probe's
    log-mel (fusion models).

    On the CPU this is the process's peak RSS (everything: activations, the output, the
    allocator's slack); on CUDA, torch's peak allocated device memory. Where the kernel gives
    no resettable peak RSS the floor is the float32 output alone (12 s^2 bytes).
    """
    frames = PROBE_FRAMES if audio is None else len(audio)
    lq = torch.zeros(frames, 3, min(PROBE_TILE, height), min(PROBE_TILE, width))
    pixel_frames = lq.shape[0] * lq.shape[2] * lq.shape[3]
    warm_up = lq[:1, :, : PROBE_TILE // 2, : PROBE_TILE // 2]
    upscaler.forward(warm_up, audio[:1] if audio is not None else None)
    peak = _peak_memory_of(lambda: upscaler.forward(lq, audio), upscaler.device)
    output_bytes = 3 * 4 * upscaler.scale**2  # float32 RGB at HR, per LR pixel
    return max(peak / pixel_frames, output_bytes)


def encoder_bytes(pixels: int, lookahead: int) -> int:
    """The memory x264 is planned to use for frames of ``pixels`` pixels at rate-control
    ``lookahead`` (frames)."""
    per_pixel = ENCODER_BYTES_PER_PIXEL + ENCODER_BYTES_PER_PIXEL_PER_LOOKAHEAD * lookahead
    return ENCODER_BYTES + int(per_pixel * pixels)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes of an upscaling run: on the host and on the device (0 on CPU)."""

    host: int
    device: int


def estimate_peak(
    settings: InferenceSettings,
    width: int,
    height: int,
    num_frames: int,
    scale: int,
    model_bytes: float,
    baseline: int,
    lookahead: int = LOOKAHEAD_CHOICES[0],
) -> MemoryEstimate:
    """The peak memory of upscaling ``num_frames`` frames of ``width`` x ``height`` (LR px) with
    resolved ``settings``: ``baseline`` bytes already in use (Python, torch, the model's
    weights), the network at ``model_bytes`` per LR pixel-frame of a tile (times
    :data:`MODEL_MARGIN`), the float32 blend buffer of one window at HR, the LR window
    (uint8 frames, two copies while a chunk is appended, and its float32 copy) and the
    encoder at HR with ``lookahead`` frames of rate-control lookahead. On CUDA the network's
    part is device memory and the host receives each tile's float32 output."""
    frames = min(settings.chunk, num_frames)
    tile_h, tile_w = (min(settings.tile, height), min(settings.tile, width)) if settings.tile else (
        height, width
    )
    hr_pixels = height * width * scale**2
    model = int(MODEL_MARGIN * model_bytes * frames * tile_h * tile_w)
    tile_output = 3 * 4 * frames * tile_h * tile_w * scale**2
    on_device = torch.device(settings.device).type != "cpu"
    host = (
        baseline
        + 3 * 4 * frames * hr_pixels  # blend buffer
        + 3 * (2 + 4) * frames * height * width  # LR window
        + encoder_bytes(hr_pixels, lookahead)
        + int(WRITER_BYTES_PER_PIXEL * hr_pixels)
        + (tile_output if on_device else model)
    )
    return MemoryEstimate(host=host, device=model if on_device else 0)


@dataclass(frozen=True)
class MemoryPlan:
    """The window and tile sizes chosen for a run (:func:`plan_inference`) and why."""

    settings: InferenceSettings  # resolved: every size fixed
    budget: int  # bytes allowed on the host (and on the device)
    device_budget: int | None  # bytes usable on a CUDA device; None on the CPU
    model_bytes: float  # measured bytes per LR pixel-frame of the network
    encoder_lookahead: int  # frames of x264 rate-control lookahead
    estimate: MemoryEstimate

    @property
    def fits(self) -> bool:
        return self.estimate.host <= self.budget and (
            self.device_budget is None or self.estimate.device <= self.device_budget
        )

    def describe(self) -> str:
        """One line: window, overlap, tiles, estimated peak against the budget."""
        settings = self.settings
        tiles = (
            f"tiles {settings.tile} px (overlap {settings.tile_overlap})" if settings.tile
            else "whole frames"
        )
        peak = f"estimated peak {format_size(self.estimate.host)}"
        if self.device_budget is not None:
            peak += f" + {format_size(self.estimate.device)} on {settings.device}"
        verdict = "" if self.fits else " (over the budget, as the fixed sizes ask)"
        return (
            f"plan: chunk {settings.chunk} frames (overlap {settings.overlap}), {tiles}, "
            f"encoder lookahead {self.encoder_lookahead} frames, {peak} of "
            f"{format_size(self.budget)}{verdict}; model {self.model_bytes / 1024:.1f} KiB per "
            "LR pixel-frame (measured)"
        )


def _choices(fixed: int | None, choices: Iterable[int]) -> list[int]:
    return [fixed] if fixed is not None else list(choices)


def plan_inference(
    upscaler: ChunkedUpscaler,
    settings: InferenceSettings,
    width: int,
    height: int,
    num_frames: int,
    audio: Callable[[int, int], Tensor] | None = None,
) -> MemoryPlan:
    """Choose the window (``chunk``, ``overlap``) and tile sizes ``settings`` leaves unfixed so
    that the estimated peak (:func:`estimate_peak`, the network measured by
    :func:`measure_model_memory`) fits ``settings.max_memory``.

    The longest window (then the longest encoder lookahead, :data:`LOOKAHEAD_CHOICES`) whose
    largest fitting tile is whole frames or at least :data:`SMALLEST_EFFICIENT_TILE` px wins;
    failing that, the longest window with any tile that fits. Fixed sizes are kept even over
    the budget (the plan says so). Raises :class:`~avvsr.errors.MemoryBudgetError` when
    nothing unfixed can fit.
    """
    budget = settings.max_memory or default_memory_budget()
    device = torch.device(settings.device)
    probe_audio = audio(0, min(PROBE_FRAMES, num_frames)) if audio is not None else None
    model_bytes = measure_model_memory(upscaler, height, width, probe_audio)
    device_budget = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device)
        device_budget = min(budget, int(0.9 * free))
    baseline = _proc_status_bytes("VmRSS") or 0
    # Windows longer than the video are all one window: only the longest of them is tried.
    chunks = list({min(c, num_frames): c for c in _choices(settings.chunk, CHUNK_CHOICES)[::-1]
                   }.values())[::-1]
    tiles = _choices(settings.tile, TILE_CHOICES)
    if settings.tile is None:  # tiles as large as the frame are whole frames
        tiles = [tile for tile in tiles if tile < max(height, width)]
    plans = []
    for chunk, lookahead, tile in itertools.product(chunks, LOOKAHEAD_CHOICES, tiles):
        try:
            candidate = dataclasses.replace(
                settings, chunk=chunk, tile=tile, max_memory=budget
            ).with_defaults()
        except ValueError:  # a fixed overlap that this window or tile cannot take
            continue
        estimate = estimate_peak(
            candidate, width, height, num_frames, upscaler.scale, model_bytes, baseline,
            lookahead,
        )
        plans.append(
            MemoryPlan(candidate, budget, device_budget, model_bytes, lookahead, estimate)
        )
    if not plans:
        raise MemoryBudgetError(
            f"overlap {settings.overlap} / tile overlap {settings.tile_overlap} leave no window "
            "or tile size to choose: fix the window (--chunk) or tile (--tile) size too"
        )
    fitting = [plan for plan in plans if plan.fits]
    efficient = [
        plan for plan in fitting
        if not plan.settings.tile or plan.settings.tile >= SMALLEST_EFFICIENT_TILE
    ]
    if efficient or fitting:
        return (efficient or fitting)[0]
    if len({(plan.settings.chunk, plan.settings.tile) for plan in plans}) == 1:
        return plans[-1]  # the sizes are fixed: the shortest lookahead
    smallest = min(plans, key=lambda plan: plan.estimate.host)
    raise MemoryBudgetError(
        f"no window and tile sizes fit in {format_size(budget)} for {width}x{height} frames; "
        f"the smallest ({smallest.describe()}) needs more: raise --max-memory"
    )


# --------------------------------------------------------------------------------------------
# Writing


def pixel_format_for(width: int, height: int) -> str:
    """``yuv420p`` (what every player takes) when both sides are even, else ``yuv444p``."""
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


def check_output(source: str | Path, destination: str | Path, overwrite: bool) -> None:
    """Refuse an output path before anything is loaded or decoded.

    Raises :class:`~avvsr.errors.OutputError` when ``destination`` is the input itself (the
    same file by device and inode: also through a hard or symbolic link, whatever
    ``overwrite`` says), an existing folder, has no suffix, or its suffix names no container
    FFmpeg writes video to; :class:`~avvsr.errors.OutputExistsError` when it exists and
    ``overwrite`` is false; ``OutputError`` also when a folder on its way is a file.
    """
    import av

    source, destination = Path(source), Path(destination)
    if destination.is_dir():
        raise OutputError(destination, "is a folder; name the video file to write")
    if destination.exists() and source.exists() and os.path.samefile(source, destination):
        raise OutputError(
            destination, f"is the input {source} itself; write the upscaled video elsewhere"
        )
    if not destination.suffix:
        raise OutputError(destination, "has no suffix to pick the container (.mp4, .mkv, ...)")
    try:
        # Only guesses the muxer from the name: nothing is created until a header is written.
        with av.open(str(partial_path(destination)), mode="w") as container:
            takes_video = container.default_video_codec != "none"
    except ValueError as error:
        raise OutputError(
            destination, f"FFmpeg knows no container for {destination.suffix!r} ({error}); "
            "use .mp4, .mkv, .mov, .webm, ..."
        ) from error
    if not takes_video:
        raise OutputError(destination, f"a {destination.suffix} file cannot hold video")
    refuse_existing(destination, overwrite)
    existing = next(parent for parent in destination.parents if parent.exists())
    if not existing.is_dir():
        raise OutputError(destination, f"{existing} is a file, not a folder")


class UpscaledVideoWriter:
    """Write upscaled frames at given times and carry a source file's audio; a context manager.

    Frames are encoded (H.264 where the container takes it, else the container's default
    codec) with presentation times ``pts`` in ``time_base`` (the source's, so variable frame
    rate is kept); ``lookahead`` sets x264's rate-control lookahead (frames; None: x264's
    default, 40), which most of its memory grows with. The source's first audio stream is
    copied packet by packet when the output container takes its codec, otherwise decoded and
    re-encoded with the container's default audio codec; audio is interleaved with the video
    as the frames arrive. Audio packets whose decoding times do not increase (repeated, going
    back or missing: muxers refuse them) are moved to just after the packet before them (its
    time plus its duration), pts with dts; ``audio_packets_retimed`` counts them. The file is
    written through :func:`avvsr.atomic.atomic_write`: under a temporary name, renamed on a
    clean exit, deleted on an exception or SIGINT/SIGTERM.
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
        lookahead: int | None = None,
        times: StageTimes | None = None,
    ) -> None:
        import av

        from avvsr.data.io import CRF_CODECS

        self.path = Path(path)
        self.pts = pts
        self.time_base = time_base
        self.times = times or StageTimes()
        self._atomic = contextlib.ExitStack()
        self.temporary = self._atomic.enter_context(atomic_write(self.path))
        self.container = None
        self._source = None
        self.frames_written = 0
        self.audio_mode = "none"
        self.audio_packets_retimed = 0
        self._audio_last: tuple[Fraction, Fraction] | None = None  # (dts, duration) seconds
        try:
            self.container = av.open(str(self.temporary), mode="w")
            supported = self.container.supported_codecs
            codec = "h264" if not supported or "h264" in supported else None
            self.video = self.container.add_stream(
                codec or self.container.default_video_codec,
                rate=Fraction(fps).limit_denominator(10_000),
            )
            self.video.width, self.video.height = width, height
            self.video.pix_fmt = pixel_format_for(width, height)
            self.video.codec_context.time_base = time_base
            options = {}
            if self.video.codec_context.name in CRF_CODECS:
                options = {"crf": str(crf), "b": "0"}
            if self.video.codec_context.name == "libx264" and lookahead is not None:
                options["rc-lookahead"] = str(lookahead)
            self.video.options = options
            if audio_source is not None:
                self._open_audio_source(audio_source)
        except BaseException as error:
            self._discard(error)
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
            if not packet.size:  # the demuxer's empty end-of-stream packet
                continue
            packet_s = packet.pts * packet.time_base if packet.pts is not None else None
            if until_s is not None and packet_s is not None and packet_s > until_s:
                self._audio_next = packet
                return
            if self.audio_mode == "copied":
                packet.stream = self.audio
                self._mux_audio_packet(packet)
                continue
            try:
                decoded = packet.decode()
            except av.FFmpegError as error:
                warnings.warn(f"{self._source.name}: audio packet skipped ({error})", stacklevel=2)
                continue
            for frame in decoded:
                for encoded in self.audio.encode(frame):
                    self._mux_audio_packet(encoded)
        if self.audio_mode == "re-encoded":
            for encoded in self.audio.encode(None):
                self._mux_audio_packet(encoded)

    def _mux_audio_packet(self, packet) -> None:
        """Mux one audio packet, first moving it after the last one where its decoding time
        (seconds) does not increase, pts with dts (:attr:`audio_packets_retimed` counts)."""
        time_base = packet.time_base
        dts = packet.dts if packet.dts is not None else packet.pts
        if self._audio_last is not None:
            last_s, last_duration_s = self._audio_last
            if dts is None or dts * time_base <= last_s:
                after = math.ceil((last_s + last_duration_s) / time_base)
                new_dts = max(after, math.floor(last_s / time_base) + 1)
                # dts is None only where pts is None too.
                packet.pts = packet.pts + new_dts - dts if dts is not None else new_dts
                packet.dts = dts = new_dts
                self.audio_packets_retimed += 1
        if dts is not None:
            self._audio_last = (dts * time_base, (packet.duration or 0) * time_base)
        self.container.mux(packet)

    def close(self) -> Path:
        """Flush, close and rename the file into place."""
        if self.frames_written == 0:
            error = ValueError(f"{self.path}: no frames were written")
            self._discard(error)
            raise error
        try:
            with self.times.stage("encode"):
                self.container.mux(self.video.encode(None))
                if self._source is not None:
                    self._mux_audio(until_s=None)
                    self._source.close()
                self.container.close()
        except BaseException as error:
            self._discard(error)
            raise
        self._atomic.close()  # renames the temporary file onto self.path
        return self.path

    def _discard(self, error: BaseException) -> None:
        """Close everything and delete the temporary file, because of ``error``."""
        for container in (self.container, self._source):
            if container is not None:
                with contextlib.suppress(Exception):
                    container.close()
        self._atomic.__exit__(type(error), error, error.__traceback__)

    def __enter__(self) -> UpscaledVideoWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard(exc)


# --------------------------------------------------------------------------------------------
# The whole job


@dataclass(frozen=True)
class UpscaleReport:
    """What :func:`upscale_video` did: frames, sizes, plan, audio handling, seconds per stage."""

    path: Path
    num_frames: int
    input_size: tuple[int, int]  # (width, height)
    output_size: tuple[int, int]
    audio: str  # "copied", "re-encoded" or "none"
    audio_packets_retimed: int  # audio packets moved to make their times increase
    plan: MemoryPlan | None  # None when the settings fixed every size and no budget was given
    seconds: float
    stage_seconds: dict[str, float]

    @property
    def frames_per_s(self) -> float:
        return self.num_frames / self.seconds if self.seconds > 0 else float("inf")

    @property
    def audio_summary(self) -> str:
        """How the audio was carried, in words."""
        if self.audio_packets_retimed:
            return (
                f"{self.audio} (timestamps of {self.audio_packets_retimed} packets moved to "
                "increase)"
            )
        return self.audio


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


PROGRESS_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} frames "
    "[{elapsed}<{remaining}, {rate_fmt}]"
)


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
    on_plan: Callable[[MemoryPlan], None] | None = None,
) -> UpscaleReport:
    """Upscale the video ``source`` into ``destination``, with the source's audio.

    Streams the frames (bounded memory), runs ``model`` as ``settings`` say, choosing the
    sizes they leave unfixed from the memory budget (:func:`plan_inference`; ``on_plan`` gets
    the plan before the first frame), keeps the source frame times, copies (or re-encodes)
    the audio. The output is checked first (:func:`check_output`); nothing is written when the
    input is bad; a failure or SIGINT/SIGTERM mid-way leaves no ``destination`` and no
    temporary file.
    """
    from tqdm import tqdm

    from avvsr.data.io import iter_frame_chunks, probe_video

    source, destination = Path(source), Path(destination)
    check_output(source, destination, overwrite)
    started = time.perf_counter()
    upscaler = ChunkedUpscaler(model.net, settings)
    with upscaler.times.stage("decode"):
        info = probe_video(source)
        frame_audio = frame_audio_for(
            model, source, info.has_audio, info.timestamps_s, allow_silent
        )
    audio = frame_audio.features if frame_audio is not None else None
    plan = None
    if None in (settings.chunk, settings.overlap, settings.tile, settings.tile_overlap) or (
        settings.max_memory is not None
    ):
        with upscaler.times.stage("plan"):
            plan = plan_inference(
                upscaler, settings, info.width, info.height, info.num_frames, audio
            )
        upscaler.settings = plan.settings
        if on_plan is not None:
            on_plan(plan)
    pts, time_base = source_pts(source, info.timestamps_s)
    out_width, out_height = info.width * model.scale, info.height * model.scale
    destination.parent.mkdir(parents=True, exist_ok=True)
    writer = UpscaledVideoWriter(
        destination, out_width, out_height, info.fps, time_base, pts,
        audio_source=source if info.has_audio else None, crf=crf,
        lookahead=plan.encoder_lookahead if plan is not None else None, times=upscaler.times,
    )
    bar = tqdm(
        total=info.num_frames, desc=source.name, unit="frame", bar_format=PROGRESS_FORMAT,
        disable=not progress,
    )
    with writer, bar, frame_audio or contextlib.nullcontext():
        decode_step = upscaler.settings.chunk - upscaler.settings.overlap
        chunks = iter_frame_chunks(source, decode_step)
        for frames in upscaler.upscale(
            chunks, info.num_frames, audio, progress=bar.update, source=source
        ):
            writer.write(frames)
    return UpscaleReport(
        path=destination,
        num_frames=info.num_frames,
        input_size=(info.width, info.height),
        output_size=(out_width, out_height),
        audio=writer.audio_mode,
        audio_packets_retimed=writer.audio_packets_retimed,
        plan=plan,
        seconds=time.perf_counter() - started,
        stage_seconds=dict(upscaler.times.seconds),
    )
