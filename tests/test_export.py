"""avvsr-export: network weights alone (safetensors + JSON metadata), loaded safely."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from avvsr.cli import export as export_cli
from avvsr.cli import upscale as upscale_cli
from avvsr.data.io import probe_video
from avvsr.errors import MissingFileError, WeightsError
from avvsr.inference import ChunkedUpscaler, load_model
from media import write_test_video
from test_upscale import AUDIO_FEATURES, _one_thread, save_checkpoint, tiny_checkpoints  # noqa: F401

CODE_RAN: list[str] = []


def record_code_ran() -> None:
    """What a malicious checkpoint would run on load (it must never be called)."""
    CODE_RAN.append("ran")


class Payload:
    """An object whose unpickling calls :func:`record_code_ran`."""

    def __reduce__(self):
        return (record_code_ran, ())


def test_export_rebuilds_the_same_model(tiny_checkpoints, tmp_path):
    exported = tmp_path / "model.safetensors"
    assert export_cli.main([str(tiny_checkpoints["msavf"]), str(exported)]) == 0
    from_checkpoint, from_export = load_model(tiny_checkpoints["msavf"]), load_model(exported)
    original, restored = from_checkpoint.net.state_dict(), from_export.net.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        torch.testing.assert_close(restored[key], value, rtol=0, atol=0, msg=key)
    assert from_export.model_config == from_checkpoint.model_config
    assert from_export.audio_features.__dict__ == AUDIO_FEATURES
    with safe_open(str(exported), framework="pt") as file:
        metadata = file.metadata()
    assert json.loads(metadata["avvsr_model_config"]) == from_checkpoint.model_config
    # Only the network: the file holds no optimizer state or training-only tensors.
    assert not any(key.startswith(("val_metrics", "test_metrics")) for key in restored)

    lq, audio = torch.rand(4, 3, 12, 16), torch.randn(4, 64, 33) - 5
    torch.testing.assert_close(
        ChunkedUpscaler(from_export.net).upscale_window(lq, audio),
        ChunkedUpscaler(from_checkpoint.net).upscale_window(lq, audio),
        rtol=0,
        atol=0,
    )


def test_upscale_accepts_an_export(tiny_checkpoints, tmp_path):
    exported = tmp_path / "plain.safetensors"
    assert export_cli.main([str(tiny_checkpoints["none"]), str(exported)]) == 0
    source = write_test_video(tmp_path / "in.mp4", num_frames=5, height=16, width=24)
    out = tmp_path / "out.mp4"
    assert upscale_cli.main([str(source), str(out), "--ckpt", str(exported), "--quiet"]) == 0
    assert (probe_video(out).width, probe_video(out).num_frames) == (4 * 24, 5)


def test_export_refuses_existing_output_and_other_suffixes(tiny_checkpoints, tmp_path, capsys):
    exported = tmp_path / "model.safetensors"
    exported.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main([str(tiny_checkpoints["none"]), str(exported)])
    assert exit_info.value.code == 2
    assert "model.safetensors" in capsys.readouterr().err
    assert exported.read_bytes() == b"keep me"
    assert export_cli.main([str(tiny_checkpoints["none"]), str(exported), "--overwrite"]) == 0
    assert load_model(exported).scale == load_model(tiny_checkpoints["none"]).scale

    with pytest.raises(SystemExit):
        export_cli.main([str(tiny_checkpoints["none"]), str(tmp_path / "model.pt")])
    assert "safetensors" in capsys.readouterr().err
    assert not (tmp_path / "model.pt").exists()


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(MissingFileError, match="nowhere.ckpt"):
        load_model(tmp_path / "nowhere.ckpt")


def test_checkpoint_with_code_is_refused_without_running_it(tiny_checkpoints, tmp_path):
    blob = torch.load(tiny_checkpoints["none"], weights_only=True)
    blob["extra"] = Payload()
    torch.save(blob, tmp_path / "unsafe.ckpt")
    with pytest.raises(WeightsError, match="unsafe.ckpt"):
        load_model(tmp_path / "unsafe.ckpt")
    assert CODE_RAN == []


def test_files_that_are_not_avvsr_models_are_refused(tiny_checkpoints, tmp_path):
    from safetensors.torch import save_file

    state = load_model(tiny_checkpoints["none"]).net.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(WeightsError, match="bare.safetensors.*not an avvsr-export"):
        load_model(tmp_path / "bare.safetensors")

    (tmp_path / "garbage.ckpt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.ckpt"):
        load_model(tmp_path / "garbage.ckpt")

    config = load_model(tiny_checkpoints["msavf"]).model_config
    net = load_model(tiny_checkpoints["none"]).net
    save_checkpoint(tmp_path / "mismatch.ckpt", net, config)  # no fusion weights, fusion config
    with pytest.raises(WeightsError, match="mismatch.ckpt"):
        load_model(tmp_path / "mismatch.ckpt")
