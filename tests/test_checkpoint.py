"""The checkpoint and export formats (avvsr.checkpoint): what the trainer writes loads everywhere;
nothing a file names runs; every malformed file is refused with its name and the problem.

Checkpoints come from the trainer itself (``avvsr.train.train`` on folders of real files, or
the session fixture ``tiny_checkpoints``, written by ``lightning.Trainer``); hostile files are
made by editing such a file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from avvsr.checkpoint import (
    ALLOWED_TARGETS,
    MODEL_CONFIG_KEY,
    load_lit_module,
    load_model,
    load_weights,
    read_weights,
)
from avvsr.cli import export as export_cli
from avvsr.cli import upscale as upscale_cli
from avvsr.cli import visualize as visualize_cli
from avvsr.data.io import probe_video
from avvsr.errors import MissingFileError, WeightsError
from avvsr.inference import ChunkedUpscaler
from helpers.training import compose_train
from media import write_ave_folder, write_test_video

CODE_RAN: list[str] = []
MARKER = "test_checkpoint.record_code_ran"  # importable: pytest puts tests/ on sys.path


def record_code_ran(*args, **kwargs) -> None:
    """What a hostile model file would run on load (it must never be called)."""
    CODE_RAN.append("ran")


class Payload:
    """An object whose unpickling calls :func:`record_code_ran`."""

    def __reduce__(self):
        return (record_code_ran, ())


@pytest.fixture(autouse=True)
def _no_code_ran():
    CODE_RAN.clear()
    yield
    assert CODE_RAN == [], "a model file made avvsr run code it names"


# ------------------------------------------------------------------ trained on real files
def folder_of_videos(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in ("a.mp4", "b.mp4"):
        write_test_video(root / name, num_frames=8, height=64, width=64)
    return root


def ave_tree(root: Path) -> Path:
    record = "Dog&v1&good&0&1"
    return write_ave_folder(root, {"train": [record], "val": [record], "test": [record]},
                            num_frames=12, height=128, width=128)


@pytest.mark.parametrize("data", ["folder", "ave"])
def test_a_fusion_model_trained_on_real_files_exports_upscales_and_visualizes(
    tmp_path: Path, data: str, capsys: pytest.CaptureFixture
) -> None:
    from avvsr.train import train

    root = folder_of_videos(tmp_path / "videos") if data == "folder" else ave_tree(
        tmp_path / "AVE_Dataset")
    # Non-default audio features: the checkpoint must carry them to every loader.
    cfg = compose_train(root, tmp_path / "run", [
        f"data={data}", f"data.train.root={root}", "data.num_workers=0", "data.batch_size=1",
        "data.eval_max_frames=6", "trainer.max_steps=2", "audio.n_mels=40", "audio.window_s=0.2",
        "model.backbone.num_feat=8",
    ])
    train(cfg)
    checkpoint = json.loads((tmp_path / "run" / "out" / "metrics.json").read_text())[
        "best_checkpoint"]

    model = load_model(checkpoint)
    assert model.uses_audio
    assert (model.audio_features.n_mels, model.audio_features.window_s) == (40, 0.2)

    exported = tmp_path / "model.safetensors"
    assert export_cli.main([checkpoint, str(exported)]) == 0
    assert load_model(exported).audio_features == model.audio_features

    video = write_test_video(tmp_path / "clip.mp4", num_frames=6, height=16, width=24)
    for ckpt in (checkpoint, exported):
        out = tmp_path / f"up-{Path(ckpt).suffix[1:]}.mp4"
        assert upscale_cli.main([str(video), str(out), "--ckpt", str(ckpt), "--quiet"]) == 0
        assert (probe_video(out).width, probe_video(out).num_frames) == (96, 6)
    assert visualize_cli.main(["--ckpt", checkpoint, "--video", str(video), "--frames", "4",
                               "--out", str(tmp_path / "figure")]) == 0
    assert (tmp_path / "figure" / "grid.png").is_file()


def test_evaluation_makes_the_features_as_the_checkpoint_says(tmp_path: Path) -> None:
    from avvsr.evaluate import evaluate
    from avvsr.train import train

    root = folder_of_videos(tmp_path / "videos")
    common = ["data=folder", f"data.train.root={root}", "data.num_workers=0",
              "data.eval_max_frames=6", "model.backbone.num_feat=8"]
    train(compose_train(root, tmp_path / "train", [*common, "audio.n_mels=40"]))
    ckpt = json.loads((tmp_path / "train" / "out" / "metrics.json").read_text())[
        "best_checkpoint"]
    # Composed with the default 64 bands; the checkpoint's 40 must win, or the encoder fails.
    evaluate(compose_train(root, tmp_path / "eval", [*common[:-1], f"ckpt_path={ckpt}"],
                           config_name="eval"))
    metrics = json.loads((tmp_path / "eval" / "out" / "metrics.json").read_text())["metrics"]
    assert "test/true/psnr_y" in metrics


# ------------------------------------------------------------------ exports
def test_export_rebuilds_the_same_model(tiny_checkpoints, tmp_path):
    exported = tmp_path / "model.safetensors"
    assert export_cli.main([str(tiny_checkpoints["msavf"]), str(exported)]) == 0
    from_checkpoint, from_export = load_model(tiny_checkpoints["msavf"]), load_model(exported)
    original, restored = from_checkpoint.net.state_dict(), from_export.net.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        torch.testing.assert_close(restored[key], value, rtol=0, atol=0, msg=key)
    assert from_export.model_config == from_checkpoint.model_config
    assert from_export.audio_features == from_checkpoint.audio_features
    with safe_open(str(exported), framework="pt") as file:
        assert json.loads(file.metadata()[MODEL_CONFIG_KEY]) == from_checkpoint.model_config
    lq, audio = torch.rand(4, 3, 12, 16), torch.randn(4, 64, 33) - 5
    torch.testing.assert_close(
        ChunkedUpscaler(from_export.net).upscale_window(lq, audio),
        ChunkedUpscaler(from_checkpoint.net).upscale_window(lq, audio),
        rtol=0, atol=0,
    )


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


# ------------------------------------------------------------------ strict weights
def test_backbone_weights_start_a_fusion_model_at_its_backbone(tiny_checkpoints, tmp_path):
    from avvsr.config import build_lit_module
    from helpers.models import compose_model_config

    plain = tmp_path / "plain.safetensors"
    export_cli.main([str(tiny_checkpoints["none"]), str(plain)])
    fused = build_lit_module(compose_model_config("msavf", [f"model.init_weights={plain}"]))
    reference = load_model(plain).net
    lq, audio = torch.rand(1, 3, 3, 12, 16), torch.randn(1, 3, 64, 33)
    with torch.no_grad():  # MS-AVF starts at identity: exactly the backbone's output
        assert torch.equal(fused.net.eval()(lq, audio).sr, reference(lq).sr)


def test_weights_that_do_not_fit_are_refused_unless_a_partial_load_is_asked(
    tiny_checkpoints, tmp_path, caplog
):
    from avvsr.config import build_lit_module
    from helpers.models import compose_model_config

    wide = build_lit_module(compose_model_config("none", ["model.backbone.num_feat=24"]))
    with pytest.raises(WeightsError, match=r"none.ckpt.*of another shape: .*\(model"):
        load_weights(wide.net, read_weights(tiny_checkpoints["none"]),
                     source=tiny_checkpoints["none"])
    left_out = load_weights(wide.net, read_weights(tiny_checkpoints["none"]),
                            source=tiny_checkpoints["none"], partial=True)
    assert left_out and "partial load" in caplog.text


def test_a_checkpoint_whose_config_does_not_match_its_weights_is_refused(
    tiny_checkpoints, tmp_path
):
    blob = torch.load(tiny_checkpoints["msavf"], weights_only=True)
    blob[MODEL_CONFIG_KEY]["fusion"] = None  # 44-odd fusion tensors would be dropped
    torch.save(blob, tmp_path / "edited.ckpt")
    with pytest.raises(WeightsError, match=r"edited.ckpt.*not in the model: audio_encoder\."):
        load_model(tmp_path / "edited.ckpt")
    blob = torch.load(tiny_checkpoints["none"], weights_only=True)
    blob[MODEL_CONFIG_KEY]["fusion"] = torch.load(
        tiny_checkpoints["msavf"], weights_only=True)[MODEL_CONFIG_KEY]["fusion"]
    torch.save(blob, tmp_path / "missing.ckpt")
    with pytest.raises(WeightsError, match=r"missing.ckpt.*missing in the file: audio_encoder\."):
        load_model(tmp_path / "missing.ckpt")


# ------------------------------------------------------------------ hostile files
def edited_config(tiny_checkpoints, edit) -> dict:
    """The fusion checkpoint's model config after ``edit(config)``."""
    config = torch.load(tiny_checkpoints["msavf"], weights_only=True)[MODEL_CONFIG_KEY]
    edit(config)
    return config


