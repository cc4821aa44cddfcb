"""The exception types the suite raises for bad input.

Every error carries the offending path and a human-readable reason, so a message reads
``<path>: <reason>``. Callers that iterate over data sets catch :class:`MediaError` (the base
of the media errors), report the file once and skip it.
"""

from __future__ import annotations

from os import PathLike


class AVVSRError(Exception):
    """Base class of every error raised on purpose by avvsr."""


class MediaError(AVVSRError):
    """A media file cannot be used; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str | PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


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


class ClipTooShortError(MediaError):
    """The video has fewer frames than the clip length a data set asks for."""


class DatasetError(AVVSRError):
    """A data set as a whole is unusable (for example, no usable file at all)."""


class WeightsError(MediaError):
    """A weights or checkpoint file cannot be loaded into the model."""


class ConversionError(WeightsError):
    """A published checkpoint (BasicSR, mmagic, SPyNet) cannot be converted to an avvsr
    backbone: unknown network, keys that cannot be placed or are missing, shapes that differ."""
