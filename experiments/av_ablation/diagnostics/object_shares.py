"""How much of the frame the sound sources and the silent distractors of a synthetic set cover,
and how often a distractor shares its source's family, read from the set's label maps.

Prints, per split: the largest and the mean over clips of each clip's largest per-frame share
of the frame covered by the sound source, the same for the distractors, and the number of
silent objects of the first sounding object's family.

Usage::

    python experiments/av_ablation/diagnostics/object_shares.py data/synth_families
"""

from __future__ import annotations

import argparse

import numpy as np

from avvsr.data.synthetic import SynthConfig, load_manifest, sound_source_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="a synthetic set (its manifest.json)")
    args = parser.parse_args()
    manifest = load_manifest(args.root)
    config = SynthConfig(**manifest.params)
    for split, entries in manifest.splits.items():
        if not entries:
            continue
        source_shares, distractor_shares, same_family = [], [], 0
        for entry in entries:
            labels = np.load(f"{args.root}/{entry.labels}", allow_pickle=False)
            source = sound_source_mask(args.root, entry)
            source_shares.append(source.mean(axis=(1, 2)).max())
            distractor_shares.append(((labels > 0) & ~source).mean(axis=(1, 2)).max())
            sounding = [obj for obj in entry.objects if obj.sounding]
            if sounding:
                family = config.family_of(sounding[0].class_name)
                same_family += sum(config.family_of(obj.class_name) == family
                                   for obj in entry.objects if not obj.sounding)
        print(f"{split}: {len(entries)} clips; source share max {max(source_shares):.3f} "
              f"mean {np.mean(source_shares):.3f}; distractor share max "
              f"{max(distractor_shares):.3f} mean {np.mean(distractor_shares):.3f}; "
              f"silent objects of the source's family: {same_family}")


if __name__ == "__main__":
    main()
