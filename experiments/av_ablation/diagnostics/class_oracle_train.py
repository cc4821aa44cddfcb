"""Train through ``avvsr-train`` with every clip's log-mel replaced by a clean class code.

Diagnostic for the study: can the fusion + backbone use the sound class at all when the audio
path is made trivial? Class ``k`` of the sounding object becomes a log-mel window that is
silent except for mel bands ``16k .. 16k + 15`` at +10 (natural log) above silence. The test
controls still apply (shuffled = another clip's class code, silent = silence), so a model that
uses the class shows it as a true-vs-shuffled gap. The code replaces the audio through the
data's public hook, ``data.item_transform`` (:class:`ClassCodeAudio`). Usage (any
``avvsr-train`` overrides)::

    AVVSR_ORACLE_DATA=data/synth_av \
    python experiments/av_ablation/diagnostics/class_oracle_train.py experiment=av_ablation \
        model/fusion=msavf trainer.max_steps=1500 threads=1 \
        hydra.run.dir=logs/investigate/oracle_1500

``AVVSR_ORACLE_DATA`` is the synthetic set's root (its manifest gives the classes);
pass the same root as ``data.train.root`` when it is not the default.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from study_tools import sounding_class_by_video

from avvsr.data.audio_features import SILENCE_LOG_MEL

BANDS_PER_CLASS = 16
CODE_LEVEL = 10.0  # natural-log units above silence


class ClassCodeAudio:
    """An ``item_transform`` that makes each item's ``audio`` (T, n_mels, n_frames) the class
    code of its clip's sounding object (the set at ``data_root`` says which)."""

    def __init__(self, data_root: str | os.PathLike) -> None:
        self.class_of = sounding_class_by_video(data_root)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        code = torch.full_like(item["audio"], SILENCE_LOG_MEL)
        first = self.class_of[item["key"].rsplit(":", 1)[0]] * BANDS_PER_CLASS
        code[:, first : first + BANDS_PER_CLASS, :] += CODE_LEVEL
        return {**item, "audio": code}


def oracle_override(data_root: str | os.PathLike) -> str:
    """The Hydra override that installs :class:`ClassCodeAudio` for the set at ``data_root``."""
    return (f"data.item_transform={{_target_:{__name__}.ClassCodeAudio,"
            f"data_root:'{os.fspath(data_root)}'}}")


if __name__ == "__main__":
    from avvsr import train

    sys.argv.append(oracle_override(os.environ.get("AVVSR_ORACLE_DATA", "data/synth_av")))
    train.main()
