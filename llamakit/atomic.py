"""Atomic writes: a file or a whole output directory is built under a temporary sibling, then renamed.

A reader (DVC, the next stage, a person, a resumed download) sees the previous complete file or
directory or the new complete one, never a half-written mix. The sibling lives in the same parent
so the final rename stays on one filesystem and is atomic. Files are fsynced before the rename
unless the caller says the content is cheap to lose (resume bookkeeping).
(llamakit/convert/output.py keeps its own staging for converted models: it must also survive a
SIGKILL between two renames and sweep what dead runs left.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from llamakit.errors import LocalIOError, UsageError

_UMASK = os.umask(0o022)  # read once at import (reading it means setting it), before any threads start
os.umask(_UMASK)


@contextlib.contextmanager
def local_io(path: str | Path, *, fix: str | None = None) -> Iterator[None]:
    """Turn an OSError raised inside the block into a LocalIOError (exit 4) naming `path` (the
    destination the user chose, not the temporary name being written) and, for a full disk, the free
    space there: a write that failed is this machine's problem, not a failed check (exit 1) or a bad
    input (exit 2). Blocks that read inputs turn their read errors into InputFileError first."""
    try:
        yield
    except OSError as exc:
        raise LocalIOError.from_os(exc, path, fix=fix) from exc


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write `data` to a temporary sibling of `path` (fsynced), then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes it 0600; the result should look like any file
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_json(path: str | Path, obj, *, fsync: bool = True) -> Path:
    return write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"), fsync=fsync)


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, marker: str) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `out`.

    An existing `out` is replaced only when it is empty or holds `marker` (a file this stage
    writes), so a mistyped --out never deletes someone's unrelated directory.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise UsageError("output path exists and is not a directory", path=out, fix="choose another --out")
        if any(out.iterdir()) and not (out / marker).exists():
            raise UsageError(
                f"output directory is not empty and has no {marker} from a previous run",
                path=out,
                fix="choose an empty or new --out, or delete it yourself",
            )
    with local_io(out):  # a read-only parent, a file in the way, a full disk: exit 4 naming --out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes it 0700; the published dir should look like any other
            yield tmp
            replace_dir(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: str | Path, out: str | Path) -> Path:
    """Put the finished directory `tmp` in place of `out` (a sibling of it): the old `out` is renamed
    aside first and removed only after the new one is in, so `out` is always one whole directory."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)  # a dead run's leftover under the same pid
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
