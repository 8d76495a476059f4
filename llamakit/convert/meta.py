"""Meta's original format: consolidated.NN.pth model-parallel shards + params.json (+ checklist.chk).

`plan_shards` is the pure part: from params.json and each shard's {key: shape} it derives
the model-parallel degree, how tok_embeddings was split, the full shape of every tensor
and the `Arch`, or says precisely what is inconsistent. `MetaSource` adds the I/O: lazy
mmap'd shards, merged one tensor at a time. `write_meta` splits any source into N shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from llamakit.convert import keymap
from llamakit.convert.arch import Arch, meta_ffn_dim, validate_params_json
from llamakit.convert.decide import Decision, Facts, Output, decide, params_json, rope_from_params
from llamakit.convert.output import FileSpan, coalesce
from llamakit.convert.pth import PthWriter, load_pth, prefetch, release
from llamakit.convert.pth_index import read_index
from llamakit.errors import ConversionError, InputFileError

if TYPE_CHECKING:
    import torch

SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")


@dataclass(frozen=True)
class Entry:
    """One tensor of the canonical (merged Meta) state dict."""

    name: str
    shape: tuple[int, ...]
    dtype: "torch.dtype"

    @property
    def nbytes(self) -> int:
        import math

        return math.prod(self.shape) * self.dtype.itemsize


PART_BYTES = 16 << 20  # tensors stream in dim-0 blocks of about this size


def part_rows(entry: Entry, head_dim: int, itemsize: int | None = None) -> int:
    """Rows per streamed block: whole heads (the rotary permutation works per head), ~PART_BYTES each."""
    if len(entry.shape) == 1:
        return entry.shape[0]
    row_bytes = (entry.nbytes // entry.shape[0]) * max(1, (itemsize or entry.dtype.itemsize) // entry.dtype.itemsize)
    rows = max(1, PART_BYTES // max(1, row_bytes))
    return max(head_dim, rows - rows % head_dim)


@dataclass(frozen=True)
class ShardPlan:
    arch: Arch
    mp: int
    entries: list[Entry]
    split_dims: dict[str, int | None]
    decision: Decision | None = None
    has_output: bool = True  # the shards hold output.weight (Meta's code always has one; old tied exports lack it)


def shard_files(directory: Path) -> list[Path]:
    """consolidated.NN.pth in rank order; a gap in the numbering is a missing shard."""
    found = {int(m.group(1)): p for p in directory.iterdir() if (m := SHARD_RE.match(p.name))}
    if not found:
        raise InputFileError("no consolidated.NN.pth shards", path=directory, fix="point at a Meta checkpoint directory")
    missing = [f"consolidated.{i:02d}.pth" for i in range(max(found) + 1) if i not in found]
    if missing:
        raise InputFileError(f"missing shard(s) {', '.join(missing)}", path=directory, fix="re-download the checkpoint")
    return [found[i] for i in range(len(found))]


def plan_shards(params: dict, shards: list[dict[str, tuple[tuple[int, ...], "torch.dtype"]]], *,
                where: Path, output_same: Callable[[], bool] | None = None,
                legacy_hint: bool | None = None) -> ShardPlan:
    """The merged layout of Meta shards, from shapes alone, and the architecture decided from it (decide.py).

    `output_same()` says whether output.weight holds the same bytes as tok_embeddings.weight (only asked
    when both are there; None: treat them as distinct). `legacy_hint`: with one shard the embedding split is
    invisible, so the tokenizer says which code wrote it (sentencepiece: Llama 1/2)."""
    n = len(shards)
    names = [f"consolidated.{r:02d}.pth" for r in range(n)]
    keys0 = [k for k in shards[0] if k not in keymap.DROPPED_META]
    for r in range(1, n):
        ks = [k for k in shards[r] if k not in keymap.DROPPED_META]
        if set(ks) != set(keys0):
            diff = sorted(set(ks) ^ set(keys0))[:3]
            raise ConversionError(f"{names[r]} and {names[0]} hold different tensors ({', '.join(diff)})", path=where)
    rules = {k: keymap.lookup(k, "meta", path=where / names[0]) for k in keys0}

    dim, n_heads = params["dim"], params["n_heads"]
    head_dim = dim // n_heads
    if "layers.0.attention.wq.weight" not in rules or "tok_embeddings.weight" not in rules:
        raise ConversionError("no layers.0.attention.wq.weight / tok_embeddings.weight: not a Llama checkpoint", path=where)
    for norm in ("norm.weight", "layers.0.attention_norm.weight"):  # replicated on every shard: whole at any MP
        shape = tuple(shards[0][norm][0]) if norm in shards[0] else None
        if shape is not None and shape != (dim,):
            # checked before the shard count: a bigger model's params.json must not read as missing shards
            raise ConversionError(f"the shards' shapes disagree with params.json: '{norm}' is {shape}, params.json's "
                                  f"dim {dim} implies ({dim},)", path=where / "params.json",
                                  fix="params.json belongs to another model; use the one shipped with these shards")
    wq_rows = shards[0]["layers.0.attention.wq.weight"][0][0]
    if wq_rows * n != n_heads * head_dim:
        mp_shapes = (n_heads * head_dim) // wq_rows if wq_rows and (n_heads * head_dim) % wq_rows == 0 else None
        if mp_shapes and mp_shapes > n:
            gone = ", ".join(f"consolidated.{r:02d}.pth" for r in range(n, mp_shapes))
            raise ConversionError(f"missing shard(s) {gone}: the shard shapes say MP {mp_shapes} but {n} shard(s) are present",
                                  path=where, fix="re-download the checkpoint")
        raise ConversionError(f"shard shapes do not match params.json (wq has {wq_rows} rows per shard in {n} shard(s), "
                              f"dim {dim})", path=where, fix="params.json belongs to another model")
    emb_cols = shards[0]["tok_embeddings.weight"][0][1]
    legacy = n > 1 and emb_cols * n == dim  # ParallelEmbedding split the model dim
    if emb_cols not in (dim, dim // n if n > 1 else dim):
        raise ConversionError(f"tok_embeddings has {emb_cols} columns per shard, dim is {dim}", path=where)

    split_dims, full = {}, {}
    for key, (rule, _) in rules.items():
        d = keymap.split_dim(rule, legacy_embedding=legacy)
        shapes = [s[key][0] for s in shards]
        dtypes = {s[key][1] for s in shards}
        if len(set(shapes)) != 1 or len(dtypes) != 1:
            raise ConversionError(f"'{key}' differs between shards: {', '.join(f'{nm} {tuple(sh)}' for nm, sh in zip(names, shapes))}",
                                  path=where, fix="the shards come from different checkpoints")
        shape = list(shapes[0])
        if d is not None:
            shape[d] *= n
        split_dims[key], full[key] = d, (tuple(shape), dtypes.pop())

    emb_shape = full["tok_embeddings.weight"][0]
    output: Output = "absent"
    if "output.weight" in full:
        if full["output.weight"][0] != emb_shape:
            raise ConversionError(f"output.weight merges to {full['output.weight'][0]}, tok_embeddings to {emb_shape}",
                                  path=where, fix="the shards come from different checkpoints")
        output = "same_as_embedding" if output_same is not None and output_same() else "distinct"
    if n == 1:
        legacy = legacy_hint if legacy_hint is not None else params.get("vocab_size", -1) == -1
    w1 = full.get("layers.0.feed_forward.w1.weight")
    hidden = w1[0][0] if w1 else meta_ffn_dim(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier"))
    base = Arch.from_params_json(params, path=where / "params.json", vocab_size=emb_shape[0], hidden_dim=hidden,
                                 tied=output != "distinct", legacy_embedding=legacy, rope_given=rope_from_params(params))
    decision = decide(Facts(base, bool(params.get("use_scaled_rope")), output, context_given=False))
    arch = decision.arch
    expected = expected_shapes(arch)
    missing = [k for k in expected if k not in full]
    if missing:
        raise ConversionError(f"missing tensor(s) {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}",
                              path=where / names[0], fix="the checkpoint is incomplete")
    for key, (shape, _) in full.items():
        if key == "output.weight" and arch.tied:
            continue  # the embedding again (checked above): converted as the tie, written back by write_meta
        if key not in expected:
            raise ConversionError(f"'{key}' is beyond n_layers={arch.n_layers} of params.json", path=where / names[0])
        if shape != expected[key]:
            raise ConversionError(f"'{key}' merges to {shape}, params.json implies {expected[key]}", path=where)
    entries = [Entry(k, expected[k], full[k][1]) for k in expected]
    return ShardPlan(arch, n, entries, split_dims, decision, "output.weight" in full)


def refuse_fp8(directory: Path, params: dict) -> None:
    """Meta's FP8 releases (Llama 3.1 405B FP8) keep fp8 weights with per-row scales in fp8_scales_N.pt beside each
    shard, for Meta's fp8 inference kernels; neither transformers' Llama nor Meta's bf16 layout holds them."""
    scales = sorted(p.name for p in directory.glob("fp8_scales_*.pt"))
    if not scales:
        return
    from llamakit import catalog
    from llamakit.errors import LlamakitError

    try:
        names = [r.name for r in catalog.list_releases() if r.quantization and r.quantization.startswith("fp8")
                 and (r.meta.dim, r.meta.n_layers) == (params.get("dim"), params.get("n_layers"))]
    except LlamakitError:
        names = []
    what = f" ({' / '.join(names)})" if names else ""
    raise ConversionError(f"an FP8 checkpoint{what}: {scales[0]} holds fp8 scales that neither transformers' Llama nor "
                          "Meta's bf16 layout can take", path=directory,
                          fix="fetch and convert the bf16 release instead (e.g. `llamakit fetch llama-3.1-405b`, MP8, "
                              "or llama-3.1-405b-mp16), or use Meta's fp8 inference code as is")


