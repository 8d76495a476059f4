"""The two Linux calls the converter makes through ctypes (madvise, sync_file_range), declared once."""

from __future__ import annotations

import functools
import sys


@functools.cache
def libc():
    """The C library with argument types set, or None off Linux (callers then skip the optimisation)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    lib = ctypes.CDLL(None, use_errno=True)
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return lib
