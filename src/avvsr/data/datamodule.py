"""The LightningDataModule: sources -> probed, checked (and cached) data sets -> seeded loaders.

Batches follow ``docs/ARCHITECTURE.md`` ("Batches"); the test split also carries
``audio_shuffled`` (another clip's audio, for the shuffled-audio control). Training batches
depend only on ``seed`` and the epoch, not on ``num_workers``: the sampler draws every
sample's randomness in the main process (:class:`~avvsr.data.datasets.ShuffledSeededSampler`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from avvsr.data.audio_features import AudioFeatureSettings
from avvsr.data.cache import DecodeCache
from avvsr.data.datasets import (
    BadFileLog,
    ClipDataset,
    EvalClipDataset,
    ShuffledSeededSampler,
    TrainClipDataset,
    collate_clips,
)
from avvsr.data.sources import ClipSource


class AVVSRDataModule(L.LightningDataModule):
    """Train/val/test clips of audio-visual video for super-resolution at ``scale``.

    Sources (any may be ``None``) list the clips; when a split is set up every file is probed
    once into ``cache_dir`` (frame times, size, audio: no frames decoded), by
    ``cache_workers`` processes with a progress bar, and bad files are reported once and
    skipped. ``decode`` ``"cached"``: the frames each record's clips are drawn from (its
    event window, at most ``max_frames`` from its start; None: all) are decoded into the
    cache too, within ``cache_budget_gb`` (None: the free space); ``"stream"``: each
    sample's frames are decoded from the video (seeking as ``stream_reader`` says:
    ``"pyav"`` or ``"decord"``, :func:`avvsr.data.io.read_clip`). ``progress``: show the
    progress bars. Training: random ``clip_len``-frame clips, ``crop_size`` HR crops, random
    flips and transposes (``augment``). Validation and test: whole clips of at most
    ``eval_max_frames`` frames (``None``: all), batched ``eval_batch_size`` at a time.
    LR frames: ``degradation`` ``"BI"`` or ``"BD"``. Audio: each frame's feature as ``audio``
    says (the config's ``audio`` node, which the model reads too); ``audio_policy``
    ``"silence"`` or ``"require"`` for files without audio. ``item_transform``: a callable
    that maps each item (the dict of ``docs/ARCHITECTURE.md`` "Batches", one clip) to the item
    to batch, e.g. a diagnostic's replacement of the audio (None: items as they are).
    """

    def __init__(
        self,
        train: ClipSource | None = None,
        val: ClipSource | None = None,
        test: ClipSource | None = None,
        *,
        scale: int,
        cache_dir: str | os.PathLike[str],
        degradation: str = "BI",
        clip_len: int = 5,
        crop_size: int = 64,
        augment: bool = True,
        eval_max_frames: int | None = None,
        audio: AudioFeatureSettings | None = None,
        audio_policy: str = "silence",
        batch_size: int = 4,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        seed: int = 0,
        decode: str = "cached",
        max_frames: int | None = None,
        cache_workers: int = 0,
        cache_budget_gb: float | None = None,
        stream_reader: str = "pyav",
        progress: bool = True,
        item_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.sources = {"train": train, "val": val, "test": test}
        self.scale = scale
        self.cache_dir = cache_dir
        self.degradation = degradation
        self.clip_len = clip_len
        self.crop_size = crop_size
        self.augment = augment
        self.eval_max_frames = eval_max_frames
        self.audio = audio or AudioFeatureSettings()
        self.audio_policy = audio_policy
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.decode = decode
        self.max_frames = max_frames
        self.cache_workers = cache_workers
        self.cache_budget_gb = cache_budget_gb
        self.stream_reader = stream_reader
        self.progress = progress
        self.item_transform = item_transform
        self.bad_files = BadFileLog()
        self.datasets: dict[str, ClipDataset] = {}

    def prepare_data(self) -> None:
        """With several processes (DDP), build the cache of every split once, here: Lightning
        calls this on one process per node before any calls :meth:`setup`, which then finds
        every entry complete instead of each rank decoding every file."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            for split in ("train", "val", "test"):
                if self.sources[split] is not None:
                    self._build(split)  # the cache is what is kept; the data set is not

    def setup(self, stage: str | None = None) -> None:
        """Build the data sets the stage needs (``fit``, ``validate``, ``test``; ``None``:
        all); each file is probed (and, on the cached path, its frames decoded) into the
        cache if it is not there yet."""
        splits = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": (),
            None: ("train", "val", "test"),
        }[stage]
        for split in splits:
            if self.sources[split] is not None and split not in self.datasets:
                self.datasets[split] = self._build(split)

    def _build(self, split: str) -> ClipDataset:
        """The data set of ``split`` (its source must exist), its cache entries built first."""
        source = self.sources[split]
        cache = DecodeCache(self.cache_dir, sample_rate=self.audio.sample_rate)
        common = {
            "scale": self.scale,
            "degradation": self.degradation,
            "audio": self.audio,
            "audio_policy": self.audio_policy,
            "bad_files": self.bad_files,
            "decode": self.decode,
            "workers": self.cache_workers,
            "progress": self.progress,
            "cache_budget_gb": self.cache_budget_gb,
            "reader": self.stream_reader,
            "item_transform": self.item_transform,
        }
        if split == "train":
            return TrainClipDataset(
                source, cache, clip_len=self.clip_len, crop_size=self.crop_size,
                augment=self.augment, max_frames=self.max_frames, **common,
            )
        limits = [n for n in (self.max_frames, self.eval_max_frames) if n is not None]
        return EvalClipDataset(
            source, cache, max_frames=min(limits, default=None),
            shuffled_audio=split == "test", seed=self.seed, **common,
        )

    def _dataset(self, split: str) -> ClipDataset:
        if split not in self.datasets:
            raise RuntimeError(f"no {split} data set: call setup() first")
        return self.datasets[split]

    def _loader(self, dataset: ClipDataset, **options: Any) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=collate_clips,
            generator=torch.Generator().manual_seed(self.seed),
            **options,
        )

    def _eval_loader(self, split: str) -> DataLoader | list:
        """Whole clips in order; no loader (an empty list, for Lightning) without a source."""
        if self.sources[split] is None:
            return []
        return self._loader(self._dataset(split), batch_size=self.eval_batch_size)

    def train_dataloader(self) -> DataLoader:
        if self.sources["train"] is None:
            raise RuntimeError("the data module was given no train source")
        dataset = self._dataset("train")
        sampler = ShuffledSeededSampler(len(dataset), self.seed)
        return self._loader(dataset, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")
