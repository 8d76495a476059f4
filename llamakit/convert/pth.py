"""Meta's consolidated.NN.pth files: safe lazy reading, and streaming writing in torch.save's zip format.

(Where the tensors lie in the file, without torch, is llamakit/convert/pth_index.py.)
Reading tensors is `torch.load(mmap=True, weights_only=True)` only: they stay in the page cache
until touched, and a pickle that asks for anything beyond tensors is refused. Touched
pages of a read-only mapping still count toward RSS until unmapped, so `release()` hands
them back once a tensor has been consumed; that is what keeps peak memory at a few
tensors instead of the checkpoint size.

Writing cannot use torch.save, which needs every tensor of a shard in memory at once.
`PthWriter` writes the same zip layout torch.save does (a data.pkl that is byte-for-byte
what torch.save pickles, then one 64-byte-aligned stored record per tensor), one tensor
at a time, with a deterministic serialization id so reruns give identical files.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import mmap
import pickle
import struct
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from llamakit.convert._libc import libc
from llamakit.convert.pth_index import STORAGES
from llamakit.errors import InputFileError, UnsafeCheckpointError

if TYPE_CHECKING:
    import torch

_ALIGN = 64  # torch.save's storage alignment; mmap'd loads rely on it


def load_pth(path: Path) -> dict[str, "torch.Tensor"]:
    """A flat {name: tensor} from a torch zip checkpoint, memory-mapped, tensors only."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).splitlines()
        why = next((ln.strip() for ln in detail if "GLOBAL" in ln or "Unsupported" in ln), detail[0] if detail else "")
        raise UnsafeCheckpointError(path, f"the pickle needs more than tensors ({why[:160]})") from None
    except FileNotFoundError:
        raise InputFileError("shard file is missing", path=path) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputFileError(
            f"not a readable torch zip checkpoint (truncated or corrupt: {msg})",
            path=path, fix="re-download it and check it against checklist.chk (`llamakit verify`)",
        ) from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise InputFileError("expected a flat dict of tensors (a Meta consolidated checkpoint)", path=path)
    return obj


# --- mapping pages in, and giving them back ----------------------------------------

_MADV_DONTNEED, _MADV_POPULATE_READ = 4, 22


def _madvise(buf, advice: int) -> None:
    lib = libc()
    if lib is None:
        return
    if hasattr(buf, "data_ptr"):
        start, size = buf.data_ptr(), buf.numel() * buf.element_size()
    else:  # numpy
        start, size = buf.ctypes.data, buf.nbytes
    if size == 0:
        return
    lo = start - start % mmap.PAGESIZE
    lib.madvise(lo, start + size - lo, advice)  # an old kernel's EINVAL only costs the optimisation


def prefetch(buf) -> None:
    """Map a file-backed tensor's pages in one call (Linux ≥ 5.14) instead of one fault per 4 KiB page."""
    _madvise(buf, _MADV_POPULATE_READ)


def release(buf) -> None:
    """Drop the resident pages behind a tensor/array that views a read-only file mapping.

    Only for buffers from `load_pth` or a GGUF memmap: the pages are re-read from the
    file if touched again. Never call it on ordinary (anonymous) memory: those pages
    would come back as zeros."""
    _madvise(buf, _MADV_DONTNEED)


# --- writing ----------------------------------------------------------------------

# dtype name -> the torch.<X>Storage class torch.save pickles: the reader's table, inverted
_STORAGE_TYPES = {d.name: storage for storage, d in STORAGES.items()}


class _StorageRef:
    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    """Pickles exactly as a contiguous CPU tensor does (`Tensor.__reduce_ex__`), without its data."""

    def __init__(self, storage: _StorageRef, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol):
        import torch

        stride, acc = [], 1
        for n in reversed(self.shape):
            stride.append(acc)
            acc *= n
        args = (self.storage, 0, self.shape, tuple(reversed(stride)), False, collections.OrderedDict())
        return torch._utils._rebuild_tensor_v2, args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            import torch

            storage_type = getattr(torch, _STORAGE_TYPES[str(obj.dtype).removeprefix("torch.")])
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None


