"""A small, faithful forward pass of Meta's Llama model code, run on Meta's own shards.

This follows `llama/model.py` of Meta's llama (1/2) and llama3 / llama-models repos line
for line where it matters: RMSNorm in float32, rotary embeddings as complex products on
*adjacent* pairs (`view_as_complex`), llama3 frequency scaling (`apply_scaling`),
grouped-query attention with `repeat_kv`, SwiGLU `w2(silu(w1 x) * w3 x)`, the embedding as
output projection when the checkpoint has no `output.weight`.

It guesses nothing: the llama3 scaling (`rope`) comes from decide.py (params.json + the
release errata), where Meta's own code would hard-code factor 8. Tokens may sit at any
position ids (the check's spread batch reaches the scaled long-wavelength frequencies).

It does not merge model-parallel shards. Like fairscale's layers it runs every rank on
its own slice and combines them the way the collective ops would: ColumnParallel
outputs are gathered, RowParallel outputs are summed, ParallelEmbedding (Llama 1/2)
gathers along the model dim, VocabParallelEmbedding (Llama 3) masks and sums. So it
checks a converter's merge dims and rotary permutation independently of the converter.

Weights come from `weights(rank, name)` as tensors or `stream.Rows` and are multiplied one
row block at a time (stream.py), each block once for every batch, which keeps the memory of a
check bounded by one block of one tensor however big the model is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from llamakit.convert.stream import Rows, as_rows, linear

Weights = Callable[[int, str], "torch.Tensor | Rows"]  # (rank, Meta key) -> that rank's shard, any float dtype


@dataclass
class ModelArgs:
    """Meta's ModelArgs, from params.json."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    vocab_size: int = -1
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    use_scaled_rope: bool = False

    @classmethod
    def from_params(cls, params: dict) -> "ModelArgs":
        return cls(**{k: v for k, v in params.items() if k in cls.__dataclass_fields__})


def apply_scaling(freqs: torch.Tensor, scale_factor: float, low_freq_factor: float, high_freq_factor: float,
                  old_context_len: int) -> torch.Tensor:
    """Meta's llama3 `apply_scaling` (vectorised as in llama-models 0.3.0), with its constants as arguments."""
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / freqs
    new_freqs = torch.where(wavelen > low_freq_wavelen, freqs / scale_factor, freqs)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    return torch.where((wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen),
                       (1 - smooth) * new_freqs / scale_factor + smooth * new_freqs, new_freqs)


def precompute_freqs_cis(args: ModelArgs, positions: torch.Tensor, rope: dict | None,
                         freq_factors: torch.Tensor | None = None) -> torch.Tensor:
    """Rotations at `positions` ([seq] ids); `rope`: the decided llama3 scaling, required when use_scaled_rope;
    `freq_factors`: llama.cpp's rope_freqs instead (each frequency divided by its factor, as llama.cpp runs it)."""
    dim = args.dim // args.n_heads
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    if freq_factors is not None:
        freqs = freqs / freq_factors
    elif args.use_scaled_rope:
        if not rope:
            raise ValueError("use_scaled_rope needs the decided llama3 scaling (decide.py)")
        freqs = apply_scaling(freqs, rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"],
                              rope["original_max_position_embeddings"])
    freqs = torch.outer(positions.to(torch.float32), freqs)
    return torch.polar(torch.ones_like(freqs), freqs)


def apply_rotary_emb(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    freqs_cis = freqs_cis.view(1, xq_.shape[1], 1, xq_.shape[-1])
    xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(3)
    xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    bs, slen, n_kv_heads, head_dim = x.shape
    if n_rep == 1:
        return x
    return x[:, :, :, None, :].expand(bs, slen, n_kv_heads, n_rep, head_dim).reshape(bs, slen, n_kv_heads * n_rep, head_dim)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return out.type_as(x) * weight


def lin(xs: list[torch.Tensor], w) -> list[torch.Tensor]:
    """Every batch's activations through one weight, each of its row blocks read once for all of them."""
    y = linear(torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]), w)
    out, a = [], 0
    for x in xs:
        n = x[..., 0].numel()
        out.append(y[a:a + n].reshape(*x.shape[:-1], -1))
        a += n
    return out


def attention(args: ModelArgs, mp: int, w: Weights, i: int, xs: list[torch.Tensor], freqs: list, masks: list) -> list:
    n_kv_heads = args.n_kv_heads or args.n_heads
    n_local_heads, n_local_kv_heads = args.n_heads // mp, n_kv_heads // mp
    n_rep = n_local_heads // n_local_kv_heads
    head_dim = args.dim // args.n_heads
    outs = [0] * len(xs)
    for rank in range(mp):  # each rank owns n_local_heads heads: ColumnParallel wq/wk/wv, RowParallel wo
        p = f"layers.{i}.attention."
        qs, ks, vs = (lin(xs, w(rank, p + f"{t}.weight")) for t in ("wq", "wk", "wv"))
        os_ = []
        for x, xq, xk, xv, freqs_cis, mask in zip(xs, qs, ks, vs, freqs, masks):
            bsz, seqlen, _ = x.shape
            xq = xq.view(bsz, seqlen, n_local_heads, head_dim)
            xk = xk.view(bsz, seqlen, n_local_kv_heads, head_dim)
            xv = xv.view(bsz, seqlen, n_local_kv_heads, head_dim)
            xq, xk = apply_rotary_emb(xq, xk, freqs_cis)
            keys, values = repeat_kv(xk, n_rep), repeat_kv(xv, n_rep)
            xq, keys, values = xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2)
            scores = torch.matmul(xq, keys.transpose(2, 3)) / math.sqrt(head_dim)
            scores = F.softmax((scores + mask).float(), dim=-1).type_as(xq)
            os_.append(torch.matmul(scores, values).transpose(1, 2).contiguous().view(bsz, seqlen, -1))
        outs = [o + y for o, y in zip(outs, lin(os_, w(rank, p + "wo.weight")))]  # the all-reduce of RowParallelLinear
    return outs


