"""``make bench-model``: size and CPU cost of every backbone, with and without MS-AVF.

For each backbone config (paper size and tiny) x fusion (none, MS-AVF at 3 scales) it prints
parameters, GFLOPs per output frame (``torch.utils.flop_counter``; torchvision's deformable
convolution is not counted by it, so BasicVSR++/EDVR figures are lower bounds), CPU forward time
per output frame, and the forward pass's peak memory (growth of the process's resident-set
high-water mark, measured in a fresh subprocess per configuration). Then the MS-AVF/none ratios
of parameters and time, against the target of at most 1.10 at paper size. With ``--train-step``
it also times a training step (forward, backward, Adam) of the tiny configs at the CPU
study's training shape (4 clips x 5 frames, 16x16 LR crops).

Then the inference table: each paper-size backbone alone (no fusion) with autograd off, at
each of ``--inference-frames`` clip lengths (7 and 14), in a fresh subprocess per
configuration: ms per output frame and the forward's extra memory (peak resident set during
the first forward minus the resident set before it). With ``--repeats`` above 0 it also times,
alternately in the same process, the whole-clip path (autograd on, nothing requiring
gradients: the training path without a graph), for the effect of grouping alone. With
``--baseline-src DIR`` (a ``src`` folder of another checkout of avvsr that has
``avvsr.config``, e.g. the commit before a change) every configuration also runs on that code,
alternating with this one, and the table prints this/baseline ratios. Timings on a shared
machine are noisy; the memory figures and same-run ratios are steadier.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

BACKBONES = ["basicvsr", "basicvsrpp", "edvr", "basicvsr_tiny", "basicvsrpp_tiny", "edvr_tiny"]
FUSIONS = ["none", "msavf"]
PAPER_BACKBONES = ["basicvsr", "iconvsr", "basicvsrpp", "edvr", "edvr_l"]


def build(backbone: str, fusion: str):
    """The AVVSRNet of the repository's model config with ``backbone`` and ``fusion``
    (paper-size audio encoder for paper backbones), composed as the command line does."""
    from avvsr.config import build_lit_module, compose

    encoder = "tiny" if backbone.endswith("_tiny") else "paper"
    config = compose("train", [
        f"model/backbone={backbone}", f"model/audio_encoder={encoder}", f"model/fusion={fusion}",
    ])
    return build_lit_module(config.model).net


def resident_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def peak_growth_mib(run) -> float:
    """How far the resident set rises above its level before ``run()`` while it runs (MiB).

    On Linux the peak is reset first (``/proc/self/clear_refs``), so earlier peaks (building
    the model) cannot hide this one; elsewhere it is the growth of getrusage's all-time peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before_kib = resident_kib("VmRSS")
        run()
        return (resident_kib("VmHWM") - before_kib) / 1024
    except OSError:
        before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib) / 1024


def train_step_seconds(net, repeats: int) -> float:
    """Seconds per training step at the CPU study's shape: 4 clips x 5 frames, 16x16 LR."""
    import torch

    lq, gt = torch.rand(4, 5, 3, 16, 16), torch.rand(4, 5, 3, 64, 64)
    audio = torch.randn(4, 5, 64, 33) - 5
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    net.train()
    for step in range(repeats + 1):
        if step == 1:  # the first step warms up
            start = time.perf_counter()
        loss = (net(lq, audio).sr - gt).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / repeats


