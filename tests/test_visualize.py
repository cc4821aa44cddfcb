"""avvsr-visualize on a generated synthetic-set clip: grid PNG, panel video, source outline."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avvsr.cli import visualize as visualize_cli
from avvsr.data.io import probe_video, read_frames
from avvsr.data.synthetic import load_manifest, sound_source_mask
from avvsr.visualization import OUTLINE_COLOUR
from helpers.synthetic import FIGURE_SET
from media import write_video_without_audio

SIZE = FIGURE_SET.height  # HR side of the generated clips (square)
FRAMES = FIGURE_SET.num_frames


@pytest.fixture(scope="module")
def synthetic_set(synthetic_sets) -> Path:
    """The session's set of small clips (:data:`helpers.synthetic.FIGURE_SET`), read only."""
    return synthetic_sets(FIGURE_SET)


def read_png(path: Path) -> np.ndarray:
    """uint8 ``(3, H, W)`` of an RGB PNG."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def outline_of(region: np.ndarray) -> np.ndarray:
    """Bool ``(H, W)``: pixels of ``region`` with a 3x3 neighbour outside it (the frame's
    outside does not count)."""
    padded = np.pad(region, 1, constant_values=True)
    height, width = region.shape
    neighbours = [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
    return region & ~np.logical_and.reduce(neighbours)


def outline_pixels(panel: np.ndarray) -> np.ndarray:
    """Bool ``(H, W)``: pixels of a uint8 ``(3, H, W)`` panel painted in the outline colour."""
    colour = np.round(np.array(OUTLINE_COLOUR) * 255).astype(np.uint8)[:, None, None]
    return (panel == colour).all(axis=0)


def test_manifest_clip_figure(tiny_checkpoints, synthetic_set, tmp_path, capsys):
    out = tmp_path / "figure"
    args = [
        "--ckpt",
        str(tiny_checkpoints["msavf"]),
        "--manifest",
        str(synthetic_set),
        "--key",
        "train/0000",
        "--degrade",
        "BI",
        "--out",
        str(out),
        "--rows",
        "3",
    ]
    assert visualize_cli.main(args) == 0
    printed = capsys.readouterr().out
    columns = [
        "LR input",
        "output",
        "HR",
        "attention, scale 0",
        "attention, scale 1",
        "attention, scale 2",
    ]  # the fusion config's three MS-AVF scales
    assert " | ".join(columns) in printed

    grid = read_png(out / "grid.png")
    rows = np.linspace(0, FRAMES - 1, 3).round().astype(int).tolist()  # evenly spaced
    assert grid.shape == (3, len(rows) * SIZE, len(columns) * SIZE)
    entry = load_manifest(synthetic_set).splits["train"][0]
    source = sound_source_mask(synthetic_set, entry)
    for row, frame in enumerate(rows):
        expected = outline_of(source[frame])
        assert expected.any()
        for column in range(len(columns)):
            panel = grid[:, row * SIZE : (row + 1) * SIZE, column * SIZE : (column + 1) * SIZE]
            drawn = outline_pixels(panel)
            if columns[column].startswith("attention"):
                np.testing.assert_array_equal(drawn, expected)
            else:
                assert not drawn.any()

    panels = probe_video(out / "panels.mp4")
    assert (panels.num_frames, panels.height, panels.width) == (FRAMES, SIZE, len(columns) * SIZE)
    assert panels.has_audio
    hr = read_frames(synthetic_set / entry.video, [rows[0]])[0].transpose(2, 0, 1)
    np.testing.assert_array_equal(grid[:, :SIZE, 2 * SIZE : 3 * SIZE], hr)  # HR: the clip


def test_labels_and_ids_give_the_manifest_figure(tiny_checkpoints, synthetic_set, tmp_path):
    entry = load_manifest(synthetic_set).splits["train"][0]
    sounding = [str(obj.id) for obj in entry.objects if obj.sounding]
    common = ["--ckpt", str(tiny_checkpoints["msavf"]), "--degrade"]  # BI when no kind is named
    visualize_cli.main(
        [
            *common,
            "--manifest",
            str(synthetic_set),
            "--key",
            "train/0000",
            "--out",
            str(tmp_path / "a"),
        ]
    )
    visualize_cli.main(
        [
            *common,
            "--video",
            str(synthetic_set / entry.video),
            "--labels",
            str(synthetic_set / entry.labels),
            "--sounding-ids",
            *sounding,
            "--out",
            str(tmp_path / "b"),
        ]
    )
    np.testing.assert_array_equal(
        read_png(tmp_path / "a" / "grid.png"), read_png(tmp_path / "b" / "grid.png")
    )


def test_video_as_lr_without_masks(tiny_checkpoints, synthetic_set, tmp_path, capsys):
    entry = load_manifest(synthetic_set).splits["train"][0]
    out = tmp_path / "figure"
    visualize_cli.main(
        [
            "--ckpt",
            str(tiny_checkpoints["none"]),
            "--video",
            str(synthetic_set / entry.video),
            "--out",
            str(out),
            "--frames",
            "4",
            "--rows",
            "2",
        ]
    )
    assert "columns: LR input | output\n" in capsys.readouterr().out
    grid = read_png(out / "grid.png")
    assert grid.shape == (3, 2 * 4 * SIZE, 2 * 4 * SIZE)  # output is 4x the clip
    assert probe_video(out / "panels.mp4").num_frames == 4


@pytest.mark.parametrize("kind", ["text", "pickle", "object array", "npz", "truncated"])
def test_a_labels_file_that_is_not_an_array_is_named(tmp_path, capsys, kind) -> None:
    labels = tmp_path / f"labels.{'npz' if kind == 'npz' else 'npy'}"
    ids = np.zeros((FRAMES, SIZE, SIZE), dtype=np.uint8)
    if kind == "text":
        labels.write_text("1 2 3\n")
    elif kind == "pickle":
        labels.write_bytes(pickle.dumps({"labels": [1, 2, 3]}))
    elif kind == "object array":
        np.save(labels, np.array([{"id": 1}], dtype=object), allow_pickle=True)
    elif kind == "npz":
        np.savez(labels, ids=ids)
    else:
        np.save(labels, ids)
        labels.write_bytes(labels.read_bytes()[:200])
    with pytest.raises(SystemExit) as exit_info:
        visualize_cli.main(
            [
                *("--ckpt", str(tmp_path / "never.ckpt"), "--video", str(tmp_path / "v.mp4")),
                *("--labels", str(labels), "--sounding-ids", "1", "--out", str(tmp_path / "o")),
            ]
        )
    assert exit_info.value.code == 2
    assert f"{labels}: not a .npy label array" in capsys.readouterr().err


def test_bad_input_is_named(tiny_checkpoints, synthetic_set, tmp_path, capsys):
    entry = load_manifest(synthetic_set).splits["train"][0]
    wrong_labels = tmp_path / "wrong_labels.npy"
    np.save(wrong_labels, np.zeros((FRAMES, SIZE // 2, SIZE), dtype=np.uint8))
    cases = [
        (
            [
                "--video",
                str(synthetic_set / entry.video),
                "--labels",
                str(wrong_labels),
                "--sounding-ids",
                "1",
            ],
            "wrong_labels.npy",
        ),
        (["--manifest", str(synthetic_set), "--key", "train/9999"], "train/9999"),
        (["--video", str(write_video_without_audio(tmp_path / "mute.mp4"))], "--allow-silent"),
    ]
    for extra, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            visualize_cli.main(
                ["--ckpt", str(tiny_checkpoints["msavf"]), "--out", str(tmp_path / "never"), *extra]
            )
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
