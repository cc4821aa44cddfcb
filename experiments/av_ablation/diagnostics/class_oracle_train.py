"""Train through ``avvsr-train`` with every clip's log-mel replaced by a clean class code.

Diagnostic for the study: can the fusion + backbone use the sound class at all when the audio
path is made trivial? Class ``k`` of the sounding object becomes a log-mel window that is
silent except for mel bands ``16k .. 16k + 15`` at +10 (natural log) above silence. The test
controls still apply (shuffled = another clip's class code, silent = silence), so a model that
uses the class shows it as a true-vs-shuffled gap. Usage (any ``avvsr-train`` overrides)::

    AVVSR_ORACLE_DATA=data/synth_av \
    python experiments/av_ablation/diagnostics/class_oracle_train.py experiment=av_ablation \
        model/fusion=msavf trainer.max_steps=1500 threads=1 \
        hydra.run.dir=logs/investigate/oracle_1500

``AVVSR_ORACLE_DATA`` is the synthetic set's root (its manifest gives the classes);
pass the same root as ``data.train.root`` when it is not the default.
"""

from __future__ import annotations

import os

import torch

from avvsr import train
from avvsr.data import datasets
from avvsr.data.audio_features import SILENCE_LOG_MEL
from avvsr.data.synthetic import load_manifest

BANDS_PER_CLASS = 16
CODE_LEVEL = 10.0  # natural-log units above silence


def sounding_class_by_video(data_root: str | os.PathLike) -> dict[str, int]:
    """``{video path relative to the root: class index of its (first) sounding object}``."""
    manifest = load_manifest(data_root)
    return {
        clip.video: manifest.classes.index(next(o.class_name for o in clip.objects if o.sounding))
        for clips in manifest.splits.values()
        for clip in clips
    }


def install_class_code(data_root: str | os.PathLike) -> None:
    """Patch ``ClipDataset._load`` so each item's ``audio`` is its class code."""
    class_of = sounding_class_by_video(data_root)
    load = datasets.ClipDataset._load

    def load_with_class_code(self, clip, *args, **kwargs):
        item = load(self, clip, *args, **kwargs)
        code = torch.full_like(item["audio"], SILENCE_LOG_MEL)
        first = class_of[clip.record.key] * BANDS_PER_CLASS
        code[:, first : first + BANDS_PER_CLASS, :] += CODE_LEVEL
        item["audio"] = code
        return item

    datasets.ClipDataset._load = load_with_class_code


if __name__ == "__main__":
    install_class_code(os.environ.get("AVVSR_ORACLE_DATA", "data/synth_av"))
    train.main()
