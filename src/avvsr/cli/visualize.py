"""``avvsr-visualize``: the qualitative figure, made by a command.

For a short clip, one row of panels per frame: LR input | output | HR (when known) | each
MS-AVF scale's attention mask over the output (finest first), with the outline of the sound
source where it is known. Writes ``DIR/grid.png`` (a few frames, one row each) and
``DIR/panels.mp4`` (every frame, with the clip's sound)::

    avvsr-visualize --ckpt m.ckpt --manifest data/synth_av --key test/0003 --degrade BI --out fig
    avvsr-visualize --ckpt m.ckpt --video c.mp4 --labels c_labels.npy --sounding-ids 2 --out fig
    avvsr-visualize --ckpt m.ckpt --video lr_clip.mp4 --out fig   # the video itself is the LR

With ``--degrade [BI|BD]`` the clip is HR ground truth and the LR input is made from it
(:func:`avvsr.data.degradations.degrade`); without it the clip is the LR input.
Label maps (the synthetic set's ``*_labels.npy``: uint8 object id per pixel, ``(T, H, W)``) are
at the clip's size.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

GRID_NAME = "grid.png"
VIDEO_NAME = "panels.mp4"


@dataclass(frozen=True)
class Figure:
    """What :func:`visualize` wrote."""

    grid: Path
    video: Path
    columns: list[str]  # panel names, left to right
    grid_frames: list[int]  # clip frame index of each grid row


def source_mask_from_labels(labels_path: Path, sounding_ids: Sequence[int]) -> np.ndarray:
    """Bool ``(T, H, W)``: the pixels of a label map that belong to a sounding object."""
    from avvsr.errors import MissingFileError, NotALabelMapError

    if not labels_path.is_file():
        raise MissingFileError(labels_path, "label map not found")
    not_an_array = NotALabelMapError(
        labels_path, "not a .npy label array (object ids, (T, H, W), saved with numpy.save)"
    )
    try:
        labels = np.load(labels_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:  # text, pickles, object arrays, truncation
        raise not_an_array from error
    if not isinstance(labels, np.ndarray):  # an .npz archive
        labels.close()
        raise not_an_array
    if labels.ndim != 3:
        raise NotALabelMapError(labels_path, f"a label map is (T, H, W), got shape {labels.shape}")
    return np.isin(labels, list(sounding_ids))


def manifest_clip(root: Path, key: str) -> tuple[Path, np.ndarray]:
    """The video and sound-source mask of clip ``key`` (e.g. ``train/0000``) of a synthetic set."""
    from avvsr.data.synthetic import load_manifest, sound_source_mask
    from avvsr.errors import DatasetError

    manifest = load_manifest(root)
    for entries in manifest.splits.values():
        for entry in entries:
            if entry.key == key:
                return root / entry.video, sound_source_mask(root, entry)
    raise DatasetError(root, f"no clip {key!r} in the manifest")


def visualize(
    checkpoint: Path,
    video: Path,
    out_dir: Path,
    *,
    source_mask: np.ndarray | None = None,
    mask_origin: str | None = None,
    degradation: str | None = None,
    start: int = 0,
    num_frames: int = 32,
    grid_rows: int = 4,
    allow_silent: bool = False,
    device: str = "cpu",
) -> Figure:
    """Run the model on ``num_frames`` frames of ``video`` from ``start`` and draw the figure.

    ``source_mask``: bool ``(T_video, H, W)`` at the video's size, or None; ``mask_origin``
    names where it came from in error messages.
    ``degradation``: ``"BI"``/``"BD"`` when the video is HR ground truth, None when it is LR.
    """
    from avvsr.checkpoint import load_model
    from avvsr.data.degradations import crop_to_scale, degrade
    from avvsr.data.io import probe_video, read_frames
    from avvsr.errors import DatasetError, MediaError
    from avvsr.inference import ChunkedUpscaler, InferenceSettings, frame_audio_for
    from avvsr.visualization import sample_panel, save_png

    info = probe_video(video)
    if not 0 <= start < info.num_frames:
        raise MediaError(video, f"start frame {start} outside its {info.num_frames} frames")
    indices = np.arange(start, min(start + num_frames, info.num_frames))
    if source_mask is not None and source_mask.shape != (info.num_frames, info.height, info.width):
        raise DatasetError(
            mask_origin or "the sound-source mask", f"shape {source_mask.shape} does not match "
            f"{video} ({info.num_frames} frames of {info.height}x{info.width})"
        )
    model = load_model(checkpoint)
    scale = model.scale
    frames = torch.from_numpy(read_frames(video, indices)).permute(0, 3, 1, 2) / 255
    mask = None if source_mask is None else torch.from_numpy(source_mask[indices])[:, None]
    gt = None
    if degradation is not None:
        gt = crop_to_scale(frames, scale)
        lq = degrade(gt, scale, degradation).clamp(0, 1)
        mask = crop_to_scale(mask, scale) if mask is not None else None
    else:
        lq = frames
        if mask is not None:
            mask = F.interpolate(mask.float(), scale_factor=scale, mode="nearest") > 0
    frame_audio = frame_audio_for(
        model, video, info.has_audio, info.timestamps_s[indices], allow_silent
    )
    audio = None
    if frame_audio is not None:
        with frame_audio:
            audio = frame_audio.features(0, len(indices))
    out = ChunkedUpscaler(model.net, InferenceSettings(device=device)).forward(lq, audio)
    rows = [
        sample_panel(lq[t], out.sr[0, t], None if gt is None else gt[t],
                     [m[0, t] for m in out.masks], None if mask is None else mask[t])
        for t in range(len(indices))
    ]
    columns = ["LR input", "output"] + (["HR"] if gt is not None else [])
    columns += [f"attention, scale {s}" for s in range(len(out.masks))]

    out_dir.mkdir(parents=True, exist_ok=True)
    grid_frames = sorted({round(i) for i in np.linspace(0, len(rows) - 1, grid_rows)})
    save_png(torch.cat([rows[i] for i in grid_frames], dim=1), out_dir / GRID_NAME)
    soundtrack = None
    if info.has_audio:
        soundtrack = clip_soundtrack(
            video, info.audio_sample_rate, info.timestamps_s[indices[0]], len(indices) / info.fps
        )
    write_panels(out_dir / VIDEO_NAME, rows, info.fps, soundtrack, info.audio_sample_rate)
    return Figure(out_dir / GRID_NAME, out_dir / VIDEO_NAME, columns,
                  [int(indices[i]) for i in grid_frames])


def clip_soundtrack(
    video: Path, sample_rate: int, start_s: float, duration_s: float
) -> np.ndarray:
    """float32 ``(N,)``: ``duration_s`` seconds of the soundtrack of ``video`` at
    ``sample_rate`` Hz from ``start_s`` (zeros outside it), decoded only as far as needed."""
    from avvsr.data.audio_io import AudioReader

    with AudioReader(video, sample_rate) as reader:
        return reader.windows(np.array([start_s + duration_s / 2]), duration_s)[0]


def write_panels(
    path: Path, rows: list[Tensor], fps: float, audio: np.ndarray | None, sample_rate: int | None
) -> None:
    """Write the rows ``(3, H, W)`` as a video at ``fps``, with ``audio`` if given."""
    from avvsr.data.video_writer import pixel_format_for, write_video

    frames = torch.stack(rows).clamp(0, 1).mul(255).round().to(torch.uint8)
    frames = frames.permute(0, 2, 3, 1).numpy()
    write_video(
        path, frames, fps, audio, sample_rate if audio is not None else None,
        pix_fmt=pixel_format_for(frames.shape[2], frames.shape[1]),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avvsr-visualize",
        description="LR input, output and MS-AVF attention masks of a clip, as a PNG and a video.",
    )
    add = parser.add_argument
    add("--ckpt", required=True, help="training checkpoint (.ckpt) or export (.safetensors)")
    add("--video", type=Path, help="the clip (optional with --manifest/--key)")
    add("--out", type=Path, required=True, help="folder for grid.png and panels.mp4")
    add("--labels", type=Path, help="label map (T, H, W) of object ids at the clip's size")
    add("--sounding-ids", type=int, nargs="+", help="ids of the sounding objects in --labels")
    add("--manifest", type=Path, help="root of a synthetic set (with manifest.json)")
    add("--key", help="clip of the synthetic set, e.g. train/0000")
    add(
        "--degrade", nargs="?", const="BI", choices=("BI", "BD"),
        help="the clip is HR ground truth: make the LR input from it (BI, the default, or BD)",
    )
    add("--start", type=int, default=0, help="first frame")
    add("--frames", type=int, default=32, help="frames to run (from --start)")
    add("--rows", type=int, default=4, help="frames shown in the grid")
    add("--allow-silent", action="store_true", help="use silence for a clip without audio")
    add("--device", default="cpu", help="torch device (default: cpu)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns 0, or exits with status 2 and a message on bad input."""
    from avvsr.cli.common import exit_on_bad_input

    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.manifest is None) != (args.key is None):
        parser.error("--manifest and --key go together")
    if (args.labels is None) != (args.sounding_ids is None):
        parser.error("--labels and --sounding-ids go together")
    if args.manifest is not None and args.labels is not None:
        parser.error("give either --labels/--sounding-ids or --manifest/--key, not both")
    if args.video is None and args.manifest is None:
        parser.error("--video is required (or --manifest and --key)")
    if args.frames < 1 or args.rows < 1:
        parser.error("--frames and --rows must be positive")
    with exit_on_bad_input("avvsr-visualize"):
        video, source_mask, mask_origin = args.video, None, None
        if args.manifest is not None:
            clip_video, source_mask = manifest_clip(args.manifest, args.key)
            video, mask_origin = video or clip_video, f"{args.manifest} {args.key}"
        elif args.labels is not None:
            source_mask = source_mask_from_labels(args.labels, args.sounding_ids)
            mask_origin = str(args.labels)
        figure = visualize(
            Path(args.ckpt), video, args.out, source_mask=source_mask, mask_origin=mask_origin,
            degradation=args.degrade,
            start=args.start, num_frames=args.frames, grid_rows=args.rows,
            allow_silent=args.allow_silent, device=args.device,
        )
    print(f"{figure.grid}: frames {figure.grid_frames}; columns: {' | '.join(figure.columns)}")
    print(f"{figure.video}: every frame, with the clip's sound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
