"""Meta's original format, read: consolidated.NN.pth model-parallel shards + params.json (+ checklist.chk).

`MetaSource` is the I/O: lazy mmap'd shards, merged one tensor at a time (or handed out as byte
ranges of the shard files). Planning from shapes is meta_plan.py's, writing meta_write.py's; their
public names are importable from here too.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from llamakit.convert.arch import validate_params_json
from llamakit.convert.entries import Entry, expected_shapes, part_rows  # noqa: F401 (re-exported)
from llamakit.convert.meta_plan import SHARD_RE, ShardPlan, plan_shards, refuse_quantized, shard_files  # noqa: F401
from llamakit.convert.meta_write import write_checklist, write_meta  # noqa: F401 (re-exported)
from llamakit.convert.output import FileSpan, coalesce
from llamakit.convert.pth import load_pth, prefetch, release
from llamakit.convert.pth_index import read_index
from llamakit.errors import ConversionError, InputFileError

if TYPE_CHECKING:
    import torch


def _same_bytes(files: list[Path], recs, name: str, where: Path, chunk: int = 16 << 20) -> None:
    """A replicated tensor's copies must agree byte for byte (read in chunks; they are norms, small)."""
    fds = [os.open(f, os.O_RDONLY) for f in files]
    try:
        for a in range(0, recs[0].nbytes, chunk):
            n = min(chunk, recs[0].nbytes - a)
            first = os.pread(fds[0], n, recs[0].offset + a)
            for r, (fd, rec) in enumerate(zip(fds[1:], recs[1:]), 1):
                if os.pread(fd, n, rec.offset + a) != first:
                    raise ConversionError(f"replicated tensor '{name}' differs between consolidated.00 and .{r:02d}",
                                          path=where, fix="the shards come from different checkpoints")
    finally:
        for fd in fds:
            os.close(fd)


