"""The OS calls whose presence or meaning differs between Linux and macOS, each with its fallback.

llamakit runs on Linux and macOS (README, "Supported systems"). A Linux-only name (os.fdatasync,
os.posix_fadvise, /proc/..., ctypes' libc, ...) appears in llamakit only here, in convert/_libc.py
(the libc calls, None off Linux), or right under its own guard (hasattr / try-except AttributeError
or OSError); tests/test_portable.py scans the package for any other use.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def fdatasync(fd: int) -> None:
    """Flush a file's data to the device before anything records it as written.

    macOS (and Windows) have no fdatasync; fsync flushes the data and the metadata, a superset, so
    the guarantee is kept at the cost of one more metadata write. On macOS neither flushes the
    drive's own write cache (that is fcntl F_FULLFSYNC, which costs tens of milliseconds a call);
    this is the same durability git and SQLite give by default there."""
    sync = getattr(os, "fdatasync", None) or os.fsync
    sync(fd)


def peak_rss_bytes(usage: Any, platform: str = sys.platform) -> int:
    """`usage.ru_maxrss` (from resource.getrusage) in bytes.

    The kernels disagree on the unit: Linux and the BSDs report KiB, macOS reports bytes (its
    getrusage(2) man page), so reading the field as KiB overstates macOS's peak 1024 times."""
    scale = 1 if platform == "darwin" else 1024
    return int(usage.ru_maxrss) * scale


def peak_rss_mib(usage: Any, platform: str = sys.platform) -> float:
    """`usage.ru_maxrss` in MiB, rounded to 0.1 (the unit the timing records use)."""
    return round(peak_rss_bytes(usage, platform) / 2**20, 1)
