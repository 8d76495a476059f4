"""The canonical tensor list every source and writer share: one `Entry` per tensor of the merged Meta
state dict, the full shapes an `Arch` implies, and the size of the dim-0 blocks tensors stream in."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llamakit.convert import keymap
from llamakit.convert.arch import Arch

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Entry:
    """One tensor of the canonical (merged Meta) state dict."""

    name: str
    shape: tuple[int, ...]
    dtype: "torch.dtype"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


PART_BYTES = 16 << 20  # tensors stream in dim-0 blocks of about this size


def part_rows(entry: Entry, head_dim: int, itemsize: int | None = None) -> int:
    """Rows per streamed block: whole heads (the rotary permutation works per head), ~PART_BYTES each."""
    if len(entry.shape) == 1:
        return entry.shape[0]
    row_bytes = (entry.nbytes // entry.shape[0]) * max(1, (itemsize or entry.dtype.itemsize) // entry.dtype.itemsize)
    rows = max(1, PART_BYTES // max(1, row_bytes))
    return max(head_dim, rows - rows % head_dim)


def expected_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    """Full shape of every Meta tensor of `arch`, in model order."""
    sizes = {"V": arch.vocab_size, "D": arch.dim, "F": arch.hidden_dim,
             "Q": arch.n_heads * arch.head_dim, "K": arch.n_kv_heads * arch.head_dim}
    out = {}
    for key in keymap.canonical_keys(arch.n_layers, tied=arch.tied):
        rule, _ = keymap.lookup(key, "meta")
        out[key] = tuple(sizes[s] for s in rule.shape)
    return out
