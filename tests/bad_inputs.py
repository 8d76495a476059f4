"""The bad-input tables (tests/**/test_bad_inputs_*.py): one row per input a hostile or careless user
can give a command, run through the real CLI in a subprocess, each checked the same way:

  * the documented exit code (README's table: 1 check failed, 2 bad input, 3 remote, 4 local I/O,
    130 interrupted);
  * exactly one line on stderr, no traceback, holding the row's fragment (which names the file or
    the fix);
  * nothing written: the row's destination is absent afterwards (or, when it existed, unchanged),
    and no temporary sibling (`.DST.partial-*`, `.DST.tmp-*`, ...) is left beside it.

Rows can also run the command on a read-only destination (`readonly`), under a file-size limit
(`fsize`: writes fail with EFBIG, as on a full disk), or deliver Ctrl-C when a given module is
first imported (`interrupt_on`), which lands the interrupt at a chosen moment, every time.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest


@dataclass
class Row:
    id: str
    argv: list[str]  # after `llamakit`; "{tmp}" becomes the test's tmp_path
    code: int
    fragment: str
    dest: str  # relative to tmp_path: where the command would write
    setup: Optional[Callable[[Path], None]] = None
    env: dict = field(default_factory=dict)
    readonly: Optional[str] = None  # a directory (relative to tmp_path) made read-only for the run
    fsize: Optional[int] = None  # RLIMIT_FSIZE in bytes
    interrupt_on: Optional[str] = None  # SIGINT when this module is first imported
    timeout: float = 900.0  # generous: CI machines under load; a row normally takes seconds

    def __str__(self) -> str:
        return self.id


_BOOT = """\
import os, signal, sys
target = os.environ.pop("LLAMAKIT_TEST_INTERRUPT_ON", "")
if target:
    class _Hook:
        def find_spec(self, name, path=None, target_=None):
            if name == target and not getattr(self, "fired", False):
                self.fired = True
                os.kill(os.getpid(), signal.SIGINT)  # handled by the main thread at its next instruction
            return None
    sys.meta_path.insert(0, _Hook())
sys.argv = ["llamakit", *sys.argv[1:]]
from llamakit.cli import main
main()
"""


def _drop_dac_override() -> bool:
    """As root, chmod does not stop writes; drop CAP_DAC_OVERRIDE (and read-search) from the bounding set
    so the exec'd child is held to the permission bits like any user."""
    PR_CAPBSET_DROP = 24
    return all(_LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 for cap in (1, 2))  # DAC_OVERRIDE, DAC_READ_SEARCH


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child (dlopen after fork can deadlock)


def _preexec(row: Row):
    def apply():
        import resource
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job would inherit it ignored
        if row.fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of being killed
            resource.setrlimit(resource.RLIMIT_FSIZE, (row.fsize, row.fsize))
        if row.readonly is not None and os.geteuid() == 0 and not _drop_dac_override():
            os._exit(97)
    return apply


def tree(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(path.rglob("*"))}


def run_row(row: Row, tmp_path: Path) -> tuple[int, str]:
    if row.setup is not None:
        row.setup(tmp_path)
    dest = tmp_path / row.dest
    existed, before = dest.exists(), tree(dest)
    siblings_before = set(os.listdir(dest.parent)) if dest.parent.is_dir() else set()
    ro = tmp_path / row.readonly if row.readonly else None
    if ro is not None:
        ro.mkdir(parents=True, exist_ok=True)
        ro.chmod(0o555)
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMAKIT_DEBUG", "COLUMNS")}
    env.update({k: v.replace("{tmp}", str(tmp_path)) for k, v in row.env.items()})
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if row.interrupt_on:
        env["LLAMAKIT_TEST_INTERRUPT_ON"] = row.interrupt_on
    argv = [a.replace("{tmp}", str(tmp_path)) for a in row.argv]
    try:
        p = subprocess.run([sys.executable, "-c", _BOOT, *argv], capture_output=True, text=True, env=env,
                           timeout=row.timeout, cwd=tmp_path, preexec_fn=_preexec(row))
    finally:
        if ro is not None:
            ro.chmod(0o755)
    if p.returncode == 97:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here: a read-only directory is writable for this root")
    err = p.stderr
    # --- the checks every row shares
    assert p.returncode == row.code, f"exit {p.returncode}, want {row.code}: {err[-2000:]}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, f"want one line on stderr, got: {err[-2000:]}"
    assert row.fragment in lines[0], f"{row.fragment!r} not in {lines[0]!r}"
    if existed:
        assert tree(dest) == before, f"{dest} changed"
    else:
        assert not dest.exists(), f"{dest} was written: {sorted(tree(dest))[:10]}"
    if dest.parent.is_dir():
        left = set(os.listdir(dest.parent)) - siblings_before
        assert not [n for n in left if dest.name in n], f"temporary leftovers beside {dest}: {sorted(left)}"
    return p.returncode, lines[0]
