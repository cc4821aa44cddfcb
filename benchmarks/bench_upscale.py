"""Benchmark of ``avvsr-upscale``: peak memory and throughput by input size, at the defaults.

For each LR input size (default 180p, 360p, 720p and 1080p; few frames at the large sizes) a
moving-pattern clip with a tone is generated, and the repository's tiny model
(``basicvsr_tiny`` + MS-AVF, random weights: speed and memory do not depend on the weights)
upscales it x4 with the default settings (window and tiles planned from the default memory
budget) in a fresh Python process. Printed per size: the plan (window, overlap, tiles, the
estimated peak and the network's measured bytes per LR pixel-frame), the measured peak,
frames/s, the share of wall time per stage, and the plan a 300-frame video of that size gets
(its windows are longer than the few frames run here). Then the plan the paper-size model
(``basicvsr`` + MS-AVF) gets for a 300-frame 1080p video, probed in a fresh process without
upscaling.
Then the soundtrack (``--soundtrack``): a fusion model's audio streams too, so the peak must not
grow with the soundtrack's length. Videos of 6 and 60 minutes at a frame every 2 seconds
(16 x 16 LR px, a 16 kHz mono AAC tone as long as the video) are upscaled by the tiny model.
So few frames walk the audio windows through the whole hour of sound (a short video over a
long track would stop decoding after its last frame) while the network's work stays small
(1,800 tiny frames an hour). Printed per length: the upscaler's peak RSS, the peak RSS rise of
cutting the same windows with the streaming reader alone (``AudioReader``, windows of 32
frames sharing 8) and, for comparison, of decoding the whole track (``read_audio``, what the
upscaler did before: 4 bytes a sample, 230 MB an hour at 16 kHz), each in a fresh process.

Peak memory is the RSS high-water mark of the child process (``VmHWM`` in
``/proc/self/status``, read by the child when it is done): everything the process touched,
Python, torch, the decoders and the encoder included. (Not ``getrusage``'s ``ru_maxrss``: a
child starts with its parent's mark, which ``exec`` keeps, so it would report this script's
own peak, the 1-hour tone it writes included.) The mark after loading the model
(before upscaling) is printed too. With few frames the encoder's lookahead never fills, so
the measured peak stays below the estimate at the large sizes; ``--encoder`` measures x264's
own memory per pixel over more frames, against the constants the plan assumes. Timings on a
shared machine are noisy.
Run with ``make bench-upscale`` or ``python benchmarks/bench_upscale.py --sizes 320x180:24``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

FPS = 25.0
SAMPLE_RATE = 16000
# LR width x height : frames. Few frames at the large sizes keep the run to minutes on 2 cores.
DEFAULT_SIZES = ("320x180:6", "640x360:3", "1280x720:2", "1920x1080:1")
LONG_VIDEO_FRAMES = 300  # the plans printed for long videos (windows of up to 32 frames)
# The soundtrack section: video lengths (minutes) at SOUNDTRACK_FPS, SOUNDTRACK_SIZE LR px.
DEFAULT_SOUNDTRACK_MINUTES = ("6", "60")
SOUNDTRACK_FPS = 0.5
SOUNDTRACK_SIZE = 16


def write_clip(path: Path, num_frames: int, height: int, width: int, fps: float = FPS) -> Path:
    """A clip of a bright square moving over a gradient at ``fps``, with a 440 Hz tone as long
    as it, written in chunks."""
    import numpy as np

    from avvsr.data.video_writer import write_video

    rows, cols = np.mgrid[0:height, 0:width]
    background = ((rows + cols) * 255 // (height + width)).astype(np.uint8)

    def chunks(size: int = 50):
        for first in range(0, num_frames, size):
            frames = np.repeat(background[None, :, :, None], min(size, num_frames - first), 0)
            frames = np.repeat(frames, 3, axis=3)
            for offset, frame in enumerate(frames):
                left = (first + offset) % (width - 8)
                frame[height // 2 - 4 : height // 2 + 4, left : left + 8] = 250
            yield frames

    second = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(SAMPLE_RATE) / SAMPLE_RATE))
    # A whole number of cycles a second: the tone is one second repeated.
    tone = np.resize(second.astype(np.float32), round(num_frames / fps * SAMPLE_RATE))
    return write_video(path, chunks(), fps, tone, SAMPLE_RATE)


def write_model(path: Path, backbone: str) -> Path:
    """The repository's ``backbone`` + ``msavf`` model, random weights, as a checkpoint."""
    import torch

    from avvsr.checkpoint import write_checkpoint
    from avvsr.config import build_lit_module, compose

    cfg = compose("train", [f"model/backbone={backbone}", "model/fusion=msavf"])
    torch.manual_seed(0)
    return write_checkpoint(build_lit_module(cfg.model), path)


