"""Upscaling a video file with a trained model, end to end (``avvsr-upscale``).

:func:`upscale_video` checks the output path first (:func:`check_output`, before anything is
loaded), probes the source, makes the per-frame audio a fusion model needs
(:func:`avvsr.inference.frame_audio_for`), chooses the window and tile sizes left unfixed from
the memory budget (:func:`avvsr.memory_plan.plan_inference`), streams the decoded frames through
the :class:`~avvsr.inference.ChunkedUpscaler` and each finished HR frame into the
:class:`~avvsr.data.video_writer.VideoWriter`: at the source frame times (:func:`source_pts`:
variable frame rate is kept), with the source's audio packets copied unchanged where the output
container takes their codec (re-timed where their decoding times do not increase), re-encoded
otherwise. The file appears under its name only when complete
(:func:`avvsr.atomic.atomic_write`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from avvsr.atomic import partial_path, refuse_existing
from avvsr.checkpoint import LoadedModel
from avvsr.errors import OutputError
from avvsr.inference import ChunkedUpscaler, InferenceSettings, frame_audio_for
from avvsr.memory_plan import MemoryPlan, plan_inference


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
    from avvsr.data.video_writer import VideoWriter, pixel_format_for

    source, destination = Path(source), Path(destination)
    check_output(source, destination, overwrite)
    started = time.perf_counter()
    upscaler = ChunkedUpscaler(model.net, settings)
    times = upscaler.times
    # Whatever fails after the soundtrack or the output is opened closes them (and deletes
    # the partial output) on the way out.
    with contextlib.ExitStack() as stack:
        with times.stage("decode"):
            info = probe_video(source)
            frame_audio = frame_audio_for(
                model, source, info.has_audio, info.timestamps_s, allow_silent
            )
        audio = None
        if frame_audio is not None:
            stack.enter_context(frame_audio)
            audio = frame_audio.features
        plan = None
        if None in (settings.chunk, settings.overlap, settings.tile, settings.tile_overlap) or (
            settings.max_memory is not None
        ):
            with times.stage("plan"):
                plan = plan_inference(
                    upscaler, settings, info.width, info.height, info.num_frames, audio
                )
            upscaler.settings = plan.settings
            if on_plan is not None:
                on_plan(plan)
        pts, time_base = source_pts(source, info.timestamps_s)
        out_width, out_height = info.width * model.scale, info.height * model.scale
        destination.parent.mkdir(parents=True, exist_ok=True)
        writer = stack.enter_context(VideoWriter(
            destination, info.fps, out_width, out_height, pts=pts, time_base=time_base, crf=crf,
            pix_fmt=pixel_format_for(out_width, out_height),
            lookahead=plan.encoder_lookahead if plan is not None else None,
            audio_source=source if info.has_audio else None,
        ))
        bar = stack.enter_context(tqdm(
            total=info.num_frames, desc=source.name, unit="frame", bar_format=PROGRESS_FORMAT,
            disable=not progress,
        ))
        decode_step = upscaler.settings.chunk - upscaler.settings.overlap
        chunks = iter_frame_chunks(source, decode_step)
        for frames in upscaler.upscale(
            chunks, info.num_frames, audio, progress=bar.update, source=source
        ):
            with times.stage("encode"):
                writer.write_frames(frames)
        with times.stage("encode"):
            writer.close()
        return UpscaleReport(
            path=destination,
            num_frames=info.num_frames,
            input_size=(info.width, info.height),
            output_size=(out_width, out_height),
            audio=writer.audio_mode,
            audio_packets_retimed=writer.audio_packets_retimed,
            plan=plan,
            seconds=time.perf_counter() - started,
            stage_seconds=dict(times.seconds),
        )

