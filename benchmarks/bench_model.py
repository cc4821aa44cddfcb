"""``make bench-model``: size and CPU cost of every backbone, with and without MS-AVF.

For each backbone config (paper size and tiny) x fusion (none, MS-AVF at 3 scales) it prints
parameters, GFLOPs per output frame (``torch.utils.flop_counter``; torchvision's deformable
convolution is not counted by it, so BasicVSR++/EDVR figures are lower bounds), CPU forward time
per output frame, and the forward pass's peak memory (growth of the process's resident-set
high-water mark, measured in a fresh subprocess per configuration). Then the MS-AVF/none ratios
of parameters and time, against the target of at most 1.10 at paper size. With ``--train-step``
it also times a training step (forward, backward, Adam) of the tiny configs at the CPU
study's training shape (4 clips x 5 frames, 16x16 LR crops).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
BACKBONES = ["basicvsr", "basicvsrpp", "edvr", "basicvsr_tiny", "basicvsrpp_tiny", "edvr_tiny"]
FUSIONS = ["none", "msavf"]


def build(backbone: str, fusion: str):
    """An AVVSRNet from the repo's configs (paper-size audio encoder for paper backbones)."""
    import hydra
    from omegaconf import OmegaConf

    from avvsr.models.avvsr_net import AVVSRNet

    encoder = "tiny" if backbone.endswith("_tiny") else "paper"
    root = OmegaConf.create({"model": {"scale": 4}})
    root.model.backbone = OmegaConf.load(CONF / "backbone" / f"{backbone}.yaml")
    root.model.audio_encoder = OmegaConf.load(CONF / "audio_encoder" / f"{encoder}.yaml")
    root.model.fusion = (
        OmegaConf.load(CONF / "fusion" / f"{fusion}.yaml") if fusion != "none" else None
    )
    return AVVSRNet(
        hydra.utils.instantiate(root.model.backbone),
        hydra.utils.instantiate(root.model.audio_encoder),
        hydra.utils.instantiate(root.model.fusion) if fusion != "none" else None,
    )


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
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        net(lq, audio)  # warm-up; also the peak-memory measurement
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib) / 1024
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=7)
    parser.add_argument("--size", type=int, default=64, help="LR height = width (pixels)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-step", action="store_true", help="also time training steps")
    parser.add_argument("--only", nargs="*", default=BACKBONES, help="backbone configs to measure")
    parser.add_argument("--child", nargs=2, metavar=("BACKBONE", "FUSION"), help=argparse.SUPPRESS)
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
