"""Does a trained MS-AVF need its attention masks? PSNR-Y inside the sound source and inside the
distractors on the test split, with true audio, with the masks as learned, every mask open
(1 everywhere) and every mask closed (0 everywhere: the audio's FiLM is off, the fusion's
visual path stays).

A mask is forced by setting its logit bias to +-1e4 (``sigmoid(temperature * cosine + bias)``
with ``|cosine| <= 1``), so nothing else of the model changes. If the learned masks score as
the open ones, the model does not rely on them to keep the audio off the distractors.

Usage::

    python experiments/av_ablation/diagnostics/mask_override.py <checkpoint> \\
        --data data/synth_lattice
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from study_tools import Study

from avvsr.checkpoint import load_lit_module
from avvsr.lit_module import REGION_METRICS
from avvsr.metrics import RegionPSNR
from avvsr.models.fusion import AudioGuidedFiLM

FORCED_LOGIT = 1e4
MASK_SETTINGS = {"learned": None, "open": FORCED_LOGIT, "closed": -FORCED_LOGIT}


def region_psnr(net: torch.nn.Module, batches: Sequence[dict]) -> dict[str, float]:
    """PSNR-Y (dB) inside the source and inside the distractors of ``net``'s outputs."""
    regions = {name: REGION_METRICS[metric][0] for name, metric in
               (("source", "psnr_y_inside"), ("distractors", "psnr_y_distractors"))}
    metrics = {name: RegionPSNR(region="inside", test_y_channel=True) for name in regions}
    with torch.no_grad():
        for batch in batches:
            sr = net(batch["lq"], batch["audio"]).sr.clamp(0, 1)
            for name, key in regions.items():
                metrics[name].update(sr, batch["gt"], batch[key])
    return {name: metric.compute().item() for name, metric in metrics.items()}


def with_masks(net: torch.nn.Module, logit: float | None, batches: Sequence[dict]) -> dict:
    """:func:`region_psnr` with every attention mask forced by ``logit`` (None: as learned);
    the biases are put back afterwards."""
    attentions = [m for m in net.modules() if isinstance(m, AudioGuidedFiLM)]
    if not attentions:
        raise SystemExit("this diagnostic takes a model whose fusion has attention masks")
    learned = [attention.logit_bias.detach().clone() for attention in attentions]
    try:
        if logit is not None:
            with torch.no_grad():
                for attention in attentions:
                    attention.logit_bias.fill_(logit)
        return region_psnr(net, batches)
    finally:
        with torch.no_grad():
            for attention, bias in zip(attentions, learned, strict=True):
                attention.logit_bias.copy_(bias)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="an avvsr-train checkpoint with MS-AVF")
    parser.add_argument("--data", required=True, help="the synthetic set it was trained on")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the study's config")
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(1)
    net = load_lit_module(args.checkpoint).net.eval()
    batches = list(Study(args.data, args.overrides).datamodule.test_dataloader())
    results = {name: with_masks(net, logit, batches) for name, logit in MASK_SETTINGS.items()}
    print("masks | PSNR-Y in source | PSNR-Y in distractors")
    for name, scores in results.items():
        print(f"{name} | {scores['source']:.2f} | {scores['distractors']:.2f}")
    return results


if __name__ == "__main__":
    main()
