"""Tiny models trained by Lightning and saved as the trainer saves them, for the loaders' tests.

:func:`tiny_checkpoint_files` builds the LightningModule from the repository's model config
(``basicvsr_tiny`` at 16 channels, with MS-AVF and without fusion) through
:func:`avvsr.config.build_lit_module`, as ``avvsr-train`` does, trains the fusion model with a
``lightning.Trainer`` on 16-frame crops of a moving texture with a tone as its audio, and writes
both with ``Trainer.save_checkpoint``: the files are the format ``avvsr-train`` writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FPS = 25.0
TRAIN_STEPS = 60
TRAIN_FRAMES = 16  # frames per training clip: the model learns to carry state through time
TINY_MODEL = ["model/backbone=basicvsr_tiny", "model.backbone.num_feat=16"]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: the tiny convolutions run fastest so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def moving_texture(num_frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    """``(T, 3, H, W)`` in [0, 1]: a smooth random texture sliding 1 px down and 2 px right per
    frame (HR pixels), so neighbouring LR frames hold sub-pixel shifted samples of one scene."""
    generator = torch.Generator().manual_seed(seed)
    canvas_size = (height + num_frames, width + 2 * num_frames)
    noise = torch.rand(1, 3, canvas_size[0] // 4, canvas_size[1] // 4, generator=generator)
    canvas = F.interpolate(noise, size=canvas_size, mode="bicubic", align_corners=False)
    canvas = canvas.clamp(0, 1)[0]
    return torch.stack(
        [canvas[:, t : t + height, 2 * t : 2 * t + width] for t in range(num_frames)]
    )


def compose_model_config(fusion: str, overrides: list[str] = ()):
    """The ``model`` node of the repository's ``train`` config with the tiny backbone."""
    from avvsr.config import compose

    return compose("train", [*TINY_MODEL, f"model/fusion={fusion}", *overrides]).model


def tone_log_mel(settings, num_frames: int) -> torch.Tensor:
    """``(T, n_mels, n_frames)``: log-mel of each frame's window of a 440 Hz tone at ``FPS``,
    made as ``settings`` (:class:`~avvsr.data.audio_features.AudioFeatureSettings`) say."""
    from avvsr.data.audio_io import AudioTrack, audio_windows

    times = np.arange(round(num_frames / FPS * settings.sample_rate)) / settings.sample_rate
    samples = (0.5 * np.sin(2 * np.pi * 440.0 * times)).astype(np.float32)
    track = AudioTrack(samples=samples, sample_rate=settings.sample_rate, start_s=0.0)
    windows = audio_windows(track, np.arange(num_frames) / FPS, settings.window_s)
    return settings.log_mel()(torch.from_numpy(windows))


def texture_batches(lit_module, steps: int) -> list[dict[str, torch.Tensor]]:
    """``steps`` training items (``lq``, ``gt``, ``audio``) of 16-frame crops of one clip."""
    from avvsr.data.audio_features import AudioFeatureSettings
    from avvsr.data.degradations import degrade

    clip = moving_texture(64, 32, 32, seed=0)
    audio = tone_log_mel(lit_module.audio_features or AudioFeatureSettings(), 64)
    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(steps):
        first = int(torch.randint(0, 64 - TRAIN_FRAMES, (1,), generator=generator))
        gt = clip[first : first + TRAIN_FRAMES]
        items.append({"gt": gt, "lq": degrade(gt, lit_module.net.scale).clamp(0, 1),
                      "audio": audio[first : first + TRAIN_FRAMES]})
    return items


def fit_and_save(lit_module, path: Path, steps: int) -> Path:
    """Train ``lit_module`` for ``steps`` steps (0: none) and write its checkpoint as Lightning
    does for ``avvsr-train``."""
    import lightning as L
    from torch.utils.data import DataLoader

    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    batches = texture_batches(lit_module, max(steps, 1))
    trainer.fit(lit_module, train_dataloaders=DataLoader(batches, batch_size=1))
    trainer.save_checkpoint(path)
    return path


def tiny_checkpoint_files(base: Path) -> dict[str, Path]:
    """``{"msavf": trained fusion model, "none": untrained model without fusion}``: Lightning
    checkpoints of the repository's model config, built once per session under ``base``."""
    from avvsr.config import build_lit_module

    folder = base / "tiny_checkpoints"
    paths = {"msavf": folder / "msavf.ckpt", "none": folder / "none.ckpt"}
    if all(path.exists() for path in paths.values()):
        return paths
    folder.mkdir(exist_ok=True)
    with single_thread():
        torch.manual_seed(0)
        fusion = build_lit_module(
            compose_model_config("msavf", ["model.lr=2e-3", "model.warmup_steps=0"])
        )
        fit_and_save(fusion, paths["msavf"], TRAIN_STEPS)
        torch.manual_seed(0)
        fit_and_save(build_lit_module(compose_model_config("none")), paths["none"], 0)
    return paths


TINY_BACKBONES = ["basicvsr_tiny", "basicvsrpp_tiny", "edvr_tiny", "iconvsr_tiny"]


def build_backbone(name: str, scale: int = 4):
    """The backbone of ``model/backbone=<name>`` at ``model.scale=<scale>``, composed as the
    command line composes it."""
    from hydra.utils import instantiate

    from avvsr.config import compose

    return instantiate(compose("train", [f"model/backbone={name}", f"model.scale={scale}"])
                       .model.backbone)


def build_trained_backbone(name: str, scale: int = 4):
    """A backbone whose zero-initialised layers (output conv, offset convs, SPyNet's flow
    outputs) are nudged away from zero, as after training, so every path carries signal."""
    model = build_backbone(name, scale)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model
