"""The synthetic sets the tests read, each kind defined once here and generated once per session.

Tests ask the session fixture ``synthetic_sets`` (``tests/conftest.py``) for a set by its
:class:`~avvsr.data.synthetic.SynthConfig`: the first request generates it with
:func:`avvsr.data.synthetic.generate`, later ones (from any test file) get the same folder. The
sets are shared, so tests only read them; a test that changes files copies the set first. Tests
of ``generate`` itself (idempotence, determinism, failures) call it on their own ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

from avvsr.data.synthetic import SynthConfig, generate

TRAINING_SET = SynthConfig(num_train=4, num_val=2, num_test=2, num_frames=8)
"""The default geometry (96x96, 2 objects, 4 classes) in short clips: what the training, data,
source and diagnostics tests read (the ``synth_root`` fixture)."""

FULL_LENGTH_SET = SynthConfig(num_train=4, num_val=1, num_test=1)
"""The default clips (16 frames at 10 fps: long enough to correlate brightness with loudness)
of the default geometry; 4 train clips, so each of the 4 classes sounds once."""

FIGURE_SET = SynthConfig(num_train=1, num_val=1, num_test=1, num_frames=8, height=64, width=64,
                         object_radius_min_px=10, object_radius_max_px=12)
"""Small frames (64x64, smaller objects to fit) for the figures of ``avvsr-visualize``."""

SET_FOLDER = "synth_av"  # a set's folder name, as ``conf/data/synth_av.yaml`` reads it


class SyntheticSets:
    """Sets generated on first request, one per configuration, at ``<base>/<n>/synth_av``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._roots: dict[SynthConfig, Path] = {}

    def __call__(self, config: SynthConfig = TRAINING_SET) -> Path:
        """The root of the set of ``config`` (its ``manifest.json`` and clips)."""
        if config not in self._roots:
            root = self.base / str(len(self._roots)) / SET_FOLDER
            self._roots[config] = generate(config, root, progress=False)
        return self._roots[config]