def expected_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    """Full shape of every Meta tensor of `arch`, in model order."""
    sizes = {"V": arch.vocab_size, "D": arch.dim, "F": arch.hidden_dim,
             "Q": arch.n_heads * arch.head_dim, "K": arch.n_kv_heads * arch.head_dim}
    out = {}
    for key in keymap.canonical_keys(arch.n_layers, tied=arch.tied):
        rule, _ = keymap.lookup(key, "meta")
        out[key] = tuple(sizes[s] for s in rule.shape)
    return out


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
        refuse_fp8(self.path, self.params)
        self._files = files
        self._index = [read_index(f) for f in files]
        self._loaded = None if torch_free else [load_pth(f) for f in files]
        if torch_free:
            shapes = [{k: (r.shape, r.dtype) for k, r in ix.items()} for ix in self._index]
        else:
            shapes = [{k: (tuple(t.shape), t.dtype) for k, t in s.items()} for s in self._loaded]
            for f, ix, sh in zip(files, self._index, shapes):
                if {k: r.shape for k, r in ix.items()} != {k: v[0] for k, v in sh.items()}:
                    raise InputFileError("the zip records and torch.load disagree on the tensors", path=f,
                                         fix="re-download it and check it against checklist.chk (`llamakit verify`)")
        from llamakit.convert.tokenizer import find_meta_tokenizer, tokenizer_kind

        self.tokenizer_path = find_meta_tokenizer(self.path)
        kind = tokenizer_kind(self.tokenizer_path) if self.tokenizer_path else None
        self.plan = plan_shards(self.params, shapes, where=self.path, output_same=self._output_same_as_embedding,
                                legacy_hint=(kind == "sentencepiece") if kind else None)
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

    def _merged(self, name: str):
        import torch

        d = 1 if name == "tok_embeddings.weight" and self._index[0][name].shape[1] * len(self._files) == \
            int(self.params["dim"]) and len(self._files) > 1 else 0
        return torch.cat([s[name] for s in self._shards], dim=d)

    @property
    def _shards(self) -> list[dict[str, "torch.Tensor"]]:
        if self._loaded is None:
            self._loaded = [load_pth(f) for f in self._files]
        return self._loaded

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

    def shard_weights(self) -> Callable[[int, str], "torch.Tensor"]:
        """(rank, key) -> that shard's tensor in float32, for the reference forward."""

        def get(rank: int, name: str):
            import torch

            t = self._shards[rank][name]
            out = t.to(torch.float32, copy=True)
            release(t)
            return out

        return get


