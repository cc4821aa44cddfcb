"""Write a file (or a folder) under a temporary name and rename it into place when complete.

:func:`atomic_write` yields a hidden path next to the target, ``.<stem>.<pid>-<random>@<host>
.partial<suffix>``: in the same folder (so :func:`os.replace` is a rename on one file system),
with the target's suffix (so FFmpeg picks the same muxer from the name), unique per process and
call. Leaving the block normally renames it onto the target; an exception, Ctrl-C (SIGINT) or
SIGTERM deletes it. SIGTERM's default action would end the process without unwinding, so while
a block runs in the main thread a SIGTERM raises :class:`Interrupted` instead (a
:class:`KeyboardInterrupt`, so ``except Exception`` does not swallow it).

:func:`remove_stale_partials` deletes the partial names next to a target whose writer, a
process on this host, no longer runs (killed with SIGKILL, or a crash of the interpreter), as
:class:`avvsr.data.cache.DecodeCache` does for its temporary folders.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avvsr.errors import OutputExistsError

PARTIAL_MARKER = ".partial"


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGINT or SIGTERM); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def interrupt_signal(interrupt: KeyboardInterrupt) -> signal.Signals:
    """The signal behind ``interrupt``: SIGINT for a plain :class:`KeyboardInterrupt`."""
    return signal.Signals(getattr(interrupt, "signum", signal.SIGINT))


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """The shell's status for it, 128 + the signal number: 130 (SIGINT), 143 (SIGTERM)."""
    return 128 + interrupt_signal(interrupt)


def _raise_interrupted(signum: int, _frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Interrupted` in the main thread (so ``finally``
    blocks run) where it would otherwise end the process; elsewhere, or when a handler other
    than the default is installed, nothing changes."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def this_host() -> str:
    """This machine's name as temporary names carry it (no ``@``)."""
    return socket.gethostname().replace("@", "_")


def writer_tag() -> str:
    """A name part unique to this writer: ``<pid>-<8 hex>@<host>`` (what
    :func:`process_alive` and :func:`this_host` read back to find stale temporaries)."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}@{this_host()}"


def partial_path(target: str | os.PathLike[str]) -> Path:
    """A fresh hidden name next to ``target`` with its suffix, marked with this process's id
    and host: ``.<stem>.<pid>-<8 hex>@<host>.partial<suffix>``."""
    target = Path(target)
    return target.with_name(f".{target.stem}.{writer_tag()}{PARTIAL_MARKER}{target.suffix}")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_partials(target: str | os.PathLike[str]) -> list[Path]:
    """Delete the partial names of ``target`` (:func:`partial_path`) left by processes on this
    host that no longer run; returns what was deleted. Those of live processes, of other hosts
    and names that do not parse are left alone."""
    target = Path(target)
    pattern = f".{glob.escape(target.stem)}.*{PARTIAL_MARKER}{glob.escape(target.suffix)}"
    owner_pattern = re.compile(r"(\d+)-[0-9a-f]{8}@(.*)")
    removed = []
    for candidate in target.parent.glob(pattern):
        owner = candidate.name[len(target.stem) + 2 : -len(PARTIAL_MARKER + target.suffix)]
        match = owner_pattern.fullmatch(owner)
        if match and match[2] == this_host() and not process_alive(int(match[1])):
            _delete(candidate)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike[str], *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path (:func:`partial_path`) to write ``target`` under; on a normal
    exit rename it onto ``target`` (:func:`os.replace`: an existing file is replaced, a
    non-empty folder is not), on an exception or SIGINT/SIGTERM delete it.

    ``folder=True`` creates the temporary path as an empty folder. Stale partial names of
    ``target`` (:func:`remove_stale_partials`) are deleted first; the target's folder must
    exist.
    """
    target = Path(target)
    remove_stale_partials(target)
    temporary = partial_path(target)
    with terminate_raises():
        try:
            if folder:
                temporary.mkdir()
            yield temporary
            os.replace(temporary, target)
        finally:
            if os.path.lexists(temporary):
                _delete(temporary)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path``, atomically."""
    with atomic_write(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented, key-sorted JSON to ``path``, atomically."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Raise :class:`~avvsr.errors.OutputExistsError` when ``path`` exists and ``overwrite``
    is false."""
    if path.exists() and not overwrite:
        raise OutputExistsError(path, "exists already (pass --overwrite to replace it)")
