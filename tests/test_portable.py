"""llamakit/portable.py's fallbacks, and a scan proving no Linux-only call is left unguarded.

The scan reads every module of llamakit/ and benchmarks/ (AST, nothing imported) for the names
macOS lacks or reads differently, and accepts each use only where its fallback is visible:
  * in the modules whose job is these calls (llamakit/portable.py, llamakit/convert/_libc.py);
  * inside `try:` whose handlers catch what the platform raises (AttributeError for a missing
    os/mmap attribute, OSError for a missing /proc or /sys file);
  * under an `if`/`while`/conditional whose test checks that very name (hasattr(os, "NAME"),
    or a variable or attribute the module assigns from that hasattr) or sys.platform, or after an
    `if not hasattr(os, "NAME"): raise/return` at the top of the same function.
`ru_maxrss` (its unit differs, it never raises) is accepted only in portable.py.
"""

from __future__ import annotations

import ast
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llamakit import portable

REPO = Path(__file__).resolve().parents[1]

# os/mmap attributes that macOS's Python lacks (Linux has them); prefixes end in "_". (preadv, pwritev
# and sendfile are not here: CPython has them on macOS too.)
LINUX_ONLY = {
    "os": {"fdatasync", "sched_", "posix_fadvise", "posix_fallocate", "POSIX_FADV_", "copy_file_range", "splice",
           "memfd_create", "O_DIRECT", "O_TMPFILE", "O_NOATIME", "O_PATH", "pidfd_open", "eventfd", "pipe2",
           "getxattr", "setxattr", "listxattr", "removexattr", "RWF_", "SPLICE_", "MFD_", "EFD_"},
    "mmap": {"MADV_POPULATE_", "MADV_HUGEPAGE", "MADV_DONTDUMP", "MAP_POPULATE"},
    "signal": {"SIGRTMIN", "SIGRTMAX", "SIGPWR", "SIGSTKFLT"},
}
LINUX_PATHS = ("/proc/", "/proc", "/sys/", "/dev/shm")
# A constant exists exactly where its function does: a guard of the function covers it.
COMPANION = {"POSIX_FADV_": "posix_fadvise", "SPLICE_": "splice", "MFD_": "memfd_create", "EFD_": "eventfd"}
HELPERS = {"llamakit/portable.py", "llamakit/convert/_libc.py"}
# Known unguarded uses waiting for a fix (none left: provenance's timer reads ru_maxrss through portable).
PENDING: set = set()


def _linux_only(module: str, attr: str) -> bool:
    return any(attr == n or (n.endswith("_") and attr.startswith(n)) for n in LINUX_ONLY.get(module, ()))


def _catches(handler: ast.ExceptHandler, names: set[str]) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in names | {"Exception", "BaseException"} for t in types)


def _hasattr_names(node: ast.AST) -> set[str]:
    """The attribute names `node` tests with hasattr(x, "NAME") / getattr(x, "NAME", default)."""
    out = set()
    for n in ast.walk(node):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("hasattr", "getattr")
                and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str)):
            out.add(n.args[1].value)
    return out