def write_meta(source, out: Path, *, mp: int, dtype, progress: Callable[[str, int], None]) -> list[Path]:
    """Split `source` into `mp` consolidated.NN.pth files + params.json + checklist.chk, block by block."""
    arch = source.arch
    entries = source.entries()
    # (entry, the source tensor it is read from): Meta's code always has an output projection, so a tied
    # model gets output.weight as a copy of the embedding, as Meta ships Llama 3.2 1B/3B.
    sources = [(e, e.name) for e in entries]
    if arch.tied:
        emb = next(e for e in entries if e.name == "tok_embeddings.weight")
        sources.append((Entry("output.weight", emb.shape, emb.dtype), emb.name))
    plans = []
    for e, src_name in sources:
        rule, _ = keymap.lookup(e.name, "meta")
        d = keymap.split_dim(rule, legacy_embedding=arch.legacy_embedding)
        shard_shape = list(e.shape)
        if d is not None:
            shard_shape[d] //= mp
        plans.append((e, d, tuple(shard_shape), dtype or e.dtype, src_name))
    paths = [out / f"consolidated.{r:02d}.pth" for r in range(mp)]
    writers = [PthWriter(p, [(e.name, shape, dt) for e, _, shape, dt, _ in plans]) for p in paths]
    try:
        for e, d, shard_shape, out_dtype, src_name in plans:
            for w in writers:
                w.begin(e.name)
            row = 0  # rows of the full tensor written so far (dim-0 splits send each row to one shard)
            for part in source.parts(src_name, part_rows(e, arch.head_dim, out_dtype.itemsize)):
                if part.dtype != out_dtype:
                    part = part.to(out_dtype)
                if d is None:
                    for w in writers:
                        w.write(part)
                elif d == 1:
                    for w, chunk in zip(writers, part.chunk(mp, dim=1)):
                        w.write(chunk)
                else:
                    while part.shape[0]:
                        r, within = divmod(row, shard_shape[0])
                        take = min(part.shape[0], shard_shape[0] - within)
                        writers[r].write(part[:take])
                        part, row = part[take:], row + take
            for w in writers:
                w.end()
            progress(e.name, e.nbytes)
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    (out / "params.json").write_text(json.dumps(params_json(arch), indent=2) + "\n")
    write_checklist(out)
    return paths + [out / "params.json", out / "checklist.chk"]


def write_checklist(directory: Path) -> Path:
    """checklist.chk as Meta ships it: `md5  name` for every file beside it."""
    lines = []
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name != "checklist.chk":
            h = hashlib.md5(usedforsecurity=False)
            with open(p, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
            lines.append(f"{h.hexdigest()}  {p.name}\n")
    path = directory / "checklist.chk"
    path.write_text("".join(lines))
    return path