HOSTILE_EDITS = {
    "top level": lambda c: c.update(_target_=MARKER),
    "backbone": lambda c: c["backbone"].update(_target_=MARKER),
    "builtin": lambda c: c["backbone"].update(_target_="builtins.print"),
    "partial fusion": lambda c: c["fusion"].update(_target_=MARKER),
    "nested dict": lambda c: c["backbone"].update(spynet={"_target_": MARKER}),
    "inside _args_": lambda c: c["audio_encoder"].update(_args_=[{"_target_": MARKER}]),
    "audio features": lambda c: c["audio_features"].update(_target_=MARKER),
    "_recursive_": lambda c: c["backbone"].update(_recursive_=False),
    "_convert_": lambda c: c.update(_convert_="all"),
    "interpolation": lambda c: c["backbone"].update(num_feat="${oc.env:HOME}"),
    "_partial_ not a bool": lambda c: c["fusion"].update(_partial_="yes"),
    "target not a string": lambda c: c["fusion"].update(_target_=["os", "system"]),
}


@pytest.mark.parametrize("where", HOSTILE_EDITS)
@pytest.mark.parametrize("kind", ["ckpt", "safetensors"])
def test_a_model_file_naming_code_is_refused_before_anything_is_built(
    tiny_checkpoints, tmp_path, where, kind
):
    config = edited_config(tiny_checkpoints, HOSTILE_EDITS[where])
    if kind == "ckpt":
        blob = torch.load(tiny_checkpoints["msavf"], weights_only=True)
        blob[MODEL_CONFIG_KEY] = config
        path = tmp_path / "hostile.ckpt"
        torch.save(blob, path)
    else:
        path = tmp_path / "hostile.safetensors"
        assert export_cli.main([str(tiny_checkpoints["msavf"]), str(path)]) == 0
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata()
            tensors = {key: file.get_tensor(key) for key in file.keys()}
        save_file(tensors, str(path), metadata={**metadata, MODEL_CONFIG_KEY: json.dumps(config)})
    for load in (load_model, load_lit_module, read_weights):
        with pytest.raises(WeightsError, match=f"{path.name}: model"):
            load(path)


