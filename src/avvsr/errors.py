"""The exception types the suite raises for bad input.

Every error carries the offending path and a human-readable reason, so a message reads
``<path>: <reason>``. Callers that iterate over data sets catch :class:`MediaError` (the base
of the media errors), report the file once and skip it.
"""

from __future__ import annotations

from os import PathLike


class AVVSRError(Exception):
    """Base class of every error raised on purpose by avvsr."""


class PathError(AVVSRError):
    """A file or folder cannot be used; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str | PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MediaError(PathError):
    """A media file cannot be used."""


class MissingFileError(MediaError, FileNotFoundError):
    """The file does not exist."""


class NotAVideoError(MediaError):
    """The file exists but no demuxer can open it (not a media container, or damaged header)."""


class NoVideoStreamError(MediaError):
    """The container opened but holds no video stream."""


class MissingAudioError(MediaError):
    """The container holds no audio stream (callers may treat this as silence instead)."""


class VideoDecodeError(MediaError):
    """The video stream is there and not empty, but the decoder fails on its frames."""


class EmptyVideoError(MediaError):
    """The video stream decodes to zero frames."""


class NotALabelMapError(MediaError):
    """The file is not a NumPy ``.npy`` array, so it cannot be a label map."""


class ClipTooShortError(MediaError):
    """The video has fewer frames than the clip length a data set asks for."""


class DatasetError(PathError):
    """A data set (or its manifest, label maps, split lists) is unusable; ``path`` names the
    data set's folder or file (for example: no usable file at all)."""


class WeightsError(PathError):
    """A model file (checkpoint, export, published weights) cannot be read or loaded."""


class OutputExistsError(PathError, FileExistsError):
    """The output exists and overwriting was not asked for."""


class OutputError(PathError):
    """An output path cannot be written as asked (the input itself, a folder, a suffix that
    names no known container); ``path`` names it and ``reason`` says why."""


class MemoryBudgetError(AVVSRError):
    """No window and tile sizes keep a run within the memory it may use."""


class ConversionError(WeightsError):
    """A published checkpoint (BasicSR, mmagic, SPyNet) cannot be converted to an avvsr
    backbone: unknown network, keys that cannot be placed or are missing, shapes that differ."""
