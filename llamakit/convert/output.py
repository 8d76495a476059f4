"""Writing a converted model without ever leaving a half-written DST.

Everything is written to `.DST.partial-PID` beside DST (same filesystem, so the final
rename is atomic), fsynced, checked, and only then renamed to DST. A replaced DST
(--force) is first moved to `.DST.old-PID` and deleted after the swap. A run killed at
any moment leaves DST either absent, as it was, or complete; the next run sweeps the
leftovers of dead runs (restoring an `.old` copy if the kill fell between the renames).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from llamakit.convert._libc import libc
from llamakit.atomic import local_io
from llamakit.errors import DestinationExistsError, LocalIOError, UsageError


@dataclass(frozen=True)
class FileSpan:
    """`nbytes` bytes of `path` from `offset`: tensor data a writer can copy file to file."""

    path: Path
    offset: int
    nbytes: int


def coalesce(spans: list[FileSpan]) -> list[FileSpan]:
    """Adjacent ranges of one file merged, so rows that sit in order cost one copy, not one each."""
    out: list[FileSpan] = []
    for s in spans:
        last = out[-1] if out else None
        if last is not None and last.path == s.path and last.offset + last.nbytes == s.offset:
            out[-1] = FileSpan(s.path, last.offset, last.nbytes + s.nbytes)
        else:
            out.append(s)
    return out


def pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class SpanCopier:
    """Writes FileSpans into an output file at given offsets, each source file opened once; safe to share
    between threads (copies at distinct offsets of one file can run side by side).

    copy_file_range keeps the bytes in the kernel; once it is refused (EXDEV, EOPNOTSUPP, ... on some
    filesystems and kernels) the rest go through pread/pwrite without asking again."""

    _REFUSED = (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EPERM)

    def __init__(self):
        import threading

        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._kernel = hasattr(os, "copy_file_range")
        self._gather = hasattr(os, "pwritev") and hasattr(os, "preadv")

    def __enter__(self) -> "SpanCopier":
        return self

    def __exit__(self, *_exc) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _source(self, path: Path) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            return fd

    def copy_all(self, spans: list[FileSpan], fd: int, at: int) -> None:
        """`spans`' bytes one after another into the file open at `fd` from byte `at`.

        Runs of small spans (the rows of a rotary permutation or of a dim-1 merge: 4-11 KB each) that
        together cover dense ranges of their files go as one read per file range and one gathering
        write (preadv + pwritev, up to IOV_MAX rows per call) instead of a system call per row: the
        same bytes, 15-35 % faster alone and far fewer GIL round trips beside the tokenizer thread.
        Large spans stay kernel copies."""
        i = 0
        while i < len(spans):
            if spans[i].nbytes >= _SMALL or not self._gather:
                self.copy(spans[i], fd, at)
                at += spans[i].nbytes
                i += 1
                continue
            j, size = i, 0
            while j < len(spans) and spans[j].nbytes < _SMALL and j - i < _IOV_MAX and size + spans[j].nbytes <= _GATHER_BYTES:
                size += spans[j].nbytes
                j += 1
            self._gather_write(spans[i:j], size, fd, at)
            at += size
            i = j

    def _gather_write(self, group: list[FileSpan], size: int, fd: int, at: int) -> None:
        ranges: dict[Path, list[int]] = {}
        for s in group:
            r = ranges.setdefault(s.path, [s.offset, s.offset + s.nbytes])
            r[0], r[1] = min(r[0], s.offset), max(r[1], s.offset + s.nbytes)
        covered = sum(hi - lo for lo, hi in ranges.values())
        if covered > size + size // 4:  # sparse: reading around the gaps costs more
            for s in group:
                self.copy(s, fd, at)
                at += s.nbytes
            return
        buf = self._buffer(covered)
        views: dict[Path, tuple[int, memoryview]] = {}
        pos = 0
        for path, (lo, hi) in ranges.items():
            view = buf[pos:pos + hi - lo]
            _pread_into(self._source(path), view, lo, path)
            views[path] = (lo, view)
            pos += hi - lo
        iov = [views[s.path][1][s.offset - views[s.path][0]:s.offset - views[s.path][0] + s.nbytes] for s in group]
        while iov:
            n = os.pwritev(fd, iov, at)
            if n == 0:
                raise OSError(errno.EIO, f"writing {size} bytes at {at} wrote nothing")
            at += n
            while iov and n >= len(iov[0]):  # a short write: resume after what went out
                n -= len(iov[0])
                iov.pop(0)
            if iov and n:
                iov[0] = iov[0][n:]

    def _buffer(self, n: int) -> memoryview:
        """A per-thread scratch buffer (reused, so gathering does not fault in fresh pages every time)."""
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < n:
            buf = self._local.buf = memoryview(bytearray(max(n, _GATHER_BYTES)))
        return buf

    def copy(self, span: FileSpan, fd: int, at: int) -> None:
        """`span`'s bytes into the file open at `fd`, starting at byte `at`."""
        src = self._source(span.path)
        done = 0
        if self._kernel:
            try:
                while done < span.nbytes:
                    n = os.copy_file_range(src, fd, span.nbytes - done, span.offset + done, at + done)
                    if n == 0:
                        raise OSError(errno.EIO, f"{span.path} ended before byte {span.offset + span.nbytes}")
                    done += n
            except OSError as exc:
                if exc.errno not in self._REFUSED:
                    raise
                self._kernel = False
        while done < span.nbytes:
            chunk = os.pread(src, min(16 << 20, span.nbytes - done), span.offset + done)
            if not chunk:
                raise OSError(errno.EIO, f"{span.path} ended before byte {span.offset + span.nbytes}")
            pwrite_all(fd, chunk, at + done)
            done += len(chunk)


