"""How well the audio-visual synchrony alone tells the sounding object from the silent ones: the
source-vs-distractor AUC of the parameter-free map (:mod:`avvsr.models.synchrony`) on a set's
test split, per window, with the clips' own audio and with another clip's (the test's fixed
permutation, as in the study's controls).

No model is trained: it is the ceiling of what the synchrony term of ``model/fusion=msavf_sync``
can add to a mask by itself.

Usage::

    python experiments/av_ablation/diagnostics/synchrony_auc.py --data data/synth_lattice \
        [--windows 3,5,9,15] [overrides ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from study_tools import single_threaded_test_batches

from avvsr.metrics import SourceDistractorAUC
from avvsr.models.synchrony import AudioVisualSynchrony


def synchrony_auc(batches: Sequence[dict], window: int, shuffled: bool) -> float:
    """The map's source-vs-distractor AUC over ``batches`` (mapped from [-1, 1] to [0, 1]);
    ``shuffled``: with another clip's audio (``audio_shuffled``)."""
    synchrony = AudioVisualSynchrony(window)
    auc = SourceDistractorAUC()
    for batch in batches:
        scores = (synchrony(batch["lq"], batch["audio_shuffled" if shuffled else "audio"]) + 1) / 2
        auc.update(scores, batch["mask"].float(), batch["distractor_mask"].float())
    return auc.compute()["auc"].item()


def main(argv: Sequence[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a synthetic set (avvsr-synth)")
    parser.add_argument("--windows", type=lambda text: [int(w) for w in text.split(",")],
                        default=[3, 5, 9, 15], help="frames per window, comma-separated")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the study's config")
    args = parser.parse_intermixed_args(argv)
    batches = single_threaded_test_batches(args.data, args.overrides)
    results = {
        window: {audio: synchrony_auc(batches, window, audio == "shuffled")
                 for audio in ("true", "shuffled")}
        for window in args.windows
    }
    rows = (f"{window} | {scores['true']:.3f} | {scores['shuffled']:.3f}"
            for window, scores in results.items())
    print("\n".join(["window (frames) | AUC true | AUC shuffled", *rows]))
    return results


if __name__ == "__main__":
    main()
