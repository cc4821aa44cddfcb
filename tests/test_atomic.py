"""avvsr.atomic: files and folders appear under their name only when complete."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from avvsr.atomic import (
    atomic_write,
    discard,
    partial_path,
    remove_stale_partials,
    remove_stale_partials_in,
)


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


def make_partials(folder):
    """Partial names in ``folder`` (files, one folder) of writers dead and alive, on this host
    and another, of ``out.mp4`` and of other targets: ``{what: path}``."""
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    host = socket.gethostname()
    names = {
        "dead": f".out.{dead}-0123abcd@{host}.partial.mp4",
        "dead folder": f".out.{dead}-4567abcd@{host}.partial.mp4",
        "alive": f".out.{os.getpid()}-89abcdef@{host}.partial.mp4",
        "other host": f".out.{dead}-0123abcd@not-{host}.partial.mp4",
        "other target": f".other.{dead}-0123abcd@{host}.partial.mp4",
        "other suffix": f".out.{dead}-0123abcd@{host}.partial.mkv",
        "other target folder": f".entry.{dead}-0123abcd@{host}.partial",
        "not ours": ".out.partial.mp4",
    }
    paths = {key: folder / name for key, name in names.items()}
    for key, path in paths.items():
        if "folder" in key:
            path.mkdir()
            (path / "inside").write_text("x")
        else:
            path.write_text("x")
    return paths


def test_stale_partials_of_dead_processes_only_are_removed(tmp_path):
    partials = make_partials(tmp_path)
    removed = remove_stale_partials(tmp_path / "out.mp4")
    assert sorted(removed) == sorted([partials["dead"], partials["dead folder"]])
    assert set(tmp_path.iterdir()) == {path for key, path in partials.items()
                                       if key not in ("dead", "dead folder")}


def test_a_folder_sweep_removes_the_stale_partials_of_every_target(tmp_path):
    partials = make_partials(tmp_path)
    kept = ("alive", "other host", "not ours")
    removed = remove_stale_partials_in(tmp_path)
    assert sorted(removed) == sorted(path for key, path in partials.items() if key not in kept)
    assert set(tmp_path.iterdir()) == {partials[key] for key in kept}


def test_a_folder_replaces_the_folder_at_its_target_whole(tmp_path):
    target = tmp_path / "set"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_write(target, folder=True) as temporary:
        (temporary / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # not replaced before the block ends
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_keep_existing_keeps_the_folder_another_writer_renamed_in_first(tmp_path):
    target = tmp_path / "entry"
    with atomic_write(target, folder=True, keep_existing=True) as temporary:
        (temporary / "ours.npy").write_text("ours")
        with atomic_write(target, folder=True, keep_existing=True) as other:
            (other / "theirs.npy").write_text("theirs")
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
    assert [p.name for p in target.iterdir()] == ["theirs.npy"]
    with pytest.raises(ValueError, match="folders"), atomic_write(tmp_path / "f",
                                                                  keep_existing=True):
        pass


def test_discard_deletes_a_file_or_folder_and_ignores_a_missing_one(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "inside").write_text("x")
    (tmp_path / "file").write_text("x")
    for name in ("folder", "file", "absent"):
        discard(tmp_path / name)
    assert list(tmp_path.iterdir()) == []
