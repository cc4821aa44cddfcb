"""The memory plan of an upscaling run: window and tile sizes chosen from a memory budget.

:func:`plan_inference` chooses the window and tile sizes of
:class:`~avvsr.inference.InferenceSettings` that the caller left unfixed so that the estimated
peak (:func:`estimate_peak`) stays within a budget (:func:`default_memory_budget`, or the
caller's). The estimate adds the bytes already in use, the network's bytes per LR pixel-frame
measured by a probe forward (:func:`measure_model_memory`), the HR blend buffer of one window,
the LR window and the encoder's frames (:func:`encoder_bytes`, x264's memory as
``benchmarks/bench_upscale.py --encoder`` measures it). Sizes are read and printed with
:func:`parse_size` and :func:`format_size` (``avvsr-upscale --max-memory``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import itertools
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from avvsr.errors import MemoryBudgetError

if TYPE_CHECKING:
    from avvsr.inference import ChunkedUpscaler, InferenceSettings

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
# planes. The peak RSS of the upscaler's writer (avvsr.data.video_writer) measured here
# (benchmarks/bench_upscale.py --encoder, 70 frames at 1280x720 and 2560x1440; 1 and 6 x264
# threads gave the same) is about 50 MB plus 51 bytes per pixel plus 3 per pixel and frame
# of lookahead; the plan assumes a little more of each. x264's default lookahead is 40; the
# plan shortens it (a larger file at the same CRF) before it shortens the window.
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

