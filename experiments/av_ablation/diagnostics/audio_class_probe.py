"""How fast does the study's audio encoder learn the sounding class from the log-mel alone?

Diagnostic for the study (item 8 of its README: MS-AVF uses a clean class code but not the real
soundtrack). The study's audio encoder (``config.model.audio_encoder``) plus a linear classifier
are trained with cross-entropy to name each frame's sounding class from that frame's log-mel
window, on the training clips of the study's DataModule (Adam, one-cycle rate). It prints the
classification accuracy over every frame of the test clips. ``--save FILE`` writes the trained
encoder as ``audio_encoder.*`` tensors, which ``model.init_weights=FILE`` loads into a fusion
model's audio encoder (the backbone and fusion keep their initial values). Usage::

    python experiments/av_ablation/diagnostics/audio_class_probe.py --steps 300 \
        --data data/synth_fill --save logs/investigate/audio_encoder.pt
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import hydra
import torch
import torch.nn.functional as F
from study_tools import ROOT, Study
from torch import Tensor, nn

from avvsr.atomic import atomic_write


def main(argv: Sequence[str] | None = None) -> float:
    """Train, print and return the test accuracy (fraction of frames)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--data", default=str(ROOT / "data" / "synth_av"))
    parser.add_argument("--save", default=None, help="write the encoder's weights here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the study's config")
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    study = Study(args.data, args.overrides)
    datamodule, num_classes = study.datamodule, study.num_classes
    encoder = hydra.utils.instantiate(study.config.model.audio_encoder)
    net = nn.Sequential(encoder, nn.Linear(encoder.embed_dim, num_classes))

    def labels(batch: dict) -> Tensor:
        return study.clip_classes(batch).repeat_interleave(batch["audio"].shape[1])  # per frame

    study.fit(net, args.steps,
              lambda batch: F.cross_entropy(net(batch["audio"]).flatten(0, 1), labels(batch)))
    correct = total = 0
    for batch in datamodule.test_dataloader():
        with torch.no_grad():
            predicted = net(batch["audio"]).flatten(0, 1).argmax(dim=1)
        correct += int((predicted == labels(batch)).sum())
        total += predicted.numel()
    accuracy = correct / total
    print(f"steps={args.steps} test accuracy {accuracy:.3f} ({correct} of {total} frames, "
          f"chance {1 / num_classes:.3f})")
    if args.save:
        state = {f"audio_encoder.{key}": value for key, value in encoder.state_dict().items()}
        with atomic_write(args.save) as temporary:
            torch.save(state, temporary)
    return accuracy


if __name__ == "__main__":
    main()
