"""avvsr.atomic: files and folders appear under their name only when complete."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from avvsr.atomic import atomic_write, partial_path, remove_stale_partials


def test_partial_name_is_hidden_unique_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "video.final.mkv"
    first, second = partial_path(target), partial_path(target)
    assert first != second and first.parent == tmp_path
    assert first.name.startswith(f".video.final.{os.getpid()}-")
    assert first.name.endswith(".partial.mkv") and first.suffix == ".mkv"


def test_atomic_write_renames_on_success_and_deletes_on_error(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("failed mid-way")
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    with atomic_write(target) as temporary:
        temporary.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not replaced before the block ends
    assert target.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [target]


def test_atomic_folder(tmp_path):
    target = tmp_path / "entry"
    with pytest.raises(KeyboardInterrupt), atomic_write(target, folder=True) as temporary:
        (temporary / "a.npy").write_bytes(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target, folder=True) as temporary:
        (temporary / "a.npy").write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
    assert (target / "a.npy").read_bytes() == b"x"


def test_stale_partials_of_dead_processes_only_are_removed(tmp_path):
    target = tmp_path / "out.mp4"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    host = socket.gethostname()
    names = {
        "dead": f".out.{dead}-0123abcd@{host}.partial.mp4",
        "dead folder": f".out.{dead}-4567abcd@{host}.partial.mp4",
        "alive": f".out.{os.getpid()}-89abcdef@{host}.partial.mp4",
        "other host": f".out.{dead}-0123abcd@not-{host}.partial.mp4",
        "other target": f".other.{dead}-0123abcd@{host}.partial.mp4",
        "not ours": ".out.partial.mp4",
    }
    for key, name in names.items():
        if key == "dead folder":
            (tmp_path / name).mkdir()
            (tmp_path / name / "inside").write_text("x")
        else:
            (tmp_path / name).write_text("x")
    removed = remove_stale_partials(target)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["dead folder"]])
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {names[key] for key in ("alive", "other host", "other target", "not ours")}
