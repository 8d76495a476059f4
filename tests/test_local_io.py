"""LocalIOError: one typed error (exit 4) for a local read/write that failed, naming the path and, for a
full disk, the free space left there."""

from __future__ import annotations

import errno
import os

import pytest

from llamakit import atomic
from llamakit.errors import DiskFullError, LocalIOError


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_real_enospc_names_the_path_and_the_free_space(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(LocalIOError) as ei:
        with atomic.local_io(dest):
            with open("/dev/full", "wb", buffering=0) as f:  # the kernel answers every write with ENOSPC
                f.write(b"x")
    e = ei.value
    assert e.exit_code == 4 and e.errno == errno.ENOSPC
    line = e.one_line()
    assert line.startswith(f"{dest}: out of disk space while writing") and "GB free there" in line, line


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
                                         (errno.ENOTDIR, "is a file, not a directory"), (errno.EDQUOT, "out of disk space")])
def test_each_cause_reads_as_what_it_is(tmp_path, code, words):
    e = LocalIOError.from_os(OSError(code, os.strerror(code)), tmp_path / "x")
    assert e.exit_code == 4 and words in e.one_line() and str(tmp_path / "x") in e.one_line()


def test_fetchs_disk_full_error_is_a_local_io_error(tmp_path):
    e = DiskFullError(tmp_path / "f", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(e, LocalIOError) and e.exit_code == 4 and "free there" in e.one_line()
    assert "partial download is kept" in e.one_line()


def test_other_exceptions_pass_through(tmp_path):
    with pytest.raises(ValueError):
        with atomic.local_io(tmp_path):
            raise ValueError("not I/O")
