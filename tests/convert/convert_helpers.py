"""Helpers for the convert tests (imported by name: pytest puts tests/convert on sys.path): native Meta checkpoints built the way Meta's code lays them out.

The Meta checkpoints here are written with plain `torch.save`, split by this file's own
table of Meta's model-parallel layers, never by llamakit's key map, so a converter bug
cannot be mirrored by the fixture that tests it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch


def _root_conftest():
    # loaded by path: pytest keeps only one module named `conftest` in sys.modules at a time
    spec = importlib.util.spec_from_file_location("_llamakit_root_conftest", Path(__file__).parents[1] / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_root = _root_conftest()
TINY_SHAPES, make_llama_model = _root.TINY_SHAPES, _root.make_llama_model

# params.json for each shared tiny shape, as Meta's code would read it.
META_PARAMS = {
    # Llama 1/2: vocab_size -1 (the tokenizer's), ParallelEmbedding splits the model dim
    "mha": dict(dim=64, n_layers=2, n_heads=8, vocab_size=-1, multiple_of=4, norm_eps=1e-5),
    "gqa": dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=160, multiple_of=32, ffn_dim_multiplier=1.3,
                norm_eps=1e-5, rope_theta=500000.0),
    "rope_scaled": dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=160, multiple_of=32,
                        ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True,
                        rope_original_max_position_embeddings=64),
    "tied": dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=160, multiple_of=256, norm_eps=1e-5,
                 rope_theta=500000.0, use_scaled_rope=True, rope_original_max_position_embeddings=64),
}
LEGACY = {"mha"}  # Llama 1/2 code: tok_embeddings split along dim 1
TIED = {"tied"}  # Llama 3.2 1B/3B: output.weight present, byte-equal to tok_embeddings.weight (as Meta ships them)
VOCAB = {"mha": 128}

# Meta's fairscale layers: ColumnParallelLinear splits dim 0, RowParallelLinear dim 1.
SPLIT = {"wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w2": 1, "w3": 0, "output": 0}


def meta_params(shape: str, mp: int) -> dict:
    """The shape's params, minimally changed so Meta's MP code can split it `mp` ways."""
    p = dict(META_PARAMS[shape])
    kv = p.get("n_kv_heads", p["n_heads"])
    if kv % mp:  # GQA at high MP: more kv heads, keeping two query heads per kv head
        p["n_kv_heads"], p["n_heads"] = mp, 2 * mp
    if ffn_dim(p) % mp:
        p["multiple_of"] = 8 * mp
    return p


def ffn_dim(p: dict) -> int:
    hidden = int(2 * (4 * p["dim"]) / 3)
    if p.get("ffn_dim_multiplier"):
        hidden = int(p["ffn_dim_multiplier"] * hidden)
    return p["multiple_of"] * ((hidden + p["multiple_of"] - 1) // p["multiple_of"])


def full_meta_state(shape: str, p: dict, *, seed: int = 0, dtype=torch.bfloat16, qk_gain: float = 1.0,
                    ) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dim, hd = p["dim"], p["dim"] // p["n_heads"]
    kv = p.get("n_kv_heads", p["n_heads"])
    vocab = p["vocab_size"] if p["vocab_size"] > 0 else VOCAB[shape]
    F = ffn_dim(p)

    def w(*s):
        return (torch.randn(*s, generator=g) * 0.05).to(dtype)

    def norm():
        return (1.0 + 0.1 * torch.randn(dim, generator=g)).to(dtype)

    sd = {"tok_embeddings.weight": w(vocab, dim)}
    for i in range(p["n_layers"]):
        pre = f"layers.{i}."
        sd.update({
            pre + "attention.wq.weight": (w(p["n_heads"] * hd, dim).float() * qk_gain).to(dtype),
            pre + "attention.wk.weight": (w(kv * hd, dim).float() * qk_gain).to(dtype),
            pre + "attention.wv.weight": w(kv * hd, dim), pre + "attention.wo.weight": w(dim, p["n_heads"] * hd),
            pre + "feed_forward.w1.weight": w(F, dim), pre + "feed_forward.w2.weight": w(dim, F),
            pre + "feed_forward.w3.weight": w(F, dim), pre + "attention_norm.weight": norm(), pre + "ffn_norm.weight": norm(),
        })
    sd["norm.weight"] = norm()
    # Meta's Transformer always has an output projection; for the tied 3.2 1B/3B Meta stores the embedding again
    sd["output.weight"] = sd["tok_embeddings.weight"].clone() if shape in TIED else w(vocab, dim)
    return sd


def split_dim(shape: str, key: str) -> int | None:
    if key == "tok_embeddings.weight":
        return 1 if shape in LEGACY else 0
    part = key.split(".")[-2]
    return SPLIT.get(part)


def write_meta_checkpoint(out: Path, shape: str, mp: int, *, seed: int = 0, n_layers: int | None = None,
                          qk_gain: float = 1.0) -> tuple[Path, dict, list[dict]]:
    """A Meta checkpoint dir with `mp` torch.save'd shards; returns (dir, params, shards).
    `qk_gain` scales wq/wk: sharp attention, whose logits feel the rotary positions."""
    out.mkdir(parents=True, exist_ok=True)
    p = meta_params(shape, mp)
    if n_layers:
        p["n_layers"] = n_layers
    full = full_meta_state(shape, p, seed=seed, qk_gain=qk_gain)
    shards = []
    for r in range(mp):
        shard = {}
        for k, t in full.items():
            d = split_dim(shape, k)
            shard[k] = t if d is None else t.chunk(mp, dim=d)[r].clone()
        if shape in LEGACY:  # Llama 1/2 checkpoints carry precomputed rotary frequencies
            shard["rope.freqs"] = torch.ones(p["dim"] // p["n_heads"] // 2, dtype=torch.bfloat16)
        torch.save(shard, out / f"consolidated.{r:02d}.pth")
        shards.append(shard)
    (out / "params.json").write_text(json.dumps(p))
    return out, p, shards


def shard_weights(shards: list[dict]):
    return lambda rank, name: shards[rank][name].float()


def hf_dir(tmp: Path, shape: str, *, seed: int = 0, **overrides) -> Path:
    model = make_llama_model(shape, seed=seed, **overrides)
    out = tmp / f"{shape}-hf"
    model.save_pretrained(out)
    return out
