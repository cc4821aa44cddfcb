"""``avvsr-upscale IN OUT --ckpt CKPT``: upscale a video with a trained model, keeping its audio.

The video streams through the model in overlapping temporal windows (``--chunk``/``--overlap``,
frames) and optionally overlapping spatial tiles (``--tile``/``--tile-overlap``, LR pixels), so
frame memory does not grow with the video's length (a fusion model's soundtrack is decoded
whole, mono at the model's rate: 230 MB an hour at 16 kHz). OUT keeps the input's frame
times; its audio is the input's audio stream, copied unchanged where OUT's container takes the
codec (re-encoded otherwise). ``--ckpt`` takes a training checkpoint or an ``avvsr-export`` file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from avvsr.inference import DEFAULT_CHUNK, DEFAULT_OVERLAP, DEFAULT_TILE_OVERLAP, PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avvsr-upscale",
        description="Upscale a video with a trained avvsr model, keeping its soundtrack.",
    )
    add = parser.add_argument
    add("input", help="video to upscale (any file FFmpeg reads)")
    add("output", help="upscaled video; its suffix picks the container (.mp4, .mkv, ...)")
    add("--ckpt", required=True, help="training checkpoint (.ckpt) or export (.safetensors)")
    add("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (default: cpu)")
    add("--precision", choices=sorted(PRECISIONS), default="fp32", help="autocast precision")
    add("--chunk", type=int, default=DEFAULT_CHUNK, help="frames per temporal window")
    add("--overlap", type=int, default=DEFAULT_OVERLAP, help="frames shared by neighbour windows")
    add("--tile", type=int, default=0, help="LR tile size in pixels (default 0: whole frames)")
    add("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP, help="LR pixels shared by tiles")
    add("--crf", type=int, default=18, help="video quality (x264/VP9 CRF; lower is better)")
    add(
        "--allow-silent", action="store_true",
        help="a fusion model upscales a video without audio using silence (else it refuses)",
    )
    add("--overwrite", action="store_true", help="replace OUT if it exists")
    add("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns 0, or exits with status 2 and a message on bad input."""
    from avvsr.atomic import refuse_existing
    from avvsr.checkpoint import load_model
    from avvsr.data.io import probe_video
    from avvsr.errors import AVVSRError
    from avvsr.inference import InferenceSettings, upscale_video

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = InferenceSettings(
            chunk=args.chunk, overlap=args.overlap, tile=args.tile,
            tile_overlap=args.tile_overlap, device=args.device, precision=args.precision,
        )
    except ValueError as error:
        parser.error(str(error))
    try:
        refuse_existing(Path(args.output), args.overwrite)
        probe_video(args.input)  # report a bad input before the (slower) model load
        model = load_model(args.ckpt)
        report = upscale_video(
            args.input, args.output, model, settings, overwrite=args.overwrite,
            allow_silent=args.allow_silent, progress=not args.quiet, crf=args.crf,
        )
    except AVVSRError as error:
        parser.exit(2, f"avvsr-upscale: error: {error}\n")
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.stage_seconds.items())
    print(
        f"{report.path}: {report.num_frames} frames {report.input_size[0]}x{report.input_size[1]}"
        f" -> {report.output_size[0]}x{report.output_size[1]}, audio {report.audio}, "
        f"{report.seconds:.1f} s ({report.frames_per_s:.2f} frames/s; {stages})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