def _refs(node: ast.AST) -> set[str]:
    """Names and attribute names (`flag`, `self._kernel` -> `_kernel`) an expression reads."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
    return out


def scan(source: str, rel: str) -> list[tuple[str, int, str]]:
    """(file, line, name) of every Linux-only use in `source` that has no visible fallback."""
    tree = ast.parse(source)
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    # flag = hasattr(os, "X") / self._flag = hasattr(os, "X") and ...: the flag guards X
    flags: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and (names := _hasattr_names(node.value)):
            for target in node.targets:
                key = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
                if key:
                    flags.setdefault(key, set()).update(names)

    def guarded(node: ast.AST, name: str, raises: set[str]) -> bool:
        names = {name} | {f for prefix, f in COMPANION.items() if name.startswith(prefix)}
        child, parent = node, parents.get(node)
        while parent is not None:
            if isinstance(parent, ast.Try) and child in parent.body and any(_catches(h, raises) for h in parent.handlers):
                return True
            if isinstance(parent, (ast.If, ast.While, ast.IfExp)) and child is not parent.test:
                tested = _hasattr_names(parent.test) | {n for r in _refs(parent.test) for n in flags.get(r, ())}
                if names & tested or "platform" in _refs(parent.test):
                    return True
            if isinstance(parent, ast.BoolOp) and child is not parent.values[0]:
                earlier = parent.values[: parent.values.index(child)]
                if any(names & _hasattr_names(v) for v in earlier):
                    return True
            if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) and child in parent.body:
                for stmt in parent.body[: parent.body.index(child)]:  # an early exit when the name is missing
                    if (isinstance(stmt, ast.If) and names & _hasattr_names(stmt.test)
                            and isinstance(stmt.body[-1], (ast.Raise, ast.Return))):
                        return True
            child, parent = parent, parents.get(parent)
        return False

    found = []
    helper = rel in HELPERS
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr == "ru_maxrss" and rel != "llamakit/portable.py":
                found.append((rel, node.lineno, "ru_maxrss"))
            elif (isinstance(node.value, ast.Name) and _linux_only(node.value.id, node.attr) and not helper
                  and not guarded(node, node.attr, {"AttributeError"})):
                found.append((rel, node.lineno, f"{node.value.id}.{node.attr}"))
            elif (isinstance(node.value, ast.Name) and node.value.id == "ctypes" and node.attr in ("CDLL", "cdll")
                  and not helper):
                found.append((rel, node.lineno, "ctypes.CDLL"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and not helper:
            if any(node.value.startswith(p) for p in LINUX_PATHS) and not isinstance(parents.get(node), ast.Expr):
                if not guarded(node, node.value, {"OSError", "FileNotFoundError", "IOError"}):
                    found.append((rel, node.lineno, node.value))
    return found


def _sources():
    for top in ("llamakit", "benchmarks"):
        for path in sorted((REPO / top).rglob("*.py")):
            yield path.relative_to(REPO).as_posix(), path.read_text()


def test_no_linux_only_call_is_left_unguarded():
    found = [hit for rel, text in _sources() for hit in scan(text, rel)]
    unguarded = [hit for hit in found if hit[::2] not in PENDING]
    assert unguarded == [], "Linux-only calls without a fallback (use llamakit/portable.py or guard them):\n" + "\n".join(
        f"  {f}:{line}: {name}" for f, line, name in unguarded)
    assert {hit[::2] for hit in found} == PENDING, "a PENDING use was fixed: remove it from tests/test_portable.py"


@pytest.mark.parametrize("code, hit", [
    ("os.fdatasync(fd)", "os.fdatasync"),
    ("n = len(os.sched_getaffinity(0))", "os.sched_getaffinity"),
    ("os.posix_fadvise(fd, 0, 0, 4)", "os.posix_fadvise"),
    ("try:\n    os.fdatasync(fd)\nexcept OSError:\n    pass", "os.fdatasync"),  # OSError is not what macOS raises
    ("if hasattr(os, 'splice'):\n    os.fdatasync(fd)", "os.fdatasync"),  # a guard of another name
    ("def f(fd):\n    if not hasattr(os, 'fdatasync'):\n        print('no')\n    os.fdatasync(fd)", "os.fdatasync"),
    ("text = open('/proc/meminfo').read()", "/proc/meminfo"),
    ("peak = usage.ru_maxrss * 1024", "ru_maxrss"),
    ("try:\n    peak = usage.ru_maxrss\nexcept AttributeError:\n    peak = 0", "ru_maxrss"),  # a unit is no exception
    ("lib = ctypes.CDLL(None)", "ctypes.CDLL"),
])
def test_the_scan_catches_an_unguarded_use(code, hit):
    assert [name for _, _, name in scan(code, "llamakit/x.py")] == [hit]


@pytest.mark.parametrize("code", [
    "try:\n    os.fdatasync(fd)\nexcept AttributeError:\n    os.fsync(fd)",
    "try:\n    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)\nexcept (AttributeError, OSError):\n    pass",
    "if hasattr(os, 'fdatasync'):\n    os.fdatasync(fd)",
    "ok = hasattr(os, 'copy_file_range')\nif ok:\n    os.copy_file_range(a, b, n)",
    "class C:\n    def __init__(self):\n        self._k = hasattr(os, 'copy_file_range')\n"
    "    def f(self):\n        if self._k:\n            os.copy_file_range(1, 2, 3)",
    "if sys.platform.startswith('linux'):\n    os.fdatasync(fd)",
    "def f(fd):\n    if not hasattr(os, 'fdatasync'):\n        raise SystemExit('no')\n    os.fdatasync(fd)",
    "try:\n    text = open('/proc/cpuinfo').read()\nexcept OSError:\n    text = ''",
])
def test_the_scan_accepts_a_guarded_use(code):
    assert scan(code, "llamakit/x.py") == []


def test_helpers_may_hold_the_calls():
    assert scan("peak = usage.ru_maxrss", "llamakit/portable.py") == []
    assert scan("lib = ctypes.CDLL(None)", "llamakit/convert/_libc.py") == []


# --- the helpers' fallbacks ---------------------------------------------------------------


def _recording(monkeypatch, name: str) -> list[int]:
    """Wrap the real os.NAME so calls are counted (the call still reaches the kernel)."""
    calls: list[int] = []
    real = getattr(os, name)
    monkeypatch.setattr(os, name, lambda fd: (calls.append(fd), real(fd))[1])
    return calls


def test_fdatasync_uses_fdatasync_where_the_os_has_it(tmp_path, monkeypatch):
    if not hasattr(os, "fdatasync"):
        pytest.skip("this OS has no fdatasync (the fallback test covers it)")
    data, full = _recording(monkeypatch, "fdatasync"), _recording(monkeypatch, "fsync")
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x")
        f.flush()
        portable.fdatasync(f.fileno())
        assert data == [f.fileno()] and full == []


def test_fdatasync_falls_back_to_fsync_without_it(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "fdatasync", raising=False)  # the platform macOS is, not our code
    full = _recording(monkeypatch, "fsync")
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x")
        f.flush()
        portable.fdatasync(f.fileno())
        assert full == [f.fileno()]


def test_a_download_part_checkpoints_without_fdatasync(tmp_path, monkeypatch):
    """fetch's resumable part file, on an OS without fdatasync: records are written, each after an fsync."""
    from llamakit.fetch._part import PartFile

    monkeypatch.delattr(os, "fdatasync", raising=False)
    full = _recording(monkeypatch, "fsync")
    part = PartFile(tmp_path, "model.bin", identity={"rev": "r"}, size=3 * 1024, algos=("sha256",), chunk=1024)
    part.open()
    for _ in range(3):
        part.write(b"a" * 1024)
    part.checkpoint()
    part.close()
    assert full, "no fsync reached the kernel"
    resumed = PartFile(tmp_path, "model.bin", identity={"rev": "r"}, size=3 * 1024, algos=("sha256",), chunk=1024)
    assert resumed.open() == 3 * 1024  # every written byte is covered by a record and kept
    resumed.close()


