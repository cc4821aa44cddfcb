"""``avvsr-upscale IN OUT --ckpt CKPT``: upscale a video with a trained model, keeping its audio.

The video streams through the model in overlapping temporal windows (``--chunk``/``--overlap``,
frames) and overlapping spatial tiles (``--tile``/``--tile-overlap``, LR pixels), and a fusion
model's soundtrack is decoded window by window with them, so memory does not grow with the
video's (or the soundtrack's) length. The sizes not given are chosen so that the estimated peak
memory stays within ``--max-memory`` (the network's share measured by a probe forward); the
plan is printed before the first frame. OUT keeps the input's frame times; its audio is the
input's audio stream, copied unchanged where OUT's container takes the codec (re-encoded
otherwise; packets whose times do not increase are moved, and the summary says so).
``--ckpt`` takes a training checkpoint or an ``avvsr-export`` file.

OUT is checked before anything is loaded: not the input (nor a link to it), not a folder, a
suffix naming a container FFmpeg writes video to. It is written under a hidden ``.partial``
name and renamed when complete; SIGINT or SIGTERM deletes it, prints one line and exits with
status 130 or 143.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from avvsr.inference import DEFAULT_CHUNK, DEFAULT_OVERLAP, DEFAULT_TILE_OVERLAP, PRECISIONS
from avvsr.memory_plan import default_memory_budget, format_size, parse_size


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


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
    add(
        "--max-memory", type=_size, default=None,
        help="peak memory the run may use, host and GPU each, e.g. 8GiB, 512MiB (default: "
        f"{format_size(default_memory_budget())} here: 8 GiB or half the machine's memory)",
    )
    add(
        "--chunk", type=int,
        help=f"frames per temporal window (default: the longest, up to {DEFAULT_CHUNK}, that "
        "fits --max-memory)",
    )
    add(
        "--overlap", type=int,
        help=f"frames shared by neighbour windows (default: {DEFAULT_OVERLAP}, a quarter of "
        "shorter windows)",
    )
    add(
        "--tile", type=int,
        help="LR tile size in pixels, 0: whole frames (default: whole frames, or the largest "
        "tile that fits --max-memory)",
    )
    add(
        "--tile-overlap", type=int,
        help=f"LR pixels shared by tiles (default: {DEFAULT_TILE_OVERLAP}, a quarter of smaller "
        "tiles)",
    )
    add("--crf", type=int, default=18, help="video quality (x264/VP9 CRF; lower is better)")
    add(
        "--allow-silent", action="store_true",
        help="a fusion model upscales a video without audio using silence (else it refuses)",
    )
    add("--overwrite", action="store_true", help="replace OUT if it exists")
    add("--quiet", action="store_true", help="no progress bar")
    speed = parser.add_argument_group(
        "speed levers that keep the output (avvsr.models.acceleration; mostly for GPUs)"
    )
    speed.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=True,
        help="NHWC convolution weights (default: on; measured 3-20%% faster on a 2-core CPU "
        "for every backbone, benchmarks/reference_parity.py)",
    )
    speed.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning")
    speed.add_argument("--compile", action="store_true", help="torch.compile frame-wise units")
    speed.add_argument(
        "--inference-group", type=int, default=None, metavar="N",
        help="frames reconstructed at once (default 1: the least memory; a GPU may prefer more)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns 0, exits with status 2 and a message on bad input, and
    with 130 (SIGINT) or 143 (SIGTERM) and one line when interrupted."""
    from avvsr.atomic import exit_status, interrupt_signal, terminate_raises

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with terminate_raises():
            return _run(parser, args)
    except KeyboardInterrupt as interrupt:
        print(
            f"avvsr-upscale: interrupted by {interrupt_signal(interrupt).name}; "
            f"nothing was written to {args.output}",
            file=sys.stderr,
        )
        return exit_status(interrupt)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from avvsr.checkpoint import load_model
    from avvsr.cli.common import exit_on_bad_input
    from avvsr.data.io import probe_video
    from avvsr.inference import InferenceSettings
    from avvsr.models.acceleration import Acceleration
    from avvsr.upscaling import check_output, upscale_video

    try:
        settings = InferenceSettings(
            chunk=args.chunk, overlap=args.overlap, tile=args.tile,
            tile_overlap=args.tile_overlap, device=args.device, precision=args.precision,
            max_memory=args.max_memory,
        )
        acceleration = Acceleration(
            channels_last=args.channels_last, cudnn_benchmark=args.cudnn_benchmark,
            compile=args.compile, inference_group=args.inference_group,
        )
    except ValueError as error:
        parser.error(str(error))
    with exit_on_bad_input("avvsr-upscale"):
        check_output(Path(args.input), Path(args.output), args.overwrite)
        probe_video(args.input)  # report a bad input before the (slower) model load
        model = load_model(args.ckpt)
        acceleration.apply(model.net)
        report = upscale_video(
            args.input, args.output, model, settings, overwrite=args.overwrite,
            allow_silent=args.allow_silent, progress=not args.quiet, crf=args.crf,
            on_plan=lambda plan: print(plan.describe(), file=sys.stderr, flush=True),
        )
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.stage_seconds.items())
    print(
        f"{report.path}: {report.num_frames} frames {report.input_size[0]}x{report.input_size[1]}"
        f" -> {report.output_size[0]}x{report.output_size[1]}, audio {report.audio_summary}, "
        f"{report.seconds:.1f} s ({report.frames_per_s:.2f} frames/s; {stages})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