def _peak_rss_mib() -> float:
    """This process's RSS high-water mark, MiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError("/proc/self/status has no VmHWM (the benchmark needs Linux)")


def plan_for(model, width: int, height: int, num_frames: int):
    """The default plan for a ``width`` x ``height`` video of ``num_frames`` frames, with
    silence as its audio (the plan does not depend on the sound)."""
    import torch

    from avvsr.inference import ChunkedUpscaler, InferenceSettings
    from avvsr.memory_plan import plan_inference

    settings = model.audio_features
    n_frames = settings.log_mel().num_frames(settings.window_samples)

    def silence(first: int, last: int) -> torch.Tensor:
        return torch.zeros(last - first, settings.n_mels, n_frames)

    upscaler = ChunkedUpscaler(model.net)
    return plan_inference(upscaler, InferenceSettings(), width, height, num_frames, silence)


def child_upscale(source: str, destination: str, checkpoint: str) -> dict:
    """Upscale once at the default settings; the report, the plan and the peak RSS, then the
    plan a long video (300 frames) of that size would get."""
    import torch

    from avvsr.checkpoint import load_model
    from avvsr.upscaling import upscale_video

    model = load_model(checkpoint)
    loaded_rss_mib = _peak_rss_mib()
    report = upscale_video(source, destination, model, progress=False)
    peak_rss_mib = _peak_rss_mib()
    long_plan = plan_for(model, *report.input_size, LONG_VIDEO_FRAMES)
    return {
        "frames": report.num_frames,
        "input_size": report.input_size,
        "output_size": report.output_size,
        "seconds": report.seconds,
        "stage_seconds": report.stage_seconds,
        "plan": report.plan.describe(),
        "estimated_peak_mib": report.plan.estimate.host / 2**20,
        "loaded_rss_mib": loaded_rss_mib,
        "peak_rss_mib": peak_rss_mib,
        "threads": torch.get_num_threads(),
        "long_plan": long_plan.describe(),
    }


def child_encoder(width: str, height: str, frames: str, lookahead: str) -> dict:
    """Encode ``frames`` moving-noise frames with the upscaler's writer at x264 rate-control
    ``lookahead``; the rise of peak RSS over the peak before (MiB)."""
    import numpy as np

    from avvsr.data.video_writer import VideoWriter, pixel_format_for

    width, height, frames = int(width), int(height), int(frames)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        before = _peak_rss_mib()
        with VideoWriter(
            Path(folder) / "encoded.mp4", FPS, width, height,
            pix_fmt=pixel_format_for(width, height), lookahead=int(lookahead),
        ) as writer:
            for index in range(frames):
                writer.write_frames(np.roll(image, 2 * index, axis=1)[None])
        peak = _peak_rss_mib()
    return {"rise_mib": peak - before}


def child_plan(checkpoint: str, width: str, height: str) -> dict:
    """The plan for a ``width`` x ``height`` video of 300 frames, without upscaling it."""
    from avvsr.checkpoint import load_model

    plan = plan_for(load_model(checkpoint), int(width), int(height), LONG_VIDEO_FRAMES)
    return {"plan": plan.describe(), "peak_rss_mib": _peak_rss_mib()}


def child_audio(source: str, how: str) -> dict:
    """Peak RSS before and after getting the audio of ``source``: ``how`` ``"whole"``, the
    whole track decoded (``read_audio``); ``"streamed"``, every frame's window cut as the
    upscaler asks (:class:`~avvsr.data.audio_io.AudioReader`, windows of 32 frames sharing 8).
    MiB; and the samples the reader held at most."""
    from avvsr.data.audio_features import AudioFeatureSettings
    from avvsr.data.audio_io import AudioReader, read_audio
    from avvsr.data.io import probe_video
    from avvsr.inference import window_starts

    times = probe_video(source).timestamps_s
    window_s = AudioFeatureSettings().window_s
    before = _peak_rss_mib()
    if how == "whole":
        samples = len(read_audio(source, SAMPLE_RATE).samples)
    else:
        samples = 0
        with AudioReader(source, SAMPLE_RATE) as reader:
            for start in window_starts(len(times), 32, 8):
                reader.windows(times[start : start + 32], window_s)
                samples = max(samples, reader.kept)
    return {"before_mib": before, "peak_mib": _peak_rss_mib(), "samples": samples}


def soundtrack_section(work: Path, checkpoint: Path, minutes: list[str]) -> None:
    """Upscale videos whose soundtracks last ``minutes`` and print the peaks (module doc)."""
    from avvsr.memory_plan import format_size

    def mib(value: float) -> str:
        return format_size(value * 2**20)

    side = SOUNDTRACK_SIZE
    print(f"soundtrack: basicvsr_tiny + msavf, {side}x{side} LR at {SOUNDTRACK_FPS:g} frames/s "
          f"(the frames' windows walk through the whole soundtrack), {SAMPLE_RATE} Hz mono AAC")
    peaks = {}
    for length in minutes:
        frames = round(float(length) * 60 * SOUNDTRACK_FPS)
        source = write_clip(work / f"sound{length}.mp4", frames, side, side, SOUNDTRACK_FPS)
        upscaled = run_child("upscale", str(source), str(work / f"up-sound{length}.mp4"),
                             str(checkpoint))
        streamed = run_child("audio", str(source), "streamed")
        whole = run_child("audio", str(source), "whole")
        peaks[length] = (upscaled["peak_rss_mib"], whole["peak_mib"] - whole["before_mib"])
        print(f"  {length} min ({frames} frames): upscaler peak RSS "
              f"{mib(upscaled['peak_rss_mib'])} ({mib(upscaled['loaded_rss_mib'])} after "
              f"loading the model), {upscaled['frames'] / upscaled['seconds']:.1f} frames/s; "
              f"streamed windows alone: peak RSS rise "
              f"{mib(streamed['peak_mib'] - streamed['before_mib'])} (at most "
              f"{streamed['samples']} samples held); whole track (read_audio): peak RSS rise "
              f"{mib(whole['peak_mib'] - whole['before_mib'])} ({whole['samples']} samples)")
    if len(peaks) > 1:
        (short, (short_up, short_whole)), *_, (long, (long_up, long_whole)) = peaks.items()
        print(f"  from {short} to {long} min: the upscaler's peak RSS changes by "
              f"{long_up - short_up:+.1f} MiB, whole-track decoding's by "
              f"{long_whole - short_whole:+.1f} MiB")


def run_child(*args: str) -> dict:
    finished = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True
    )
    if finished.returncode != 0:
        sys.exit(f"child {args} failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=list(DEFAULT_SIZES),
                        help="LR WIDTHxHEIGHT:FRAMES per run (none: skip)")
    parser.add_argument("--no-paper-plan", action="store_true",
                        help="skip the paper-size model's 1080p plan")
    parser.add_argument("--encoder", nargs="*", default=["1280x720:70", "2560x1440:70"],
                        help="HR WIDTHxHEIGHT:FRAMES to measure x264's memory at (none: skip)")
    parser.add_argument("--soundtrack", nargs="*", default=list(DEFAULT_SOUNDTRACK_MINUTES),
                        help="video (and soundtrack) lengths in minutes to measure the "
                        "upscaler's peak at (none: skip)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        children = {"upscale": child_upscale, "plan": child_plan, "encoder": child_encoder,
                    "audio": child_audio}
        print(json.dumps(children[kind](*rest)))
        return

    from avvsr.memory_plan import LOOKAHEAD_CHOICES, encoder_bytes, format_size

    for size in args.encoder:
        dims, _, frames = size.partition(":")
        width, height = dims.split("x")
        for lookahead in (LOOKAHEAD_CHOICES[-1], LOOKAHEAD_CHOICES[0]):
            measured = run_child("encoder", width, height, frames, str(lookahead))
            planned = encoder_bytes(int(width) * int(height), lookahead)
            print(f"x264 at {dims}, {frames} frames, rc-lookahead {lookahead}: peak RSS rise "
                  f"{format_size(measured['rise_mib'] * 2**20)} (the plan assumes "
                  f"{format_size(planned)})")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        checkpoint = write_model(work / "tiny.ckpt", "basicvsr_tiny")
        print(f"model: basicvsr_tiny + msavf (random weights), x4, default settings; clips at "
              f"{FPS:g} fps")
        for size in args.sizes:
            dims, _, frames = size.partition(":")
            width, height = (int(n) for n in dims.split("x"))
            source = write_clip(work / f"clip{height}.mp4", int(frames), height, width)
            result = run_child("upscale", str(source), str(work / f"up{height}.mp4"),
                               str(checkpoint))
            shares = ", ".join(
                f"{name} {100 * seconds / result['seconds']:.0f}%"
                for name, seconds in result["stage_seconds"].items()
            )
            print(
                f"{width}x{height} -> {result['output_size'][0]}x{result['output_size'][1]}, "
                f"{result['frames']} frames: {result['frames'] / result['seconds']:.3f} "
                f"frames/s, peak RSS {format_size(result['peak_rss_mib'] * 2**20)} "
                f"(estimated {format_size(result['estimated_peak_mib'] * 2**20)}; "
                f"{format_size(result['loaded_rss_mib'] * 2**20)} after loading), "
                f"{result['threads']} torch threads; time: {shares}\n  {result['plan']}\n"
                f"  {LONG_VIDEO_FRAMES} frames would get: {result['long_plan']}"
            )
        if args.soundtrack:
            soundtrack_section(work, checkpoint, args.soundtrack)
        if not args.no_paper_plan:
            paper = write_model(work / "paper.ckpt", "basicvsr")
            result = run_child("plan", str(paper), "1920", "1080")
            print(f"paper-size basicvsr + msavf at 1920x1080 (probe only, peak RSS "
                  f"{format_size(result['peak_rss_mib'] * 2**20)}):\n  {result['plan']}")


if __name__ == "__main__":
    main()
