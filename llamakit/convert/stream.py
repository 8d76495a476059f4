"""Weights read in row blocks for the equivalence check: memory bounded by one block, however big the model.

A `Rows` is one 2-D weight [out, in] that the check never holds whole: `linear` multiplies
activations by it one dim-0 block at a time (each block widened to float32 into one reused
scratch buffer, multiplied, overwritten by the next), `take` gathers the rows an embedding
lookup needs. Three kinds, one per place weights live:

  * `MappedRows`: a tensor viewing a file mapping (Meta shards through `load_pth`): blocks
    are views, paged in with `prefetch` and handed back with `release`;
  * `SafetensorsRows`: a tensor of a safetensors file, mapped the same way (its header says
    where the bytes lie);
  * `PartsRows`: a source's `parts()` generator (GGUF, dequantized block by block).

Blocks are small (CHECK_BLOCK_BYTES of float32, a few hundred rows of a 4096-wide matrix):
widened into a buffer that stays in the CPU's cache, then multiplied from there. Measured
here (one core, 28 tokens, bf16 rows of 4096): 2.1 s per 1.04 G parameters with 2 MiB
blocks against 3.0 s with 16 MiB ones, whose float32 copy went out to memory and back.

A plain tensor is accepted wherever a `Rows` is (tests and small callers pass them).
Both sides of the check use `linear`; it is tested against `x @ w.T` on its own
(tests/convert/test_stream.py), so a fault in it cannot hide behind the comparison.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

import torch

from llamakit.convert import entries
from llamakit.convert.pth import prefetch, release

CHECK_BLOCK_BYTES = 2 << 20  # float32 bytes of one block the check multiplies (see the module docstring)


def block_rows(cols: int) -> int:
    """Rows per block: about CHECK_BLOCK_BYTES of float32, or entries.PART_BYTES if smaller (at least one row)."""
    return max(1, min(CHECK_BLOCK_BYTES, entries.PART_BYTES) // max(1, 4 * cols))


class Rows:
    shape: tuple[int, ...]

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, float32 block) for consecutive dim-0 blocks of `block_rows` rows; each block is the caller's."""
        raise NotImplementedError

    def blocks_into(self, scratch: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Like `blocks`, but a block may be a view of `scratch` ([block_rows, cols] float32), valid only until
        the next one is asked for: `linear` uses it, so a pass over a tensor allocates nothing per block."""
        return self.blocks()

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """float32 rows `idx` (any shape of row numbers) -> [*idx.shape, cols]."""
        out = torch.empty(*idx.shape, self.shape[1])
        for a, block in self.blocks():
            hit = (idx >= a) & (idx < a + block.shape[0])
            if hit.any():
                out[hit] = block[idx[hit] - a]
        return out

    def full(self) -> torch.Tensor:
        """The whole tensor in float32: only for 1-D weights (norms), which are small."""
        return torch.cat([b for _, b in self.blocks()], dim=0)


class TensorRows(Rows):
    """An ordinary in-memory tensor (nothing to page in or hand back)."""

    def __init__(self, t: torch.Tensor):
        self.t, self.shape = t, tuple(t.shape)

    def blocks(self):
        rows = block_rows(self.shape[-1]) if len(self.shape) > 1 else self.shape[0]
        for a in range(0, self.shape[0], rows):
            yield a, self.t[a:a + rows].float()

    def take(self, idx):
        return self.t[idx].float()


class MappedRows(TensorRows):
    """A tensor viewing a file mapping: each block's pages are mapped in and handed back after use."""

    def blocks(self):
        rows = block_rows(self.shape[-1]) if len(self.shape) > 1 else self.shape[0]
        for a in range(0, self.shape[0], rows):
            view = self.t[a:a + rows]
            prefetch(view)
            block = view.float() if view.dtype != torch.float32 else view.clone()
            release(view)
            yield a, block

    def blocks_into(self, scratch):
        rows = scratch.shape[0]
        for a in range(0, self.shape[0], rows):
            view = self.t[a:a + rows]
            prefetch(view)
            block = scratch[:view.shape[0]]
            block.copy_(view)  # widened to float32 in the same pass that reads the mapped pages
            release(view)
            yield a, block


def safetensors_header(path: Path) -> tuple[int, dict]:
    """(where the data section starts, the JSON header) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def map_safetensors(path: Path, key: str, header: tuple[int, dict] | None = None) -> torch.Tensor:
    """Tensor `key` of a safetensors file as a view of a private (copy-on-write, never written) mapping of its
    bytes, located by the file's own header (`header`: `safetensors_header(path)`, when the caller has read it).
    Pages are read on first touch; `release` hands them back."""
    import numpy as np

    from llamakit.convert.hf import st_torch_dtype

    base, meta = header or safetensors_header(path)
    meta = meta[key]
    start, end = meta["data_offsets"]
    dtype = st_torch_dtype(meta["dtype"])
    if end == start:
        return torch.empty(meta["shape"], dtype=dtype)
    raw = np.memmap(path, dtype=np.uint8, mode="c", offset=base + start, shape=(end - start,))
    return torch.from_numpy(raw).view(dtype).reshape(meta["shape"])


class SafetensorsRows(MappedRows):
    """Tensor `key` of safetensors file `path`, mapped (`map_safetensors`) and read a block at a time."""

    def __init__(self, path: Path, key: str, header: tuple[int, dict] | None = None):
        self.path, self.key = path, key
        super().__init__(map_safetensors(path, key, header))

    def take(self, idx):
        out = self.t[idx].float()
        release(self.t)  # the handful of rows the check's tokens touched
        return out


class PartsRows(Rows):
    """A source tensor as its `parts(name, rows)` blocks (dequantized or re-laid-out by the source)."""

    def __init__(self, source, name: str, shape: tuple[int, ...]):
        self.source, self.name, self.shape = source, name, tuple(shape)

    def blocks(self):
        rows = block_rows(self.shape[-1]) if len(self.shape) > 1 else self.shape[0]
        a = 0
        for part in self.source.parts(self.name, rows):
            yield a, part.float()
            a += part.shape[0]


def as_rows(w) -> Rows:
    return w if isinstance(w, Rows) else TensorRows(w)


def linear(x: torch.Tensor, w) -> torch.Tensor:
    """x @ w.T in float32, w read one row block at a time (the output's columns are filled block by block)."""
    w = as_rows(w)
    out = torch.empty(*x.shape[:-1], w.shape[0])
    scratch = torch.empty(block_rows(w.shape[-1]), w.shape[-1])
    for a, block in w.blocks_into(scratch):
        out[..., a:a + block.shape[0]] = x @ block.T
    return out
