"""Write a file (or a folder) under a temporary name and rename it into place when complete.

:func:`atomic_write` yields a hidden path next to the target, ``.<stem>.<pid>-<random>@<host>
.partial<suffix>``: in the same folder (so :func:`os.replace` is a rename on one file system),
with the target's suffix (so FFmpeg picks the same muxer from the name), unique per process and
call. Leaving the block normally renames it onto the target; an exception, Ctrl-C (SIGINT) or
SIGTERM deletes it. SIGTERM's default action would end the process without unwinding, so while
a block runs in the main thread a SIGTERM raises :class:`Interrupted` instead (a
:class:`KeyboardInterrupt`, so ``except Exception`` does not swallow it). A folder that is
already at the target is replaced whole, or, for content any writer builds the same (a cache
entry written by several processes at once), kept.

:func:`remove_stale_partials` deletes the partial names next to a target whose writer, a
process on this host, no longer runs (killed with SIGKILL, or a crash of the interpreter);
:func:`remove_stale_partials_in` those of every target in a folder, as
:class:`avvsr.data.cache.DecodeCache` does when it is opened. :func:`discard` deletes a file or
folder so that readers see it gone at once (renamed to a partial name first).
"""

from __future__ import annotations

import contextlib
import errno
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
# A partial name, ``.<stem>.<pid>-<8 hex>@<host>.partial<suffix>`` (host names hold no "@").
_PARTIAL_NAME = re.compile(
    rf"\.(?P<stem>.*)\.(?P<pid>\d+)-[0-9a-f]{{8}}@(?P<host>[^@]*){re.escape(PARTIAL_MARKER)}"
    r"(?P<suffix>.*)",
    re.DOTALL,
)


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


def _stale(candidate: Path) -> re.Match[str] | None:
    """The parsed partial name of ``candidate`` if its writer was a process of this host that
    no longer runs, else None (a live writer, another host's, not a partial name)."""
    match = _PARTIAL_NAME.fullmatch(candidate.name)
    if match and match["host"] == this_host() and not process_alive(int(match["pid"])):
        return match
    return None


def remove_stale_partials(target: str | os.PathLike[str]) -> list[Path]:
    """Delete the partial names of ``target`` (:func:`partial_path`) left by processes on this
    host that no longer run; returns what was deleted. Those of live processes, of other hosts
    and names that do not parse are left alone."""
    target = Path(target)
    pattern = f".{glob.escape(target.stem)}.*{PARTIAL_MARKER}{glob.escape(target.suffix)}"
    removed = []
    for candidate in target.parent.glob(pattern):
        match = _stale(candidate)
        if match and (match["stem"], match["suffix"]) == (target.stem, target.suffix):
            _delete(candidate)
            removed.append(candidate)
    return removed


def remove_stale_partials_in(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the partial names of every target in ``folder`` that :func:`remove_stale_partials`
    would (one listing of the folder for all of them); returns what was deleted."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for candidate in Path(folder).iterdir():
            if _stale(candidate):
                _delete(candidate)
                removed.append(candidate)
    return removed


def discard(path: str | os.PathLike[str]) -> None:
    """Delete the file or folder ``path`` (nothing when absent): renamed to a partial name
    first, so readers see it gone at once and what a crash leaves is a stale partial."""
    path = Path(path)
    aside = partial_path(path)
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    _delete(aside)


def _publish_folder(temporary: Path, target: Path, keep_existing: bool) -> None:
    """Rename the complete folder ``temporary`` onto ``target``: an existing target is kept
    (``keep_existing``; ``temporary`` is left for the caller to delete) or replaced."""
    if keep_existing:
        try:
            os.replace(temporary, target)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        return
    if not os.path.lexists(target):
        os.replace(temporary, target)
        return
    # A folder is renamed only onto an empty folder: move the old target aside first, and put
    # it back if the new one cannot take its place.
    aside = partial_path(target)
    os.replace(target, aside)
    try:
        os.replace(temporary, target)
    except BaseException:
        os.replace(aside, target)
        raise
    _delete(aside)


@contextlib.contextmanager
def atomic_write(
    target: str | os.PathLike[str],
    *,
    folder: bool = False,
    keep_existing: bool = False,
    remove_stale: bool = True,
) -> Iterator[Path]:
    """Yield a temporary path (:func:`partial_path`) to write ``target`` under; on a normal
    exit rename it onto ``target``, on an exception or SIGINT/SIGTERM delete it.

    An existing file at ``target`` is replaced (:func:`os.replace`). ``folder=True`` creates
    the temporary path as an empty folder; a file or folder already at ``target`` when the
    block ends is replaced whole (moved aside, then deleted), or with ``keep_existing`` kept
    and ours deleted: for content that every writer builds the same, when another one may
    finish first. Stale partial names of ``target`` (:func:`remove_stale_partials`) are
    deleted first unless ``remove_stale`` is false (for a caller that sweeps the folder
    itself, :func:`remove_stale_partials_in`, rather than listing it on every write). The
    target's folder must exist.
    """
    if keep_existing and not folder:
        raise ValueError("keep_existing applies to folders (a file is replaced)")
    target = Path(target)
    if remove_stale:
        remove_stale_partials(target)
    temporary = partial_path(target)
    with terminate_raises():
        try:
            if folder:
                temporary.mkdir()
            yield temporary
            if folder:
                _publish_folder(temporary, target, keep_existing)
            else:
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