_SMALL = 256 << 10  # spans below this are gathered rather than copied one by one
_GATHER_BYTES = 8 << 20  # bytes per gathering write (a scratch buffer of this size per copy thread)
_IOV_MAX = 1024  # Linux's limit on buffers per pwritev


def _pread_into(src: int, view: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(src, [view[done:]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, f"{path} ended before byte {offset + len(view)}")
        done += n


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing this file's dirty pages now (sync_file_range, Linux), so the
    fsync before the commit finds little left to do; elsewhere a no-op, and the fsync does it all."""
    lib = libc()
    if lib is not None:
        lib.sync_file_range(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE: start writeback, don't wait for it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(dst: Path) -> list[tuple[str, int, Path]]:
    pat = re.compile(rf"^\.{re.escape(dst.name)}\.(partial|old)-(\d+)$")
    if not dst.parent.is_dir():
        return []
    return [(m.group(1), int(m.group(2)), p) for p in dst.parent.iterdir() if (m := pat.match(p.name))]


def sweep(dst: Path) -> None:
    """Remove what killed runs left beside DST."""
    for kind, pid, path in _leftovers(dst):
        if pid == os.getpid() or _alive(pid):
            continue
        if kind == "old" and not dst.exists():
            os.rename(path, dst)  # killed between the two renames: the previous DST is whole, put it back
        else:
            shutil.rmtree(path, ignore_errors=True)


def check_destination(dst: Path, *, force: bool) -> None:
    if dst.exists() and not force and (not dst.is_dir() or any(dst.iterdir())):
        raise DestinationExistsError(dst)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def staging(dst: Path, *, force: bool) -> Iterator[Path]:
    """A fresh directory that becomes DST if the block completes, and vanishes if it raises."""
    dst = Path(dst)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    with local_io(dst, fix="choose a writable DST with room for the model"):
        dst.parent.mkdir(parents=True, exist_ok=True)
        sweep(dst)
        check_destination(dst, force=force)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        _commit(tmp, dst, force=force)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _io_error(exc, dst, tmp) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _io_error(exc: OSError, dst: Path, tmp: Path) -> LocalIOError:
    """A read or write that failed while converting: named by the file it names, unless that is our own
    staging copy (or none), whose name means nothing to the user: then DST."""
    name = exc.filename if isinstance(exc.filename, (str, os.PathLike)) else None
    mine = name is None or Path(os.path.abspath(name)).is_relative_to(os.path.abspath(tmp))
    return LocalIOError.from_os(exc, dst if mine else name, free_at=dst.parent,
                                fix="choose a writable DST with room for the model" if mine else None)


def _commit(tmp: Path, dst: Path, *, force: bool) -> None:
    check_destination(dst, force=force)  # something may have appeared while we converted
    old = None
    if dst.is_dir() and not any(dst.iterdir()):
        dst.rmdir()
    elif dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.rename(dst, old)
    os.rename(tmp, dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def refuse_overlap(src: Path, dst: Path) -> None:
    s, d = Path(src).resolve(), Path(dst).resolve()
    if s == d or d in s.parents or (s.is_dir() and s in d.parents):
        raise UsageError("DST overlaps SRC", path=dst, fix="write the conversion to a separate directory")


@contextmanager
def progress_bar(total: int, *, enabled: bool, label: str) -> Iterator[Callable[[str, int], None]]:
    """A per-tensor rich progress bar on stderr; `advance(name, nbytes)` after each tensor."""
    if not enabled:
        yield lambda _name, _n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    cols = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*cols, console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task(label, total=total)

        def advance(name: str, n: int) -> None:
            prog.update(task, advance=n, description=f"{label} {name}")

        yield advance
