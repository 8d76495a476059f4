"""Planning a Meta checkpoint (consolidated.NN.pth shards + params.json) from shapes alone.

`plan_shards` is the pure part: from params.json and each shard's {key: shape} it derives the
model-parallel degree, how tok_embeddings was split, the full shape of every tensor and the `Arch`
(decided in decide.py), or says precisely what is inconsistent. `shard_files` finds the shards,
`refuse_quantized` (convert/quantized.py) turns away the FP8 and INT4 releases. The I/O (reading the shards) is meta.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from llamakit.convert import keymap
from llamakit.convert.arch import Arch, meta_ffn_dim
from llamakit.convert.decide import Decision, Facts, Output, decide, rope_from_params
from llamakit.convert.entries import Entry, expected_shapes
from llamakit.convert.quantized import refuse_quantized  # noqa: F401 - one refusal for Llama 3 and 4 (convert/quantized.py)
from llamakit.errors import ConversionError, InputFileError

if TYPE_CHECKING:
    import torch

SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")


@dataclass(frozen=True)
class ShardPlan:
    arch: Arch
    mp: int
    entries: list[Entry]
    split_dims: dict[str, int | None]
    decision: Decision | None = None
    has_output: bool = True  # the shards hold output.weight (Meta's code always has one; old tied exports lack it)


SINGLE_SHARD = "consolidated.pth"  # an MP-1 checkpoint's one file as the HF repos' original/ folders of Llama 3.2
# Vision name it; Meta's own download (and llamakit's writer) names the same file consolidated.00.pth


def shard_files(directory: Path) -> list[Path]:
    """consolidated.NN.pth in rank order (a gap in the numbering is a missing shard), or the one consolidated.pth."""
    found = {int(m.group(1)): p for p in directory.iterdir() if (m := SHARD_RE.match(p.name))}
    single = directory / SINGLE_SHARD
    if single.is_file():
        if found:
            raise InputFileError(f"both {SINGLE_SHARD} and consolidated.NN.pth shards: two checkpoints in one folder",
                                 path=directory, fix=f"keep either {SINGLE_SHARD} or the numbered shards")
        return [single]
    if not found:
        raise InputFileError("no consolidated.NN.pth shards", path=directory, fix="point at a Meta checkpoint directory")
    missing = [f"consolidated.{i:02d}.pth" for i in range(max(found) + 1) if i not in found]
    if missing:
        raise InputFileError(f"missing shard(s) {', '.join(missing)}", path=directory, fix="re-download the checkpoint")
    return [found[i] for i in range(len(found))]


def plan_shards(params: dict, shards: list[dict[str, tuple[tuple[int, ...], "torch.dtype"]]], *,
                where: Path, output_same: Callable[[], bool] | None = None,
                legacy_hint: bool | None = None, names: list[str] | None = None) -> ShardPlan:
    """The merged layout of Meta shards, from shapes alone, and the architecture decided from it (decide.py).

    `output_same()` says whether output.weight holds the same bytes as tok_embeddings.weight (only asked
    when both are there; None: treat them as distinct). `legacy_hint`: with one shard the embedding split is
    invisible, so the tokenizer says which code wrote it (sentencepiece: Llama 1/2). `names`: the shards' file
    names, for messages (default consolidated.NN.pth)."""
    n = len(shards)
    names = names or [f"consolidated.{r:02d}.pth" for r in range(n)]
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
