"""Shared test settings: deterministic, offline, and light on the two CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny tensors only pay for a second thread's
    synchronisation, 10-30x when the other core of the shared machine is busy (measured)."""
    from helpers.models import single_thread

    with single_thread():
        yield


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every test starts from the same random state."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``{"msavf": path, "none": path}``: Lightning checkpoints of tiny trained / untrained
    models (:func:`helpers.models.tiny_checkpoint_files`)."""
    from helpers.models import tiny_checkpoint_files

    return tiny_checkpoint_files(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def synthetic_sets(tmp_path_factory: pytest.TempPathFactory):
    """``config -> root``: the synthetic set of a :class:`~avvsr.data.synthetic.SynthConfig`,
    generated the first time a test asks for it and shared by the session: read it, copy it to
    change it (:class:`helpers.synthetic.SyntheticSets`, which holds the kinds of set)."""
    from helpers.synthetic import SyntheticSets

    return SyntheticSets(tmp_path_factory.mktemp("synthetic_sets"))


@pytest.fixture(scope="session")
def synth_root(synthetic_sets) -> Path:
    """``<tmp>/synth_av``: the small synthetic set the training and data tests read (4/2/2
    clips of 8 frames at 96x96, :data:`helpers.synthetic.TRAINING_SET`)."""
    from helpers.synthetic import TRAINING_SET

    return synthetic_sets(TRAINING_SET)
