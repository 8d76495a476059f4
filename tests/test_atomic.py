"""llamakit.atomic: a file or a directory appears complete or not at all; a failure leaves the previous one."""

from __future__ import annotations

import json
import os
import stat

import pytest

from llamakit import atomic
from llamakit.atomic import atomic_dir
from llamakit.errors import UsageError


def test_failure_midway_keeps_the_previous_output_and_leaves_no_temp(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, marker="done") as tmp:
        (tmp / "done").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, marker="done") as tmp:
            (tmp / "done").write_text("2")
            (tmp / "half").write_text("partial")
            raise RuntimeError("killed while writing")
    assert sorted(p.name for p in out.iterdir()) == ["done"] and (out / "done").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_success_replaces_and_refuses_foreign_dirs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty directory (e.g. left by DVC) is fine
    for v in ("1", "2"):
        with atomic_dir(out, marker="done") as tmp:
            (tmp / "done").write_text(v)
    assert (out / "done").read_text() == "2" and [p.name for p in tmp_path.iterdir()] == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        with atomic_dir(tmp_path / "file", marker="done"):
            pass


@pytest.mark.parametrize("fsync", [True, False])
def test_a_file_is_replaced_whole_with_the_usual_mode(tmp_path, fsync):
    path = tmp_path / "sub" / "state.json"
    atomic.write_json(path, {"a": 1}, fsync=fsync)  # the parent is created
    atomic.write_text(path, "two\n", fsync=fsync)
    assert path.read_text() == "two\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~atomic._UMASK  # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]
    assert json.loads(atomic.write_json(tmp_path / "j.json", [1, 2]).read_text()) == [1, 2]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic.write_text(path, "old")

    def no_space(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        atomic.write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_replace_dir_swaps_whole_directories_and_leaves_nothing_beside(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    stale = tmp_path / f".model.old-{os.getpid()}"  # what a killed run with this pid left
    stale.mkdir()
    (stale / "x").write_bytes(b"x")
    new = tmp_path / ".tmp-model"
    new.mkdir()
    (new / "new.bin").write_bytes(b"new")
    assert atomic.replace_dir(new, out) == out
    assert sorted(p.name for p in out.iterdir()) == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    fresh = tmp_path / ".tmp-2"
    fresh.mkdir()
    atomic.replace_dir(fresh, tmp_path / "absent")  # nothing to move aside
    assert (tmp_path / "absent").is_dir() and not fresh.exists()