class MetaSource:
    """A Meta checkpoint directory, read lazily: each tensor merged from its shards on demand."""

    fmt = "meta"

    def __init__(self, directory: Path, *, torch_free: bool = False):
        """`torch_free`: plan from the zip records alone (llamakit/convert/pth_index.py) and give entries
        `pth_index.DType`s, for a conversion that only copies bytes (`spans`); torch is then imported only
        if tensors are asked for after all. Otherwise every shard is also loaded by torch.load up front."""
        self.path = Path(directory)
        files = shard_files(self.path)
        self.params = validate_params_json(self.path / "params.json")
        refuse_quantized(self.path, self.params)
        self._files = files
        self._index = [read_index(f) for f in files]
        self._loaded = None
        self._loading = threading.Lock()  # the writer and the check's worker thread may both ask first
        if torch_free:
            shapes = [{k: (r.shape, r.dtype) for k, r in ix.items()} for ix in self._index]
        else:
            shapes = [{k: (tuple(t.shape), t.dtype) for k, t in s.items()} for s in self._shards]
        from llamakit.convert.tokenizer import find_meta_tokenizer, tokenizer_kind

        self.tokenizer_path = find_meta_tokenizer(self.path)
        kind = tokenizer_kind(self.tokenizer_path) if self.tokenizer_path else None
        self.plan = plan_shards(self.params, shapes, where=self.path, output_same=self._output_same_as_embedding,
                                legacy_hint=(kind == "sentencepiece") if kind else None, names=[f.name for f in files])
        self.arch, self.mp = self.plan.arch, self.plan.mp
        self.decision = self.plan.decision
        self.catalog = self.decision.catalog

    def _output_same_as_embedding(self, chunk: int = 16 << 20) -> bool:
        """Whether output.weight holds exactly tok_embeddings.weight's bytes (Llama 3.2 1B/3B: Meta stores the tied
        projection twice). Shard by shard from the zip records: both are split along the vocabulary in
        Llama 3 checkpoints; an untied model differs in its first chunk, so this costs one read there."""
        out = [ix["output.weight"] for ix in self._index]
        emb = [ix["tok_embeddings.weight"] for ix in self._index]
        if any(str(o.dtype) != str(e.dtype) for o, e in zip(out, emb)):
            return False
        if not all(o.contiguous and e.contiguous and o.shape == e.shape for o, e in zip(out, emb)):
            if self._first_rows_differ(out, emb):  # an untied model: known from a few KiB, without torch
                return False
            import torch  # a dim-split (Llama 1/2) embedding or an unusual layout: compare merged tensors

            return torch.equal(self._merged("output.weight"), self._merged("tok_embeddings.weight"))
        for f, o, e in zip(self._files, out, emb):
            fd = os.open(f, os.O_RDONLY)
            try:
                for a in range(0, o.nbytes, chunk):
                    n = min(chunk, o.nbytes - a)
                    if os.pread(fd, n, o.offset + a) != os.pread(fd, n, e.offset + a):
                        return False
            finally:
                os.close(fd)
        return True

    def _first_rows_differ(self, out, emb) -> bool:
        """Row 0 of output.weight (vocab-split: shard 0's first row) against row 0 of a dim-split embedding
        (each shard's first row, concatenated), compared as bytes. False when they agree or the layout is not
        those two contiguous splits: the caller then compares whole tensors."""
        dim = int(self.params["dim"])
        if not all(r.contiguous and len(r.shape) == 2 for r in out + emb) or out[0].shape[1] != dim \
                or sum(e.shape[1] for e in emb) != dim:
            return False
        item = out[0].nbytes // (out[0].shape[0] * dim)
        with open(self._files[0], "rb") as f:
            f.seek(out[0].offset)
            first_out = f.read(dim * item)
        first_emb = b""
        for path, e in zip(self._files, emb):
            with open(path, "rb") as f:
                f.seek(e.offset)
                first_emb += f.read(e.shape[1] * item)
        return first_out != first_emb

    def _merged(self, name: str):
        import torch

        d = 1 if name == "tok_embeddings.weight" and self._index[0][name].shape[1] * len(self._files) == \
            int(self.params["dim"]) and len(self._files) > 1 else 0
        return torch.cat([s[name] for s in self._shards], dim=d)

    @property
    def _shards(self) -> list[dict[str, "torch.Tensor"]]:
        """The shards as torch.load maps them, loaded on first use (a torch-free conversion may never need them;
        the check loads them while the weights are being copied). Their tensors must be the zip records'."""
        with self._loading:
            if self._loaded is None:
                self._loaded = self._load_checked()
        return self._loaded

    def _load_checked(self) -> list[dict[str, "torch.Tensor"]]:
        loaded = [load_pth(f) for f in self._files]
        for f, ix, sh in zip(self._files, self._index, loaded):
            if {k: r.shape for k, r in ix.items()} != {k: tuple(t.shape) for k, t in sh.items()}:
                raise InputFileError("the zip records and torch.load disagree on the tensors", path=f,
                                     fix="re-download it and check it against checklist.chk (`llamakit verify`)")
        return loaded

    def entries(self) -> list[Entry]:
        return self.plan.entries

    def load(self, name: str) -> "torch.Tensor":
        """The merged tensor (a fresh copy; the shards' pages are handed back)."""
        import torch

        return torch.cat([block.clone() for block in self.parts(name, 1 << 62)], dim=0)

    def parts(self, name: str, rows: int):
        """The merged tensor as consecutive dim-0 blocks of at most `rows` rows, without merging it whole.

        Blocks of a dim-0 split are views of the mapped shard (no copy); dim-1 splits are
        concatenated block by block. Pages are handed back as each block is consumed."""
        import torch

        d = self.plan.split_dims[name]
        pieces = self._pieces(name)
        if d is None or d == 0:
            for p in pieces:
                for a in range(0, p.shape[0], rows):
                    block = p[a:a + rows]
                    prefetch(block)
                    yield block
                    release(block)
            return
        for a in range(0, pieces[0].shape[0], rows):
            blocks = [p[a:a + rows] for p in pieces]
            for b in blocks:
                prefetch(b)
            yield torch.cat(blocks, dim=1)
            for b in blocks:
                release(b)

    def _pieces(self, name: str) -> list["torch.Tensor"]:
        """Each shard's piece of `name`; a replicated tensor's copies must agree, and only shard 0's is kept."""
        import torch

        pieces = [s[name] for s in self._shards]
        if self.plan.split_dims[name] is None:
            for r, p in enumerate(pieces[1:], 1):
                if not torch.equal(p, pieces[0]):
                    raise ConversionError(f"replicated tensor '{name}' differs between consolidated.00 and .{r:02d}",
                                          path=self.path, fix="the shards come from different checkpoints")
            for p in pieces[1:]:
                release(p)
            pieces = pieces[:1]
        return pieces

    def spans(self, name: str, order: list[int] | None = None) -> list[FileSpan] | None:
        """The merged tensor's bytes as ranges of the shard files, in output order, for writers to move with
        copy_file_range instead of through memory. Read from the zip records alone (no tensor is touched).

        A dim-0 split is shard 0's rows, then shard 1's, ...; a replicated tensor is shard 0's copy (the
        others must hold the same bytes); a dim-1 split is each row's pieces side by side. `order` reorders
        the merged rows (row i of the output is row order[i]: the rotary permutation). Adjacent ranges are
        merged. None when a piece is not stored contiguously (callers then copy the slow way)."""
        d = self.plan.split_dims[name]
        recs = [ix[name] for ix in self._index]
        if not all(r.contiguous for r in recs):
            return None
        if d is None:
            _same_bytes(self._files, recs, name, self.path)
            recs = recs[:1]
        where = [(f, r.offset, r.nbytes) for f, r in zip(self._files, recs)]
        if order is None and d in (None, 0):
            return [FileSpan(*w) for w in where]
        rows = recs[0].shape[0]
        if d in (None, 0):
            step = where[0][2] // rows
            merged = order if order is not None else range(rows * len(where))
            return coalesce([FileSpan(where[r // rows][0], where[r // rows][1] + r % rows * step, step) for r in merged])
        merged = order if order is not None else range(rows)
        return coalesce([FileSpan(f, off + r * (n // rows), n // rows) for r in merged for f, off, n in where])

    def shard_weights(self) -> Callable[[int, str], "stream.MappedRows"]:
        """(rank, key) -> that shard's tensor as mapped rows, read a block at a time by the reference forward."""
        from llamakit.convert import stream

        return lambda rank, name: stream.MappedRows(self._shards[rank][name])
