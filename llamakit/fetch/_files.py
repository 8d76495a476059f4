"""Destination safety and durability shared by every fetch source.

Everything llamakit keeps for itself lives under `DEST/.llamakit/` (partial
downloads, the destination lock, the record of verified files, the lock of what
was fetched), so a file under its final name is always a verified one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
from pathlib import Path

from llamakit import atomic
from llamakit.errors import DiskFullError, LocalIOError, UnsafePathError

STATE_DIR = ".llamakit"
# Trees that belong to tools, not to the release: never "extra", never fetched into.
IGNORED_DIRS = (STATE_DIR, ".cache", ".git", ".dvc")
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def safe_relpath(path: str, *, source: str | None = None) -> str:
    """A listing/lock path as a normalised relative POSIX path, or UnsafePathError.

    Refused: absolute paths, drive letters, backslashes, NUL, '..' anywhere, and
    anything that would land in llamakit's own state directory.
    """
    if not isinstance(path, str) or not path or "\0" in path or "\\" in path:
        raise UnsafePathError(repr(path), source=source)
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafePathError(path, source=source)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or parts[0] == STATE_DIR:
        raise UnsafePathError(path, source=source)
    return posixpath.join(*parts)


def safe_dest(root: Path, rel: str, *, source: str | None = None) -> Path:
    """`root/rel`, refusing any symlink on the way that points outside `root`."""
    rel = safe_relpath(rel, source=source)
    real_root = os.path.realpath(root)
    target = Path(root, *rel.split("/"))
    resolved = os.path.realpath(target)
    if resolved != real_root and not resolved.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UnsafePathError(rel, source=source or f"a symlink in {root}")
    return target


def state_dir(root: Path) -> Path:
    d = Path(root) / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


DOWNLOADS_ENV = "LLAMAKIT_DOWNLOADS_DIR"


def downloads_dir(root: Path, *, create: bool = True) -> Path:
    """Where unfinished downloads live (partial files, a pip-downloaded wheel): DEST/.llamakit, or the
    directory in $LLAMAKIT_DOWNLOADS_DIR. The pipeline sets it outside its fetch output, because DVC
    deletes a stage's outputs before it reruns the stage, and an interrupted `dvc repro` would
    otherwise start every download over (dvc.yaml declares it a persisted, uncached output)."""
    env = os.environ.get(DOWNLOADS_ENV)
    d = Path(env) if env else Path(root) / STATE_DIR
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def disk_full(exc: OSError, path: str | Path, *, free_at: str | Path | None = None) -> Exception:
    """A failed local write as a typed error (exit 4) naming the file: ENOSPC/EFBIG/EDQUOT are a full disk
    (with the free space at `free_at`), the rest (permissions, I/O) a destination that cannot be written.
    Either way not the network's fault: no retry."""
    if exc.errno in _DISK_FULL:
        return DiskFullError(path, exc, free_at=free_at)
    return LocalIOError.from_os(exc, path, fix="choose a writable --out")


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """llamakit.atomic.write_bytes, a failed write turned into a typed error naming the file."""
    try:
        atomic.write_bytes(path, data, fsync=fsync)
    except OSError as exc:
        raise disk_full(exc, path) from exc


def atomic_write_json(path: Path, obj, *, fsync: bool = True) -> None:
    """llamakit.atomic.write_json, with the same typed errors."""
    try:
        atomic.write_json(path, obj, fsync=fsync)
    except OSError as exc:
        raise disk_full(exc, path) from exc


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def dest_lock(root: Path):
    """An exclusive lock on a destination: a second fetch waits, then finds the files verified.

    A first fetch into an empty destination that fails before writing anything (host unreachable,
    access denied) leaves no trace: the empty state directory and destination are removed again."""
    from filelock import FileLock

    root = Path(root)
    fresh = not any(root.iterdir())
    lock_path = state_dir(root) / "fetch.lock"
    try:
        with FileLock(str(lock_path)):
            try:
                yield
            except BaseException:
                if fresh and [p.name for p in root.iterdir()] == [STATE_DIR] and \
                        [p.name for p in lock_path.parent.iterdir()] == [lock_path.name]:
                    lock_path.unlink(missing_ok=True)  # still held: nothing else was written, nothing to resume
                raise
    finally:
        if fresh and not lock_path.exists():
            for d in (root / STATE_DIR, root):
                try:
                    d.rmdir()  # only ever an empty directory
                except OSError:
                    break


class VerifiedState:
    """`.llamakit/verified.json`: files this destination already verified, keyed by stat.

    A rerun skips a file whose size and mtime still match what was verified, and
    re-hashes anything else, so an edited file is caught and refetched.
    """

    def __init__(self, root: Path):
        self.path = state_dir(root) / "verified.json"
        try:
            self.data: dict[str, dict] = json.loads(self.path.read_text())
            if not isinstance(self.data, dict):
                self.data = {}
        except (OSError, ValueError):
            self.data = {}

    def matches(self, rel: str, final: Path, digests: dict[str, str]) -> bool:
        rec = self.data.get(rel)
        try:
            st = final.stat()
        except OSError:
            return False
        if not rec or rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
            return False
        return all(rec.get(k) == v for k, v in digests.items() if v)

    def record(self, rel: str, final: Path, digests: dict[str, str]) -> None:
        st = final.stat()
        self.data[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **{k: v for k, v in digests.items() if v}}

    def save(self) -> None:
        atomic_write_json(self.path, self.data, fsync=False)
