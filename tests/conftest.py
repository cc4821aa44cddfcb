"""Shared test settings: deterministic, offline, and light on the two CPU cores."""

from __future__ import annotations

import os

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
def synth_root(tmp_path_factory: pytest.TempPathFactory):
    """``<tmp>/synth_av``: a small synthetic set (4/2/2 clips of 8 frames at 96x96), made once
    per session (:func:`helpers.training.make_small_synthetic_set`)."""
    from helpers.training import make_small_synthetic_set

    return make_small_synthetic_set(tmp_path_factory.mktemp("data") / "synth_av")