def feed_forward(mp: int, w: Weights, i: int, xs: list[torch.Tensor]) -> list:
    outs = [0] * len(xs)
    for rank in range(mp):
        p = f"layers.{i}.feed_forward."
        g, u = lin(xs, w(rank, p + "w1.weight")), lin(xs, w(rank, p + "w3.weight"))
        outs = [o + y for o, y in zip(outs, lin([F.silu(a) * b for a, b in zip(g, u)], w(rank, p + "w2.weight")))]
    return outs


def embed(args: ModelArgs, mp: int, w: Weights, tokens: torch.Tensor) -> torch.Tensor:
    shards = [as_rows(w(rank, "tok_embeddings.weight")) for rank in range(mp)]
    if shards[0].shape[1] != args.dim:  # ParallelEmbedding: each rank holds a slice of the model dim
        return torch.cat([e.take(tokens) for e in shards], dim=-1)
    out, start = 0, 0  # VocabParallelEmbedding: each rank holds a slice of the vocabulary
    for e in shards:
        local = tokens - start
        hit = (local >= 0) & (local < e.shape[0])
        out = out + e.take(local.clamp(0, e.shape[0] - 1)) * hit[..., None]
        start += e.shape[0]
    return out


def output(args: ModelArgs, mp: int, w: Weights, hs: list[torch.Tensor], *, has_output: bool) -> list:
    name = "output.weight" if has_output else "tok_embeddings.weight"
    shards = [as_rows(w(rank, name)) for rank in range(mp)]
    if shards[0].shape[1] != args.dim:  # tied to a dim-split embedding: partial sums over the model dim
        widths = [s.shape[1] for s in shards]
        parts = [lin([torch.split(h, widths, dim=-1)[r] for h in hs], s) for r, s in enumerate(shards)]
        return [sum(p[j] for p in parts).float() for j in range(len(hs))]
    parts = [lin(hs, s) for s in shards]  # ColumnParallelLinear(gather_output=True)
    return [torch.cat([p[j] for p in parts], dim=-1).float() for j in range(len(hs))]


def forward(params: dict, weights: Weights, tokens: torch.Tensor, *, mp: int = 1, has_output: bool = True,
            rope: dict | None = None, positions: torch.Tensor | None = None,
            freq_factors: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [batch, seq, vocab] in float32 for `tokens` [batch, seq] at `positions` [seq] (default 0..seq-1).
    `has_output`: the checkpoint holds output.weight (else the embedding projects); `rope`: decided llama3 scaling."""
    return forward_batches(params, weights, [(tokens, positions)], mp=mp, has_output=has_output, rope=rope,
                           freq_factors=freq_factors)[0]


@torch.no_grad()
def forward_batches(params: dict, weights: Weights, batches: list, *, mp: int = 1, has_output: bool = True,
                    rope: dict | None = None, freq_factors: torch.Tensor | None = None) -> list[torch.Tensor]:
    """`forward` for several (tokens, positions or None) batches in one pass over the weights: each row block of
    each tensor is read once for all of them, and only one block is held at a time."""
    args = ModelArgs.from_params(params)
    freqs, masks = [], []
    for tokens, positions in batches:
        seqlen = tokens.shape[1]
        freqs.append(precompute_freqs_cis(args, torch.arange(seqlen) if positions is None else positions, rope,
                                          freq_factors))
        masks.append(torch.triu(torch.full((seqlen, seqlen), float("-inf")), diagonal=1))
    every = torch.cat([t.reshape(-1) for t, _ in batches])  # one embedding lookup for all batches
    flat = embed(args, mp, weights, every)
    hs, a = [], 0
    for tokens, _ in batches:
        hs.append(flat[a:a + tokens.numel()].reshape(*tokens.shape, -1))
        a += tokens.numel()

    def norm(name: str, xs: list) -> list:
        weight = as_rows(weights(0, name)).full()
        return [rms_norm(x, weight, args.norm_eps) for x in xs]

    for i in range(args.n_layers):
        att = attention(args, mp, weights, i, norm(f"layers.{i}.attention_norm.weight", hs), freqs, masks)
        hs = [h + o for h, o in zip(hs, att)]
        ff = feed_forward(mp, weights, i, norm(f"layers.{i}.ffn_norm.weight", hs))
        hs = [h + o for h, o in zip(hs, ff)]
    return output(args, mp, weights, norm("norm.weight", hs), has_output=has_output)
