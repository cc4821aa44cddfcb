"""Benchmark of ``avvsr-upscale``: throughput, peak memory against video length, time per stage.

Generates a moving-pattern clip with a tone for each length (default 100 and 1,000 frames),
builds the repository's tiny model (``basicvsr_tiny`` + MS-AVF, random weights: speed and
memory do not depend on the weights) and upscales each clip, chunked at the default settings,
in a fresh Python process. Printed per run: frames/s, the peak resident memory of that
process, and the share of wall time spent decoding (frames and audio), in the model (log-mel,
network, blending) and encoding (video encode, audio copy, muxing). Then the ratio of the
longest run's peak memory to the shortest's.

Peak memory is the RSS high-water mark of the child process (``resource.getrusage(
RUSAGE_SELF).ru_maxrss`` read by the child when it is done): everything the process touched,
Python, torch and the decoders included. The same mark read after loading the model (before
upscaling) is printed too, so the memory the upscaling itself adds can be seen.
Run with ``make bench-upscale`` or ``python benchmarks/bench_upscale.py --frames 100 1000``.
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


def write_clip(path: Path, num_frames: int, height: int, width: int) -> Path:
    """A clip of a bright square moving over a gradient, with a 440 Hz tone, written in chunks."""
    import numpy as np

    from avvsr.data.io import write_video

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

    times = np.arange(round(num_frames / FPS * SAMPLE_RATE)) / SAMPLE_RATE
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * times)).astype(np.float32)
    return write_video(path, chunks(), FPS, tone, SAMPLE_RATE)


def write_tiny_checkpoint(path: Path) -> Path:
    """The repository's ``basicvsr_tiny`` + ``msavf`` model, random weights, as a checkpoint."""
    import torch

    from avvsr.checkpoint import write_checkpoint
    from avvsr.config import build_lit_module, compose

    cfg = compose("train", ["model/backbone=basicvsr_tiny", "model/fusion=msavf"])
    torch.manual_seed(0)
    return write_checkpoint(build_lit_module(cfg.model), path)


def child(source: str, destination: str, checkpoint: str) -> None:
    """Upscale once and print the report and this process's peak RSS as JSON."""
    import resource

    import torch

    from avvsr.checkpoint import load_model
    from avvsr.inference import upscale_video

    model = load_model(checkpoint)
    loaded_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    report = upscale_video(source, destination, model, progress=False)
    print(json.dumps({
        "frames": report.num_frames,
        "input_size": report.input_size,
        "output_size": report.output_size,
        "seconds": report.seconds,
        "stage_seconds": report.stage_seconds,
        "loaded_rss_mib": loaded_rss_kib / 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--height", type=int, default=32, help="LR height of the clips")
    parser.add_argument("--width", type=int, default=32, help="LR width of the clips")
    parser.add_argument("--child", nargs=3, metavar=("IN", "OUT", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from avvsr.inference import DEFAULT_CHUNK, DEFAULT_OVERLAP

    results = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        checkpoint = write_tiny_checkpoint(work / "tiny.ckpt")
        print(f"model: basicvsr_tiny + msavf (random weights), chunk {DEFAULT_CHUNK}, "
              f"overlap {DEFAULT_OVERLAP}; clips {args.width}x{args.height} LR at {FPS:g} fps")
        for num_frames in args.frames:
            source = write_clip(work / f"clip{num_frames}.mp4", num_frames, args.height, args.width)
            finished = subprocess.run(
                [sys.executable, __file__, "--child", str(source),
                 str(work / f"up{num_frames}.mp4"), str(checkpoint)],
                capture_output=True, text=True,
            )
            if finished.returncode != 0:
                sys.exit(f"upscaling {num_frames} frames failed:\n{finished.stderr}")
            result = json.loads(finished.stdout.strip().splitlines()[-1])
            results.append(result)
            stages = result["stage_seconds"]
            shares = ", ".join(
                f"{name} {100 * seconds / result['seconds']:.0f}%"
                for name, seconds in stages.items()
            )
            print(
                f"{num_frames:5d} frames -> {result['output_size'][0]}x{result['output_size'][1]}:"
                f" {result['frames'] / result['seconds']:.2f} frames/s, "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB ({result['loaded_rss_mib']:.0f} MiB "
                f"before upscaling), {result['threads']} torch threads; "
                f"time: {shares}"
            )
    if len(results) > 1:
        first, last = results[0], results[-1]
        ratio = last["peak_rss_mib"] / first["peak_rss_mib"]
        print(f"peak RSS {args.frames[-1]} frames / {args.frames[0]} frames: {ratio:.3f}")
        added = [r["peak_rss_mib"] - r["loaded_rss_mib"] for r in (first, last)]
        print(f"RSS added by upscaling: {added[0]:.0f} MiB ({args.frames[0]} frames), "
              f"{added[1]:.0f} MiB ({args.frames[-1]} frames)")


if __name__ == "__main__":
    main()