MALFORMED_CONFIGS = {  # each builds an allowed class with bad arguments
    "no backbone": lambda c: c.pop("backbone"),
    "wrong-typed value": lambda c: c["backbone"].update(num_feat="wide"),
    "unknown argument": lambda c: c["backbone"].update(colour=3),
    "not a mapping": lambda c: c.update(audio_features=[1, 2]),
    "bad audio setting": lambda c: c["audio_features"].update(n_mels=-4),
}


@pytest.mark.parametrize("case", MALFORMED_CONFIGS)
def test_a_malformed_model_config_is_named(tiny_checkpoints, tmp_path, case):
    blob = torch.load(tiny_checkpoints["msavf"], weights_only=True)
    blob[MODEL_CONFIG_KEY] = edited_config(tiny_checkpoints, MALFORMED_CONFIGS[case])
    torch.save(blob, tmp_path / "malformed.ckpt")
    with pytest.raises(WeightsError, match="malformed.ckpt: its model config does not build"):
        load_model(tmp_path / "malformed.ckpt")


def test_damaged_files_are_named_with_what_is_wrong(tiny_checkpoints, tmp_path):
    original = tiny_checkpoints["none"].read_bytes()
    exported = tmp_path / "good.safetensors"
    export_cli.main([str(tiny_checkpoints["none"]), str(exported)])
    blob = torch.load(tiny_checkpoints["none"], weights_only=True)
    key = next(iter(blob["state_dict"]))
    files = {
        "empty.ckpt": (b"", "empty file"),
        "garbage.ckpt": (b"\x00not a checkpoint at all", "not a PyTorch checkpoint"),
        "truncated.ckpt": (original[: len(original) // 2], "truncated or damaged"),
        "truncated.safetensors": (exported.read_bytes()[:1000], "not a readable safetensors"),
    }
    for name, (content, reason) in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WeightsError, match=f"{name}: {reason}") as error:
            load_model(tmp_path / name)
        assert "weights_only" not in str(error.value)

    blob["state_dict"][key] = torch.zeros(3)
    torch.save(blob, tmp_path / "shape.ckpt")
    with pytest.raises(WeightsError, match="shape.ckpt.*of another shape"):
        load_model(tmp_path / "shape.ckpt")
    blob["state_dict"] = {"net.x": "not a tensor"}
    torch.save(blob, tmp_path / "notensor.ckpt")
    with pytest.raises(WeightsError, match="notensor.ckpt.*not tensors"):
        load_model(tmp_path / "notensor.ckpt")
    with pytest.raises(MissingFileError, match="nowhere.ckpt"):
        load_model(tmp_path / "nowhere.ckpt")


def test_a_pickle_with_code_is_refused_without_running_it(tiny_checkpoints, tmp_path):
    blob = torch.load(tiny_checkpoints["none"], weights_only=True)
    blob["extra"] = Payload()
    torch.save(blob, tmp_path / "unsafe.ckpt")
    for load in (load_model, read_weights):
        with pytest.raises(WeightsError, match="unsafe.ckpt: .*could run code") as error:
            load(tmp_path / "unsafe.ckpt")
        assert "weights_only" not in str(error.value)


def test_files_that_are_not_avvsr_models_are_refused(tiny_checkpoints, tmp_path):
    state = load_model(tiny_checkpoints["none"]).net.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(WeightsError, match="bare.safetensors.*not an avvsr-export"):
        load_model(tmp_path / "bare.safetensors")
    torch.save(state, tmp_path / "plain.pth")
    with pytest.raises(WeightsError, match="plain.pth.*not a checkpoint written by avvsr-train"):
        load_model(tmp_path / "plain.pth")
    assert read_weights(tmp_path / "plain.pth").keys() == state.keys()  # fine as start weights


def test_every_model_class_the_configs_name_is_allowed():
    """A new backbone, encoder or fusion needs its line in ALLOWED_TARGETS, or its checkpoints
    would not load: every option of every model config group is composed here."""
    from avvsr.config import CONFIG_DIR, build_lit_module, compose

    groups = Path(CONFIG_DIR) / "model"
    for group in ("backbone", "audio_encoder", "fusion"):
        for option in sorted((groups / group).glob("*.yaml")):
            config = compose("train", [f"model/{group}={option.stem}"]).model
            targets = {node["_target_"] for node in (config, config.backbone,
                       config.audio_encoder, config.fusion, config.audio_features) if node}
            assert targets <= ALLOWED_TARGETS, (option, targets - ALLOWED_TARGETS)
            if "tiny" in option.stem or group != "backbone":
                assert build_lit_module(config).model_config["_target_"] in ALLOWED_TARGETS


def test_avvsr_eval_names_a_bad_checkpoint_in_one_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "garbage.ckpt").write_bytes(b"\x00not a checkpoint")
    result = subprocess.run(
        [sys.executable, "-m", "avvsr.evaluate", f"ckpt_path={tmp_path / 'garbage.ckpt'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"avvsr-eval: {tmp_path / 'garbage.ckpt'}: not a PyTorch checkpoint (not a pickle or "
        "zip file)"
    )


@pytest.mark.parametrize("name", ["msavf_9f844a8.ckpt", "msavf_9f844a8.safetensors"])
def test_model_files_written_by_an_earlier_avvsr_still_load(name):
    """Written before the format's move (tests/data/legacy/README.md says how)."""
    path = Path(__file__).parent / "data" / "legacy" / name
    model = load_model(path)
    assert model.uses_audio and model.audio_features.n_mels == 64
    if path.suffix == ".ckpt":
        stored = torch.load(path, weights_only=True)["state_dict"]
        stored = {key.removeprefix("net."): value for key, value in stored.items()}
    else:
        from safetensors.torch import load_file

        stored = load_file(str(path))
    loaded = model.net.state_dict()
    assert loaded.keys() == stored.keys()
    assert all(torch.equal(loaded[key], value) for key, value in stored.items())
