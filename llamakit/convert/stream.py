"""Weights read in row blocks for the equivalence check: memory bounded by one block, however big the model.

A `Rows` is one 2-D weight [out, in] that the check never holds whole: `linear` multiplies
activations by it one dim-0 block at a time (each block widened to float32, used, dropped),
`take` gathers the rows an embedding lookup needs. Three kinds, one per place weights live:

  * `MappedRows`: a tensor viewing a read-only file mapping (Meta shards through
    `load_pth`): blocks are views, paged in with `prefetch` and handed back with `release`;
  * `SafetensorsRows`: a tensor of a safetensors file, each block read by its own
    `safe_open(...).get_slice` (the mapping is dropped after each block);
  * `PartsRows`: a source's `parts()` generator (GGUF, dequantized block by block).

A plain tensor is accepted wherever a `Rows` is (tests and small callers pass them).
Both sides of the check use `linear`; it is tested against `x @ w.T` on its own
(tests/convert/test_stream.py), so a fault in it cannot hide behind the comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from llamakit.convert import entries
from llamakit.convert.pth import prefetch, release


def block_rows(cols: int) -> int:
    """Rows per block: about entries.PART_BYTES of float32 (at least one row)."""
    return max(1, entries.PART_BYTES // max(1, 4 * cols))


class Rows:
    shape: tuple[int, ...]

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, float32 block) for consecutive dim-0 blocks of about PART_BYTES."""
        raise NotImplementedError

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
    """A tensor viewing a read-only file mapping: each block's pages are mapped in and handed back after use."""

    def blocks(self):
        rows = block_rows(self.shape[-1]) if len(self.shape) > 1 else self.shape[0]
        for a in range(0, self.shape[0], rows):
            view = self.t[a:a + rows]
            prefetch(view)
            block = view.float() if view.dtype != torch.float32 else view.clone()
            release(view)
            yield a, block


class SafetensorsRows(Rows):
    """Tensor `key` of safetensors file `path`, read a block at a time."""

    def __init__(self, path: Path, key: str):
        from safetensors import safe_open

        self.path, self.key = path, key
        with safe_open(path, framework="pt") as st:
            self.shape = tuple(st.get_slice(key).get_shape())

    def _read(self, a: int, b: int) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as st:
            return st.get_slice(self.key)[a:b].float()

    def blocks(self):
        rows = block_rows(self.shape[-1]) if len(self.shape) > 1 else self.shape[0]
        for a in range(0, self.shape[0], rows):
            yield a, self._read(a, a + rows)

    def take(self, idx):
        flat = idx.reshape(-1).tolist()
        got = {r: self._read(r, r + 1)[0] for r in set(flat)}  # a handful of rows: the check's tokens
        return torch.stack([got[r] for r in flat]).reshape(*idx.shape, self.shape[1])


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
    for a, block in w.blocks():
        out[..., a:a + block.shape[0]] = x @ block.T
    return out
