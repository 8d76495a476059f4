"""The bit-identical read-back check of the Llama 4 and Llama 3.2 Vision conversions (llama4_io, mllama_io).

Their converters move bytes without changing them (apart from an optional cast), so their proof is an
inversion: the written files are read back through the other direction's reader, streamed block by block
as the writers stream, and every source tensor must come back bit for bit after the same cast. The
logits proof against Meta's own code lives in the tests (tests/convert/test_llama4*.py, test_mllama.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from llamakit.errors import ConversionError


def same(name: str, want, got, cast, rank: int, family: str) -> None:
    import torch

    if cast is not None:
        want = want.to(cast)
    if want.shape != got.shape or want.dtype != got.dtype or not torch.equal(want, got):
        raise ConversionError(f"'{name}' (shard {rank}) does not read back bit-identical from the written files",
                              fix=f"a bug in llamakit's {family} key map; please report it")


def as_meta_shards(back, source, out: Path, *, cast, family: str, flatten: bool = False,
                   expect: Callable | None = None) -> int:
    """HF output read back as Meta shards (`back.meta_tensors`) against the Meta source's own shards; returns the
    number of tensors. `flatten`: compare 2-D row blocks of a tensor of any rank (Llama 4's fused experts);
    `expect(name, block)`: what the source block should read back as (mllama's unreachable tile cells)."""
    from llamakit.convert.pth import release

    n = 0
    for name, _shape, _dt, blocks in back.meta_tensors(source.mp):
        for r in range(source.mp):
            want = source.shard_tensor(r, name)
            if flatten and want.dim() > 1:
                want = want.reshape(-1, want.shape[-1])
            row = 0
            for b in blocks(r):  # block by block: the check holds no more than the conversion did
                if flatten:
                    b = b.reshape(-1, *want.shape[1:])
                w = want[row:row + b.shape[0]]
                same(name, expect(name, w) if expect else w, b, cast, r, family)
                release(w)  # a view of the mapped source shard
                row += b.shape[0]
            if row != want.shape[0]:
                raise ConversionError(f"'{name}' (shard {r}) reads back {row} of {want.shape[0]} rows", path=out)
        n += 1
    return n


def as_hf_tensors(back, source, out: Path, *, cast, family: str) -> int:
    """Meta output read back as HF tensors (`back.hf_tensors`) against the HF source's; returns the count."""
    n = 0
    for name, shape, _dt, blocks in back.hf_tensors():
        row = 0
        for b in blocks():
            same(name, source.get(name, row, row + b.shape[0]), b, cast, 0, family)
            row += b.shape[0]
        if row != shape[0]:
            raise ConversionError(f"'{name}' reads back {row} of {shape[0]} rows", path=out)
        n += 1
    return n
