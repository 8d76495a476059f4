"""atomic_dir: a directory appears complete or not at all; a failure leaves the previous one."""

from __future__ import annotations

import pytest

from llamakit.data.atomic import atomic_dir
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