def tensor_bytes(t: "torch.Tensor") -> memoryview:
    """The tensor's raw little-endian bytes, without copying a contiguous tensor."""
    import torch

    flat = t.contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy() if flat.numel() else b"")


@contextlib.contextmanager
def writer_group(paths: list[Path], specs):
    """One `PthWriter` per path (the MP shards of one checkpoint), all closed when the body finishes, all aborted
    if it (or a close) raises. `specs`: every shard's (name, shape, dtype), in write order."""
    writers = [PthWriter(p, specs) for p in paths]
    try:
        yield writers
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise


class PthWriter:
    """A torch.save-format zip of {name: tensor}, written in `entries` order, each tensor in as many parts as wanted."""

    def __init__(self, path: Path, entries: list[tuple[str, tuple[int, ...], "torch.dtype"]]):
        import math

        self.path = Path(path)
        self._archive = self.path.name.rsplit(".", 1)[0]  # torch names the zip's root after the file
        self._entries = [(n, tuple(s), d, math.prod(s) * d.itemsize) for n, s, d in entries]
        self._next = 0
        self._open = None  # (zip write handle, bytes still expected)
        self._crcs: list[int] = []
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._zf = zipfile.ZipFile(self._fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        refs = {name: _TensorRef(_StorageRef(str(i), dtype, math.prod(shape)), shape)
                for i, (name, shape, dtype, _) in enumerate(self._entries)}
        buf = io.BytesIO()
        _Pickler(buf, protocol=2).dump(refs)
        for name, data in (("data.pkl", buf.getvalue()), (".format_version", b"1"),
                           (".storage_alignment", str(_ALIGN).encode()), ("byteorder", sys.byteorder.encode())):
            self._record(name, data)

    def _start(self, name: str, size: int):
        zi = zipfile.ZipInfo(f"{self._archive}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
        zi.compress_type = zipfile.ZIP_STORED
        zi.file_size = size
        zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
        # pad the local header's extra field so the record's bytes start 64-byte aligned
        base = self._fh.tell() + 30 + len(zi.filename.encode("ascii")) + 4 + (20 if zip64 else 0)
        pad = -base % _ALIGN
        zi.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        return self._zf.open(zi, "w", force_zip64=zip64), zi

    def _record(self, name: str, data: bytes) -> None:
        handle, _ = self._start(name, len(data))
        with handle:
            handle.write(data)

    def begin(self, name: str) -> None:
        exp_name, _, _, size = self._entries[self._next]
        if name != exp_name or self._open is not None:
            raise AssertionError(f"PthWriter: began {name}, expected {exp_name}")
        handle, zi = self._start(f"data/{self._next}", size)
        self._open = [handle, zi, size]

    def write(self, part: "torch.Tensor") -> None:
        _, _, dtype, _ = self._entries[self._next]
        if part.dtype != dtype:
            raise AssertionError(f"PthWriter: {part.dtype} part for a {dtype} tensor")
        data = tensor_bytes(part)
        self._open[2] -= data.nbytes
        self._open[0].write(data)

    def end(self) -> None:
        handle, zi, left = self._open
        if left != 0:
            raise AssertionError(f"PthWriter: {self._entries[self._next][0]} got {left} bytes too few")
        handle.close()
        self._crcs.append(zi.CRC)
        self._open = None
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._entries):
            raise AssertionError(f"PthWriter closed after {self._next} of {len(self._entries)} tensors")
        self._record("version", b"3\n")
        digest = hashlib.sha256(b"".join(c.to_bytes(4, "little") for c in self._crcs)).digest()
        self._record(".data/serialization_id", str(int.from_bytes(digest[:17], "big") % 10**40).zfill(40).encode())
        self._zf.close()
        self._fh.close()

    def abort(self) -> None:
        """Close without completing (the staging directory holding the file is being removed)."""
        try:
            if self._open is not None:
                self._open[0].close()
            self._zf.close()
        except Exception:  # noqa: BLE001 - the file is discarded either way
            pass
        self._fh.close()
