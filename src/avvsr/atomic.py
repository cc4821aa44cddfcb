"""Atomic writes: an output appears under its name only when complete.

Every file the suite writes for a user (videos, exports, figures, run records) is written to a
hidden temporary name in the target's folder, unique to the writer (process id and a random
part, so two writers never share one), with the target's suffix (so FFmpeg and PIL pick the
same format), and renamed into place with :func:`os.replace` when complete; on an error the
temporary file is deleted and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avvsr.errors import OutputExistsError

PARTIAL_MARKER = ".partial"


def temporary_path(target: Path) -> Path:
    """A hidden, writer-unique name next to ``target`` with the same suffix."""
    unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return target.with_name(f".{target.stem}.{unique}{PARTIAL_MARKER}{target.suffix}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write ``target`` to; rename it into place on a clean exit,
    delete it on an exception (the target is then untouched)."""
    target = Path(target)
    temporary = temporary_path(target)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path``, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented, key-sorted JSON to ``path``, atomically."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Raise :class:`~avvsr.errors.OutputExistsError` when ``path`` exists and ``overwrite``
    is false."""
    if path.exists() and not overwrite:
        raise OutputExistsError(path, "exists already (pass --overwrite to replace it)")
