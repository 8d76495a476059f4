"""Meta → HF conversion on a Python that lacks Linux's calls (as macOS's does): the same bytes.

The second run's interpreter has no os.copy_file_range, os.fdatasync, os.posix_fadvise or
os.sched_getaffinity, and convert/_libc.py decides with sys.platform "darwin" (only for that
moment: the rest of the interpreter needs its real platform), so the span copier must take
pread/pwrite and libc's madvise/sync_file_range are skipped: the platform is changed, not llamakit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from convert_helpers import write_meta_checkpoint

REPO = Path(__file__).resolve().parents[2]

_WITHOUT_LINUX = """
import os, sys
import torch  # noqa: F401  (loaded as on Linux; only what llamakit sees changes below)
for name in ("copy_file_range", "fdatasync", "posix_fadvise", "sched_getaffinity", "posix_fallocate"):
    if hasattr(os, name):
        delattr(os, name)
from llamakit.convert import _libc
linux, sys.platform = sys.platform, "darwin"  # only while _libc decides (and caches) that there is no libc
assert _libc.libc() is None
sys.platform = linux
sys.argv = ["llamakit", *sys.argv[1:]]
from llamakit.cli import main
main()
"""


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_conversion_without_linux_calls_writes_the_same_bytes(tmp_path):
    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 2)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    args = ["--no-check", "--max-shard-size", "40KB"]
    linux, other = tmp_path / "linux", tmp_path / "other"
    subprocess.run([sys.executable, "-m", "llamakit", "convert", str(src), str(linux), *args], check=True, env=env,
                   capture_output=True)
    p = subprocess.run([sys.executable, "-c", _WITHOUT_LINUX, "convert", str(src), str(other), *args], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    ours, theirs = _files(linux), _files(other)
    assert len(ours) > 2 and ours == theirs
