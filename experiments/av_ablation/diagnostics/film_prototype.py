"""The design notes' prototype on our data: a single-frame SR net with FiLM in every block.

Diagnostic for the study (the benchmark's design notes report +2.5 dB inside the object for
such a net on a simpler synthetic set). A 32-channel, 4-block residual net whose blocks are each
modulated by a FiLM from the sounding object's class as a one-hot code (``--film``), or not
modulated, is trained on frames of the study's DataModule (64x64 HR crops, Charbonnier loss,
Adam with one-cycle rate) and tested on the test clips with the true and a shuffled class code
(each clip gets its batch neighbour's). It prints the Y-PSNR inside the sound source as the
study's table computes it (``avvsr.metrics.RegionPSNR``). Usage::

    python experiments/av_ablation/diagnostics/film_prototype.py --film --steps 1500
    python experiments/av_ablation/diagnostics/film_prototype.py --film data.batch_size=16
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from study_tools import ROOT, FiLMPrototype, Study
from torch import Tensor

from avvsr.lit_module import charbonnier_loss
from avvsr.metrics import RegionPSNR


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--film", action="store_true", help="modulate by the class code")
    parser.add_argument("--film-blocks", type=int, default=None,
                        help="modulate only the last N of the 4 blocks (default: all)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--data", default=str(ROOT / "data" / "synth_av"))
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides of the study's config, e.g. data.batch_size=16")
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    study = Study(args.data, args.overrides)
    datamodule, num_classes = study.datamodule, study.num_classes

    def codes(batch: dict, shift: int = 0) -> Tensor:
        one_hot = F.one_hot(study.clip_classes(batch).roll(shift), num_classes).float()
        return one_hot.repeat_interleave(batch["lq"].shape[1], dim=0)  # one per frame

    net = FiLMPrototype(num_classes, args.film, film_blocks=args.film_blocks)
    study.fit(net, args.steps, lambda batch: charbonnier_loss(
        net(batch["lq"].flatten(0, 1), codes(batch)), batch["gt"].flatten(0, 1)))
    for control, shift in (("true", 0), ("shuffled", 1)):
        psnr_inside = RegionPSNR(region="inside", test_y_channel=True)
        for batch in datamodule.test_dataloader():
            with torch.no_grad():
                out = net(batch["lq"].flatten(0, 1), codes(batch, shift))
            psnr_inside.update(out.unflatten(0, batch["lq"].shape[:2]), batch["gt"], batch["mask"])
        psnr = psnr_inside.compute()
        print(f"film={args.film} film_blocks={args.film_blocks} steps={args.steps} "
              f"{control}: PSNR-Y in source {psnr:.2f} dB")


if __name__ == "__main__":
    main()
