"""Typed errors for llamakit.

Every failure a user can cause or meet is one of these. Each carries the data
that explains it (the file, the model, the expected value) plus a `fix` hint;
the CLI edge (`llamakit.cli`) turns them into one line and an exit code. Code
below the CLI raises, it never prints or exits.

Exit codes, the same for every command (README "Exit codes" has the table):

    0    ok
    1    a check failed: mismatch, gate, equivalence (`CheckFailed` and subclasses)
    2    bad usage or bad input: fix the arguments or the file (the default)
    3    remote/network failure: retry later (`NetworkError`)
    4    local I/O failure: disk full, read-only destination
    130  interrupted (Ctrl-C)

Scripts can tell "retry later" (3) from "fix your input" (2) from "fix this
machine" (4) by the code alone; the one-line message says which file and what to do.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path


class LlamakitError(Exception):
    """Base class. `exit_code` and `fix` drive the CLI message."""

    exit_code = 2

    def __init__(self, message: str, *, fix: str | None = None, path: str | Path | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.path = str(path) if path is not None else None

    def one_line(self) -> str:
        where = f"{self.path}: " if self.path else ""
        fix = f" — {self.fix}" if self.fix else ""
        return f"{where}{self.message}{fix}".replace("\n", " ")


# --- bad input / usage (exit 2) -------------------------------------------------


class UsageError(LlamakitError):
    """Arguments that cannot work together or are out of range."""


class UnknownModelError(LlamakitError):
    def __init__(self, name: str, suggestions: list[str]):
        hint = f"did you mean {', '.join(suggestions)}?" if suggestions else "see `llamakit list`"
        super().__init__(f"unknown model '{name}'", fix=hint)
        self.name = name
        self.suggestions = suggestions


class ManifestError(LlamakitError):
    """A catalog, lock, result or recipe file that does not validate."""


class InputFileError(LlamakitError):
    """A user-supplied file that is malformed (data file, params.json, checkpoint...)."""

    def __init__(self, message: str, *, path: str | Path, line: int | None = None, fix: str | None = None):
        loc = f"{path}:{line}" if line is not None else str(path)
        super().__init__(message, fix=fix, path=loc)
        self.file = str(path)
        self.line = line


class UnsafePathError(LlamakitError):
    """A path from a lock, listing or server that would escape the destination."""

    def __init__(self, path: str, *, source: str | None = None):
        src = f" (from {source})" if source else ""
        super().__init__(
            f"refusing unsafe path '{path}'{src}: absolute, '..' or symlink escaping the destination",
            fix="use a lock/listing whose paths are relative and stay inside the destination",
        )
        self.unsafe = path


class DestinationExistsError(LlamakitError):
    def __init__(self, path: str | Path):
        super().__init__("destination exists and is not empty", path=path, fix="pass --force to replace it, or choose another destination")


class UnsafeCheckpointError(LlamakitError):
    """A pickle that asks for anything beyond tensors and plain containers."""

    def __init__(self, path: str | Path, detail: str):
        super().__init__(
            f"refusing to unpickle: {detail}",
            path=path,
            fix="only tensor-only checkpoints are loaded (torch.load weights_only=True); re-save it with torch.save(state_dict)",
        )


class ConversionError(LlamakitError):
    """A checkpoint that is readable but cannot be converted (unknown key, shapes disagree...)."""


class UnknownKeyError(ConversionError):
    def __init__(self, key: str, *, path: str | Path | None = None, direction: str = ""):
        super().__init__(
            f"unknown tensor key '{key}'{' (' + direction + ')' if direction else ''}",
            path=path,
            fix="this is not a Llama-architecture checkpoint llamakit's key map knows; check the source",
        )
        self.key = key


# --- remote / access --------------------------------------------------------------


class AccessError(LlamakitError):
    """Gated repo, missing token, expired presigned URL: exit 2, the user must act (retrying will not help)."""


class NetworkError(LlamakitError):
    """The remote side failed or was unreachable (timeouts, 5xx, a server without the file, an offline
    cache that lacks it): exit 3, worth retrying later; finished files are kept and partial ones resume."""

    exit_code = 3


# --- local I/O (exit 4: this machine's disk, not the input, the network or a check) --


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_WHY = {
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is a file, not a directory",
    errno.EEXIST: "a file is in the way where a directory is needed",
    errno.EISDIR: "it is a directory",
    errno.ENOENT: "no such file or directory",
    errno.EIO: "input/output error",
}


class LocalIOError(LlamakitError):
    """Reading or writing on this machine failed: disk full, read-only or unwritable destination, a
    destination under a file. Names the path; for a full disk also the free space left there."""

    exit_code = 4

    def __init__(self, message: str, *, path: str | Path, fix: str | None = None, errno_: int | None = None):
        super().__init__(message, path=path, fix=fix or "check the destination (free space, permissions) and rerun")
        self.errno = errno_

    @classmethod
    def from_os(cls, exc: OSError, path: str | Path | None = None, *, fix: str | None = None,
                free_at: str | Path | None = None) -> "LocalIOError":
        """`exc` as one line naming `path` (default: the file the OSError names); a full disk's free
        space is measured at `free_at` (default: `path`)."""
        where = Path(path if path is not None else (exc.filename or "."))
        code = exc.errno
        if code in _NO_SPACE:
            free = free_space(free_at if free_at is not None else where)
            said = "free" in (exc.strerror or "")  # the caller already counted it (fetch's pre-check)
            room = f"; {free / 1e9:.2f} GB free there" if free is not None and not said else ""
            what = "file too large for the destination (a filesystem or process size limit)" if code == errno.EFBIG \
                else "out of disk space"
            return cls(f"{what} while writing ({exc.strerror or code}){room}", path=where, errno_=code,
                       fix=fix or "free space (or choose another destination) and rerun")
        why = _WHY.get(code) or exc.strerror or str(exc)
        return cls(f"cannot write or read here: {why}", path=where, errno_=code, fix=fix)


def free_space(path: str | Path) -> int | None:
    """Free bytes on the filesystem holding `path` (its nearest existing ancestor), or None."""
    import shutil

    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


class DiskFullError(LocalIOError):
    """No space (or a file-size limit) while downloading; partial data stays under a temporary name."""

    def __init__(self, path: str | Path, cause: OSError | None = None, *, free_at: str | Path | None = None):
        err = cause if cause is not None else OSError(errno.ENOSPC, "No space left on device")
        base = LocalIOError.from_os(err, path, free_at=free_at)
        super().__init__(base.message, path=path, errno_=base.errno,
                         fix="free space (or choose another --out) and rerun; the partial download is kept and resumes")


# --- failed checks (exit 1) -----------------------------------------------------


class CheckFailed(LlamakitError):
    exit_code = 1


@dataclass
class Mismatch:
    path: str
    kind: str  # missing | extra | truncated | altered | md5
    expected: str | None = None
    actual: str | None = None


class VerificationError(CheckFailed):
    def __init__(self, mismatches: list[Mismatch], *, root: str | Path | None = None):
        names = ", ".join(f"{m.path} ({m.kind})" for m in mismatches[:8])
        more = f" and {len(mismatches) - 8} more" if len(mismatches) > 8 else ""
        super().__init__(
            f"{len(mismatches)} file(s) failed verification: {names}{more}",
            path=root,
            fix="re-run `llamakit fetch` to repair them",
        )
        self.mismatches = mismatches


class EquivalenceError(CheckFailed):
    def __init__(self, max_abs: float, tol: float, top1: float, *, path: str | Path | None = None):
        super().__init__(
            f"converted model disagrees with the source: max |Δlogit| {max_abs:.3g} > tolerance {tol:.3g} (top-1 agreement {top1:.3f})",
            path=path,
            fix="the conversion is wrong for this checkpoint; report it with LLAMAKIT_DEBUG=1 output",
        )
        self.max_abs = max_abs
        self.tol = tol
        self.top1 = top1


class CheckIncomplete(CheckFailed):
    """The converted directory lacks a tensor its own config implies: it cannot equal the source."""

    def __init__(self, what: str, *, path: str | Path | None = None):
        super().__init__(what, path=path, fix="the conversion is wrong for this checkpoint; report it with "
                                                "LLAMAKIT_DEBUG=1 output")


@dataclass
class MetricFailure:
    name: str
    reported: float
    reproduced: float
    tolerance: float
    at_least: bool = False  # one-sided tolerance: reproduced >= reported - tolerance


class ReproductionFailed(CheckFailed):
    def __init__(self, failures: list[MetricFailure], *, path: str | Path | None = None):
        names = ", ".join(f"{f.name} {f.reproduced:.4f} vs {f.reported:.4f}{'−' if f.at_least else '±'}{f.tolerance:g}"
                          for f in failures[:6])
        super().__init__(
            f"{len(failures)} metric(s) outside tolerance: {names}",
            path=path,
            fix="see the report for provenance; rerun with the registry entry's recipe",
        )
        self.failures = failures


__all__ = [name for name in dir() if name.endswith("Error") or name in {"Mismatch", "MetricFailure", "CheckFailed", "ReproductionFailed"}]
