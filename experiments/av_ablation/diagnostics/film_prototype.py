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
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvsr.config import compose
from avvsr.data.synthetic import load_manifest
from avvsr.lit_module import charbonnier_loss
from avvsr.metrics import RegionPSNR
from avvsr.models.backbones.blocks import PixelShuffleHead, conv, leaky_relu

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(Path(__file__).parent))
from class_oracle_train import sounding_class_by_video  # noqa: E402


class FiLMPrototype(nn.Module):
    """``(lq (N, 3, h, w), code (N, K)) -> (N, 3, 4h, 4w)``; FiLM per block when ``film``.

    ``film_blocks``: modulate only the last this many blocks (None: every block); 1 is the
    closest to MS-AVF, which modulates once, at the fusion point before the upsampling head.
    """

    def __init__(self, num_classes: int, film: bool, channels: int = 32, blocks: int = 4,
                 film_blocks: int | None = None):
        super().__init__()
        self.film = film
        self.first_film_block = blocks - (blocks if film_blocks is None else film_blocks)
        self.first = conv(3, channels)
        self.blocks = nn.ModuleList(
            nn.Sequential(conv(channels, channels), nn.LeakyReLU(0.1), conv(channels, channels))
            for _ in range(blocks)
        )
        self.modulations = nn.ModuleList(
            nn.Linear(num_classes, 2 * channels) for _ in range(blocks)
        )
        for modulation in self.modulations:  # start as the plain net
            nn.init.zeros_(modulation.weight)
            nn.init.zeros_(modulation.bias)
        self.head = PixelShuffleHead(channels, 4, channels)

    def forward(self, lq: Tensor, code: Tensor) -> Tensor:
        x = leaky_relu(self.first(lq))
        layers = enumerate(zip(self.blocks, self.modulations, strict=True))
        for index, (block, modulation) in layers:
            residual = block(x)
            if self.film and index >= self.first_film_block:
                gamma, beta = modulation(code)[:, :, None, None].chunk(2, dim=1)
                residual = residual * (1 + gamma) + beta
            x = x + residual
        return self.head(x, lq)


class Study:
    """The study's config composed for the set at ``data`` (plus Hydra ``overrides``), its
    DataModule set up for fitting and testing, and the set's sounding class of every clip."""

    def __init__(self, data: str, overrides: Sequence[str] = ()) -> None:
        self.config = compose("train", [
            "experiment=av_ablation", f"data.train.root={data}", f"paths.root_dir={ROOT}",
            "paths.output_dir=unused", *overrides])
        self.datamodule = hydra.utils.instantiate(self.config.data)
        self.datamodule.setup("fit")
        self.datamodule.setup("test")
        self.class_of = sounding_class_by_video(data)
        self.num_classes = len(load_manifest(data).classes)

    def fit(self, net: nn.Module, steps: int, loss_of: Callable[[dict], Tensor]) -> None:
        """``steps`` steps of Adam with a one-cycle rate on the training batches' ``loss_of``,
        then ``net.eval()``."""
        optimizer, schedule = one_cycle_adam(net, steps)
        step = 0
        while step < steps:
            for batch in self.datamodule.train_dataloader():
                loss = loss_of(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                if step >= steps:
                    break
        net.eval()

    def clip_classes(self, batch: dict) -> Tensor:
        """The sounding class of each clip of ``batch``: (B,) int64."""
        return torch.tensor([self.class_of[key.rsplit(":", 1)[0]] for key in batch["key"]])


def one_cycle_adam(net: nn.Module, steps: int, lr: float = 5e-4):
    """Adam (the study's betas) with a one-cycle rate over ``steps`` -> (optimizer, schedule)."""
    optimizer = torch.optim.Adam(net.parameters(), lr, betas=(0.9, 0.99))
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, steps, pct_start=0.02)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--film", action="store_true", help="modulate by the class code")
    parser.add_argument("--film-blocks", type=int, default=None,
                        help="modulate only the last N of the 4 blocks (default: all)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--data", default=str(ROOT / "data" / "synth_av"))
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides of the study's config, e.g. data.batch_size=16")
    args = parser.parse_args(argv)
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