class _Usage:
    def __init__(self, ru_maxrss: int):
        self.ru_maxrss = ru_maxrss


@pytest.mark.parametrize("platform, expected", [("linux", 1000 * 1024), ("darwin", 1000), ("freebsd14", 1000 * 1024)])
def test_peak_rss_units_per_kernel(platform, expected):
    assert portable.peak_rss_bytes(_Usage(1000), platform) == expected


def test_peak_rss_bytes_of_a_real_process():
    """A grandchild that touches 128 MiB reports a peak between 128 MiB and 1 GiB in this OS's unit (a
    wrong scale is off by 1024x either way). Measured as a small child's RUSAGE_CHILDREN: Linux carries
    a forked process's peak across exec, so a child forked straight from this (large) test process
    would report this process's RSS instead."""
    grandchild = "block = bytearray(128 << 20)\nfor i in range(0, len(block), 4096):\n    block[i] = 1\n"
    code = textwrap.dedent(f"""
        import resource, subprocess, sys
        from llamakit.portable import peak_rss_bytes
        subprocess.run([sys.executable, "-c", {grandchild!r}], check=True)
        print(peak_rss_bytes(resource.getrusage(resource.RUSAGE_CHILDREN)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    peak = int(out.stdout)
    assert 128 << 20 <= peak < 1 << 30, peak
    # this process's own figure is in the same unit: at least what the interpreter alone maps
    assert portable.peak_rss_bytes(resource.getrusage(resource.RUSAGE_SELF)) > 10 << 20


def test_hashing_for_verify_and_fetch_without_fadvise_or_affinity(tmp_path, monkeypatch):
    """verify's and fetch's hashing on a Python without posix_fadvise and sched_getaffinity (macOS)."""
    import hashlib

    from llamakit.fetch import _hashing

    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    files = []
    for i in range(3):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(100_000 + i))
        files.append(p)
    assert _hashing.default_workers() == (os.cpu_count() or 1)
    results = _hashing.hash_files([(p, ("sha256",)) for p in files])
    assert results == [(p.stat().st_size, {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()}) for p in files]
