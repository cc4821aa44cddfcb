"""Running a trained model over a video: per-frame audio, chunked and tiled inference.

Two parts, used by ``avvsr-upscale`` (:mod:`avvsr.upscaling`) and ``avvsr-visualize``:

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

The window and tile sizes a caller leaves unfixed are chosen from a memory budget by
:mod:`avvsr.memory_plan`; the frames are written by :mod:`avvsr.data.video_writer`.

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
import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avvsr.checkpoint import LoadedModel
from avvsr.data.audio_features import AudioFeatureSettings
from avvsr.errors import MissingAudioError, VideoDecodeError

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
    :func:`avvsr.upscaling.upscale_video` chooses it from the memory budget ``max_memory``
    (bytes; None: :func:`avvsr.memory_plan.default_memory_budget`) with
    :func:`avvsr.memory_plan.plan_inference`, while a bare
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
