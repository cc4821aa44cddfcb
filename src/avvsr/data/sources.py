"""Sources: where the clips of a data set come from, as lists of :class:`ClipRecord`.

A source only reads listings (a manifest, a folder, annotation files); it never decodes
video, so building one is cheap and a bad video is found later, by the data set, which
reports and skips it. Each source is built by Hydra from ``_target_`` and its arguments:

- :class:`SyntheticSource`: the synthetic benchmark (``avvsr.data.synthetic`` manifest);
- :class:`FolderSource`: any videos under a folder, with optional split lists;
- :class:`AVESource`: the AVE data set layout (``Annotations.txt`` and split files).

Malformed listings raise :class:`~avvsr.errors.DatasetError` naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from avvsr.errors import DatasetError

PathLike = str | os.PathLike[str]

# Container extensions FFmpeg demuxes that hold video (compared in lower case).
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".wmv", ".mpg", ".mpeg",
     ".ts", ".m2ts", ".mts", ".3gp", ".ogv", ".asf", ".vob"}
)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClipRecord:
    """One video of a data set and what the listing knows about it.

    ``key`` is the path relative to the source root (it names the clip in batches);
    ``start_s``/``end_s`` (seconds on the video's clock) bound an event window to sample
    frames from (``None``: the whole video); ``labels`` is a uint8 ``(T, H, W)`` ``.npy`` of
    object ids with ``sounding_ids`` the ids that make sound (synthetic set only).
    """

    path: Path
    key: str
    start_s: float | None = None
    end_s: float | None = None
    labels: Path | None = None
    sounding_ids: tuple[int, ...] = ()


class ClipSource:
    """A list of clip records with a name for messages; subclasses fill ``records``."""

    def __init__(self, name: str, records: list[ClipRecord]) -> None:
        self.name = name
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ClipRecord]:
        return iter(self.records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {len(self.records)} clips)"


def _listing_lines(file: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, stripped text) of each non-blank, non-comment line of ``file``."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(file, f"cannot read the listing ({error})") from error
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped


def _relative_key(listing: Path, number: int, text: str) -> str:
    """Check that a listed path stays inside the root; return it in POSIX form."""
    relative = PurePosixPath(text.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise DatasetError(
            listing, f"line {number}: expected a path relative to the data root, got {text!r}"
        )
    return relative.as_posix()


def _existing_dir(root: Path, what: str) -> Path:
    if not root.is_dir():
        raise DatasetError(root, f"{what} root is not a directory")
    return root


class SyntheticSource(ClipSource):
    """The clips of one split of a synthetic benchmark (``<root>/manifest.json``).

    Records carry the per-frame label maps and the ids of the sounding objects, from which
    the data set builds the sound-source mask.
    """

    def __init__(self, root: PathLike, split: str) -> None:
        from avvsr.data.synthetic import load_manifest

        root = _existing_dir(Path(root), "synthetic data")
        manifest = load_manifest(root)
        if split not in manifest.splits:
            raise DatasetError(
                root / 'manifest.json', f"no split {split!r} (has {sorted(manifest.splits)})"
            )
        records = [
            ClipRecord(
                path=root / entry.video,
                key=entry.video,
                labels=root / entry.labels,
                sounding_ids=tuple(obj.id for obj in entry.objects if obj.sounding),
            )
            for entry in manifest.splits[split]
        ]
        super().__init__(f"synthetic {root} [{split}]", records)


class FolderSource(ClipSource):
    """Videos under ``root`` (any container FFmpeg reads, by extension).

    With ``split`` and a list ``<root>/<split>.txt`` (one relative path a line; blank lines
    and ``#`` comments ignored), the listed files in that order; without lists, every video
    under ``root`` in sorted order. Asking for a split whose list is missing while other
    split lists exist is an error (it would silently mix the splits).
    """

    def __init__(self, root: PathLike, split: str | None = None) -> None:
        root = _existing_dir(Path(root), "video folder")
        listing = root / f"{split}.txt" if split is not None else None
        if listing is not None and listing.is_file():
            keys = [_relative_key(listing, n, text) for n, text in _listing_lines(listing)]
            name = f"folder {root} [{split}]"
        else:
            present = [f"{name}.txt" for name in SPLITS if (root / f"{name}.txt").is_file()]
            if listing is not None and present:
                raise DatasetError(
                    root, f"no split list {listing.name} although {', '.join(present)} exist"
                )
            keys = sorted(
                file.relative_to(root).as_posix()
                for file in root.rglob("*")
                if file.suffix.lower() in VIDEO_EXTENSIONS and file.is_file()
            )
            name = f"folder {root} [all videos]"
        super().__init__(name, [ClipRecord(path=root / key, key=key) for key in keys])


AVE_HEADER = "Category&VideoID&Quality&StartTime&EndTime"
AVE_SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


@dataclass(frozen=True)
class AVEAnnotation:
    """One AVE record: the event ``category`` is audible and visible from start to end (s)."""

    category: str
    video_id: str
    quality: str
    start_s: float
    end_s: float


def parse_ave_annotations(file: Path) -> list[AVEAnnotation]:
    """Records of an AVE listing (``Annotations.txt`` or a split file), header optional."""
    records = []
    for number, text in _listing_lines(file):
        if text == AVE_HEADER:
            continue
        # The video id, quality and times never hold '&'; split from the right.
        fields = text.rsplit("&", 4)
        if len(fields) != 5 or not all(field.strip() for field in fields):
            raise DatasetError(
                file, f"line {number}: expected '{AVE_HEADER}', got {text!r}"
            )
        category, video_id, quality, start, end = (field.strip() for field in fields)
        try:
            start_s, end_s = float(start), float(end)
        except ValueError:
            raise DatasetError(
                file, f"line {number}: StartTime and EndTime must be numbers (seconds), "
                f"got {start!r} and {end!r}"
            ) from None
        if not 0 <= start_s < end_s:
            raise DatasetError(
                file, f"line {number}: need 0 <= StartTime < EndTime, got {start_s}, {end_s}"
            )
        records.append(AVEAnnotation(category, video_id, quality, start_s, end_s))
    return records


class AVESource(ClipSource):
    """The AVE data set: ``<root>/Annotations.txt``, split files, ``<videos_dir>/<id>.mp4``.

    ``split`` is ``train``/``val``/``test`` (``trainSet.txt`` ...) or ``None`` for every
    record of ``Annotations.txt``. With ``event_window`` (default), records carry the event's
    StartTime..EndTime so clips are drawn where the sound source is audible and visible;
    otherwise the whole video is used.
    """

    def __init__(
        self,
        root: PathLike,
        split: str | None,
        videos_dir: str = "AVE",
        event_window: bool = True,
    ) -> None:
        root = _existing_dir(Path(root), "AVE")
        if split is None:
            listing = root / "Annotations.txt"
        elif split in AVE_SPLIT_FILES:
            listing = root / AVE_SPLIT_FILES[split]
        else:
            raise DatasetError(
                root, f"unknown AVE split {split!r} (expected one of {sorted(AVE_SPLIT_FILES)})"
            )
        if not listing.is_file():
            raise DatasetError(listing, "AVE listing not found")
        records = []
        for annotation in parse_ave_annotations(listing):
            key = f"{videos_dir}/{annotation.video_id}.mp4"
            window = (annotation.start_s, annotation.end_s) if event_window else (None, None)
            records.append(
                ClipRecord(path=root / key, key=key, start_s=window[0], end_s=window[1])
            )
        super().__init__(f"AVE {listing}", records)