def measure(
    backbone: str, fusion: str, frames: int, size: int, repeats: int, train_step: bool
) -> dict:
    """Run in a fresh process: parameters, GFLOPs/frame, ms/frame, peak forward memory."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = build(backbone, fusion).eval()
    lq = torch.rand(1, frames, 3, size, size)
    audio = torch.randn(1, frames, 64, 33) - 5

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    params = count(net)
    with torch.inference_mode():
        peak_mib = peak_growth_mib(lambda: net(lq, audio))  # also the warm-up
        counter = FlopCounterMode(display=False)
        with counter:
            net(lq, audio)
        start = time.perf_counter()
        for _ in range(repeats):
            net(lq, audio)
        seconds = (time.perf_counter() - start) / repeats
    step_s = train_step_seconds(net, repeats) if train_step else float("nan")
    return {
        "train_step_s": step_s,
        "params": params,
        "fusion_params": count(net.fusion),
        "audio_encoder_params": count(net.audio_encoder),
        "gflops_per_frame": counter.get_total_flops() / frames / 1e9,
        "ms_per_frame": 1000 * seconds / frames,
        "peak_mib": peak_mib,
    }


def measure_inference(backbone: str, frames: int, size: int, repeats: int) -> dict:
    """Run in a fresh process: the plain backbone with autograd off on a clip of ``frames``
    frames: ms per output frame (mean of ``repeats`` forwards after the first; with 0, of the
    first, warm-up included) and the extra memory (MiB) of the first forward.

    With ``repeats``, also ``whole_ms_per_frame``: the same forward with autograd on but no
    parameter requiring gradients, so no graph is recorded and the backbones take their
    training path (all frames at once), timed alternately with the grouped one.
    """
    import torch

    torch.manual_seed(0)
    net = build(backbone, "none").eval().requires_grad_(False)
    lq = torch.rand(1, frames, 3, size, size)

    def timed(mode) -> float:
        with mode():
            start = time.perf_counter()
            net(lq)
            return time.perf_counter() - start

    start = time.perf_counter()
    with torch.no_grad():
        extra_mib = peak_growth_mib(lambda: net(lq))  # also the warm-up
    seconds, whole_seconds = time.perf_counter() - start, float("nan")
    if repeats:
        timed(torch.enable_grad)  # its warm-up
        pairs = [(timed(torch.no_grad), timed(torch.enable_grad)) for _ in range(repeats)]
        seconds = sum(grouped for grouped, _ in pairs) / repeats
        whole_seconds = sum(whole for _, whole in pairs) / repeats
    return {
        "ms_per_frame": 1000 * seconds / frames,
        "whole_ms_per_frame": 1000 * whole_seconds / frames,
        "extra_mib": extra_mib,
    }


def run_child(arguments: list[str], src: str | None = None) -> dict:
    """This script with ``arguments`` in a fresh process (importing avvsr from ``src`` when
    given) -> the JSON dict it prints last."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, __file__, *arguments]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def inference_table(args: argparse.Namespace) -> None:
    """Print ms/frame and extra forward memory of the paper-size backbones with autograd off,
    per clip length, and the ratios to ``--baseline-src`` when given."""
    print()
    print(
        f"Inference, autograd off, backbone alone: x4, LR {args.size}x{args.size}, batch 1, "
        f"{args.threads} CPU threads, "
        + (
            f"{args.repeats} timed forwards after the measured first"
            if args.repeats
            else "time of the measured first forward (warm-up included)"
        )
    )
    sides = ["this"] + (["baseline"] if args.baseline_src else [])
    header = f"{'backbone':<12}{'frames':>7}" + "".join(
        f"{side + ' ms/frame':>20}{side + ' extra MiB':>20}" for side in sides
    )
    if args.repeats:  # see measure_inference
        header += f"{'whole-clip ms/frame':>21}"
    if args.baseline_src:
        header += f"{'time ratio':>12}{'memory ratio':>14}"
        print(f"baseline: {args.baseline_src}; ratios are this / baseline")
    print(header)
    print("-" * len(header))
    for backbone in args.inference_backbones:
        for frames in args.inference_frames:
            arguments = ["--inference-child", backbone, str(frames)]
            arguments += ["--size", str(args.size), "--repeats", str(args.repeats)]
            arguments += ["--threads", str(args.threads)]
            results = [run_child(arguments)]
            if args.baseline_src:
                results.append(run_child(arguments, args.baseline_src))
            line = f"{backbone:<12}{frames:>7}" + "".join(
                f"{r['ms_per_frame']:>20.1f}{r['extra_mib']:>20.0f}" for r in results
            )
            if args.repeats:
                line += f"{results[0]['whole_ms_per_frame']:>21.1f}"
            if args.baseline_src:
                this, baseline = results
                line += f"{this['ms_per_frame'] / baseline['ms_per_frame']:>12.2f}"
                line += f"{this['extra_mib'] / baseline['extra_mib']:>14.2f}"
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=7)
    parser.add_argument("--size", type=int, default=64, help="LR height = width (pixels)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-step", action="store_true", help="also time training steps")
    parser.add_argument("--only", nargs="*", default=BACKBONES, help="backbone configs to measure")
    parser.add_argument(
        "--inference-frames", nargs="*", type=int, default=[7, 14], help="clip lengths"
    )
    parser.add_argument(
        "--inference-backbones", nargs="*", default=PAPER_BACKBONES, help="for the inference table"
    )
    parser.add_argument(
        "--inference-only", action="store_true", help="only the inference table"
    )
    parser.add_argument("--baseline-src", help="src folder of the avvsr code to compare with")
    parser.add_argument("--child", nargs=2, metavar=("BACKBONE", "FUSION"), help=argparse.SUPPRESS)
    parser.add_argument("--inference-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.inference_child:
        import torch

        torch.set_num_threads(args.threads)
        backbone, frames = args.inference_child
        print(json.dumps(measure_inference(backbone, int(frames), args.size, args.repeats)))
        return
    if args.inference_only:
        inference_table(args)
        return

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        train_step = args.train_step and args.child[0].endswith("_tiny")
        print(json.dumps(measure(*args.child, args.frames, args.size, args.repeats, train_step)))
        return

    print(
        f"x4, LR {args.size}x{args.size}, {args.frames} frames, batch 1, "
        f"{args.threads} CPU threads, forward only (inference mode); train s/step: tiny "
        "configs with --train-step (4 clips x 5 frames, 16x16 LR, forward+backward+Adam)"
    )
    header = (
        f"{'backbone':<16}{'fusion':<8}{'params':>12}{'GFLOPs/frame':>14}"
        f"{'ms/frame':>10}{'peak MiB':>10}{'train s/step':>14}"
    )
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, str], dict] = {}
    for backbone in args.only:
        for fusion in FUSIONS:
            command = [
                sys.executable,
                __file__,
                "--child",
                backbone,
                fusion,
                "--frames",
                str(args.frames),
                "--size",
                str(args.size),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
                *(["--train-step"] if args.train_step else []),
            ]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            r = results[backbone, fusion] = json.loads(out.strip().splitlines()[-1])
            print(
                f"{backbone:<16}{fusion:<8}{r['params']:>12,}{r['gflops_per_frame']:>14.2f}"
                f"{r['ms_per_frame']:>10.1f}{r['peak_mib']:>10.0f}{r['train_step_s']:>14.2f}",
                flush=True,
            )
    print()
    print("With MS-AVF / without (target at paper size: MS-AVF adds <= 10% parameters and time).")
    print("'MS-AVF' counts the fusion module; 'audio path' adds the audio encoder; time is the")
    print("whole forward with fusion (audio encoder included) over the plain backbone's.")
    for backbone in args.only:
        none, fused = results[backbone, "none"], results[backbone, "msavf"]
        fusion_ratio = 1 + fused["fusion_params"] / none["params"]
        path_ratio = 1 + (fused["fusion_params"] + fused["audio_encoder_params"]) / none["params"]
        time_ratio = fused["ms_per_frame"] / none["ms_per_frame"]
        verdict = ""
        if not backbone.endswith("_tiny"):
            verdict = (
                "  meets target" if max(fusion_ratio, time_ratio) <= 1.10 else "  MISSES target"
            )
        print(
            f"{backbone:<16} params: MS-AVF x{fusion_ratio:.3f}, audio path x{path_ratio:.3f};"
            f"  time x{time_ratio:.3f}{verdict}"
        )
    inference_table(args)


if __name__ == "__main__":
    main()
