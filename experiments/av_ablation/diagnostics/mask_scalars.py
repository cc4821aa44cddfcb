"""How far a trained MS-AVF's masks can open and close: each scale's temperature (the
multiplier of the cosine in ``sigmoid(temperature * cosine + bias)``) and bias, and the range
of mask values they allow over cosines in [-1, 1]; for masks that see the audio-visual
synchrony (``model/fusion=msavf_sync``) also its weight in the logit (else ``-``).

Usage::

    python experiments/av_ablation/diagnostics/mask_scalars.py <checkpoint> [<checkpoint> ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from avvsr.checkpoint import load_lit_module
from avvsr.models.fusion import AudioGuidedFiLM


def mask_scalars(checkpoint: str) -> list[dict[str, float]]:
    """Per scale, finest first: ``temperature``, ``bias``, the mask's ``lowest`` and
    ``highest`` possible values (at cosine -1 and 1, no synchrony) and ``synchrony_weight``
    (None when the masks do not see it)."""
    net = load_lit_module(checkpoint).net
    rows = []
    for attention in (m for m in net.modules() if isinstance(m, AudioGuidedFiLM)):
        temperature, bias = attention.temperature.item(), attention.bias.item()
        lowest, highest = torch.sigmoid(torch.tensor([bias - temperature, bias + temperature]))
        synchrony = attention.synchrony_weight
        rows.append({"temperature": temperature, "bias": bias, "lowest": lowest.item(),
                     "highest": highest.item(),
                     "synchrony_weight": None if synchrony is None else synchrony.item()})
    if not rows:
        raise SystemExit(f"{checkpoint}: the model's fusion has no attention masks")
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="avvsr-train checkpoints with MS-AVF")
    args = parser.parse_args(argv)
    results = {path: mask_scalars(path) for path in args.checkpoints}
    print("checkpoint | scale | temperature | bias | mask range | synchrony weight")
    for path, rows in results.items():
        for scale, row in enumerate(rows):
            synchrony = row["synchrony_weight"]
            print(f"{path} | {scale} | {row['temperature']:.3f} | {row['bias']:+.3f} | "
                  f"{row['lowest']:.2f}-{row['highest']:.2f} | "
                  + ("-" if synchrony is None else f"{synchrony:+.3f}"))
    return results


if __name__ == "__main__":
    main()
