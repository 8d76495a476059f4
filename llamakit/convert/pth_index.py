"""Where each tensor of a torch zip checkpoint lives in the file, read without importing torch.

A `.pth` written by torch.save is a zip: `ARCHIVE/data.pkl` pickles the structure, and each
storage is a stored (uncompressed) record `ARCHIVE/data/KEY`. Copying tensors file to file
(llamakit/convert/hf.py) only needs each tensor's shape, dtype and byte range, so this module
unpickles data.pkl with an allow-list of exactly what a tensor-only state dict contains
(`_rebuild_tensor_v2`, typed-storage markers, OrderedDict) and answers from the zip's record
offsets. Anything else in the pickle is refused, as torch.load(weights_only=True) refuses it;
saving the 1-2 s `import torch` costs is what makes a plain Meta -> HF copy start at once.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llamakit.errors import InputFileError, UnsafeCheckpointError


@dataclass(frozen=True)
class DType:
    """A torch dtype by name, for code that needs only its name and size (str() reads like torch's)."""

    name: str
    itemsize: int

    def __str__(self) -> str:
        return f"torch.{self.name}"


STORAGES = {  # torch.<X>Storage -> dtype (llamakit/convert/pth.py writes with the same table)
    "FloatStorage": DType("float32", 4), "DoubleStorage": DType("float64", 8), "HalfStorage": DType("float16", 2),
    "BFloat16Storage": DType("bfloat16", 2), "LongStorage": DType("int64", 8), "IntStorage": DType("int32", 4),
    "ShortStorage": DType("int16", 2), "CharStorage": DType("int8", 1), "ByteStorage": DType("uint8", 1),
    "BoolStorage": DType("bool", 1),
}


@dataclass(frozen=True)
class TensorRecord:
    shape: tuple[int, ...]
    dtype: DType
    offset: int  # file offset of the first element
    nbytes: int
    contiguous: bool


@dataclass(frozen=True)
class _Storage:
    dtype: DType
    key: str
    numel: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage record")
    return _Tensor(storage, int(storage_offset), tuple(int(x) for x in size), tuple(int(x) for x in stride))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in STORAGES:
            return STORAGES[name]
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], DType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:60]}")
        return _Storage(pid[1], str(pid[2]), int(pid[4]))


def read_index(path: Path) -> dict[str, TensorRecord]:
    """{name: TensorRecord} of a flat tensor-only torch zip checkpoint, without torch."""
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
            infos = {zi.filename: zi for zi in zf.infolist()}
            pkl = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise zipfile.BadZipFile("no ARCHIVE/data.pkl record")
            archive = pkl[0].split("/")[0]
            try:
                obj = _Unpickler(io.BytesIO(zf.read(pkl[0]))).load()
            except pickle.UnpicklingError as exc:
                raise UnsafeCheckpointError(path, f"the pickle needs more than tensors ({str(exc)[:160]})") from None
            except (AttributeError, TypeError, ValueError, EOFError, IndexError, KeyError) as exc:
                raise zipfile.BadZipFile(f"data.pkl is not a tensor-only pickle ({type(exc).__name__}: {str(exc)[:120]})") from None
            if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, _Tensor) for k, v in obj.items()):
                raise InputFileError("expected a flat dict of tensors (a Meta consolidated checkpoint)", path=path)
            out = {}
            for name, t in obj.items():
                zi = infos.get(f"{archive}/data/{t.storage.key}")
                if zi is None or zi.compress_type != zipfile.ZIP_STORED or zi.file_size != t.storage.numel * t.storage.dtype.itemsize:
                    raise zipfile.BadZipFile(f"storage record of '{name}' is missing or not as declared")
                fh.seek(zi.header_offset)
                head = fh.read(30)
                if len(head) != 30 or head[:4] != b"PK\x03\x04":
                    raise zipfile.BadZipFile(f"bad local header for '{name}'")
                data_at = zi.header_offset + 30 + sum(struct.unpack("<HH", head[26:30]))
                size = t.storage.dtype.itemsize
                numel = math.prod(t.shape)
                last = t.storage_offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride)) if numel else t.storage_offset
                if t.storage_offset < 0 or (numel and last >= t.storage.numel):
                    raise zipfile.BadZipFile(f"'{name}' reaches beyond its storage")
                out[name] = TensorRecord(t.shape, t.storage.dtype, data_at + t.storage_offset * size, numel * size,
                                         t.stride == _row_major(t.shape))
            return out
    except FileNotFoundError:
        raise InputFileError("shard file is missing", path=path) from None
    except (OSError, EOFError, zipfile.BadZipFile, struct.error) as exc:
        raise InputFileError(
            f"not a readable torch zip checkpoint (truncated or corrupt: {str(exc)[:160] or type(exc).__name__})",
            path=path, fix="re-download it and check it against checklist.chk (`llamakit verify`)",
        ) from None


def _row_major(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= n
    return tuple(reversed(stride))
