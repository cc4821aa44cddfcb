"""What the study's diagnostics share: the study's config and DataModule, the sounding class of
every clip, the FiLM prototype net and its optimiser.

Imported by the diagnostics next to it (``from study_tools import ...``: Python puts a script's
own folder first on its path when it runs it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
import torch
from torch import Tensor, nn

from avvsr.config import compose
from avvsr.data.synthetic import load_manifest
from avvsr.models.backbones.blocks import PixelShuffleHead, conv, leaky_relu

ROOT = Path(__file__).resolve().parents[3]


def sounding_class_by_video(data_root: str | os.PathLike) -> dict[str, int]:
    """``{video path relative to the root: class index of its (first) sounding object}``."""
    manifest = load_manifest(data_root)
    return {
        clip.video: manifest.classes.index(next(o.class_name for o in clip.objects if o.sounding))
        for clips in manifest.splits.values()
        for clip in clips
    }


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


def single_threaded_test_batches(data: str, overrides: Sequence[str] = ()) -> list[dict]:
    """Every test batch of the study's set at ``data``, after limiting torch to one thread
    (a diagnostic beside a training run)."""
    torch.set_num_threads(1)
    return list(Study(data, overrides).datamodule.test_dataloader())


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
        self.class_names = list(load_manifest(data).classes)
        self.num_classes = len(self.class_names)

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
