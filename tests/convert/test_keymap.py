"""The key map, the rotary permutation, and the real 70B / 405B layouts on meta-device tensors."""

from __future__ import annotations

import pytest
import torch

from llamakit.convert import keymap
from llamakit.catalog import get_release
from llamakit.convert.arch import meta_ffn_dim, meta_ffn_params
from llamakit.convert.decide import catalog_matches
from llamakit.convert.meta_plan import plan_shards
from llamakit.errors import UnknownKeyError


def test_every_rule_round_trips_through_every_format():
    for rule in keymap.RULES:
        for layer in (None, 0, 37) if "{i}" in rule.meta else (None,):
            if ("{i}" in rule.meta) != (layer is not None):
                continue
            names = {fmt: keymap.name_of(rule, fmt, layer) for fmt in keymap.FORMATS}
            for a in keymap.FORMATS:
                for b in keymap.FORMATS:
                    assert keymap.rename(names[a], a, b) == names[b]


@pytest.mark.parametrize("key,fmt", [("layers.0.attention.wqkv.weight", "meta"), ("model.layers.0.mlp.fc1.weight", "hf"),
                                     ("blk.0.attn_qkv.weight", "gguf"), ("layers.x.attention.wq.weight", "meta")])
def test_unknown_key_is_named(key, fmt):
    with pytest.raises(UnknownKeyError) as exc:
        keymap.lookup(key, fmt)
    assert key in exc.value.one_line()


@pytest.mark.parametrize("heads,head_dim", [(1, 4), (3, 8), (8, 2)])
def test_rotary_permutation_is_exact_and_moves_pairs_to_halves(heads, head_dim):
    w = torch.arange(heads * head_dim * 3, dtype=torch.float32).reshape(heads * head_dim, 3)
    half = keymap.interleaved_to_half(w, heads)
    assert torch.equal(keymap.half_to_interleaved(half, heads), w)
    for h in range(heads):  # Meta row 2j+c of head h becomes HF row c*d/2 + j
        for j in range(head_dim // 2):
            for c in range(2):
                assert torch.equal(half[h * head_dim + c * head_dim // 2 + j], w[h * head_dim + 2 * j + c])


@pytest.mark.parametrize("dim,multiple_of,mult,expected", [
    (4096, 256, None, 11008),   # Llama 2 7B
    (5120, 256, None, 13824),   # Llama 2 13B
    (8192, 4096, 1.3, 28672),   # Llama 2 70B / Llama 3 70B
    (4096, 1024, 1.3, 14336),   # Llama 3 8B
    (16384, 4096, 1.2, 53248),  # Llama 3.1 405B
    (2048, 256, 1.5, 8192),     # Llama 3.2 1B
    (3072, 256, 1.0, 8192),     # Llama 3.2 3B
    (576, 256, None, 1536),     # SmolLM2-135M
])
def test_meta_ffn_dim_and_its_inverse(dim, multiple_of, mult, expected):
    assert meta_ffn_dim(dim, multiple_of, mult) == expected
    mo, m = meta_ffn_params(dim, expected)
    assert meta_ffn_dim(dim, mo, m) == expected
    for hidden in (expected + 4, 100, 3 * dim):  # any width has some params.json
        mo, m = meta_ffn_params(dim, hidden)
        assert meta_ffn_dim(dim, mo, m) == hidden


# Real release shapes: params.json as Meta ships it; HF shapes as in the hub's config.json.
LLAMA2_70B = dict(dim=8192, multiple_of=4096, ffn_dim_multiplier=1.3, n_heads=64, n_kv_heads=8, n_layers=80,
                  norm_eps=1e-05, vocab_size=-1)
LLAMA31_405B = dict(dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, vocab_size=128256, ffn_dim_multiplier=1.2,
                    multiple_of=4096, norm_eps=1e-05, rope_theta=500000.0, use_scaled_rope=True)


def _meta_shard_shapes(p, mp, vocab, legacy):
    dim, hd = p["dim"], p["dim"] // p["n_heads"]
    F = meta_ffn_dim(dim, p["multiple_of"], p.get("ffn_dim_multiplier"))
    bf = torch.bfloat16
    shard = {"tok_embeddings.weight": ((vocab, dim // mp) if legacy else (vocab // mp, dim), bf),
             "norm.weight": ((dim,), bf), "output.weight": ((vocab // mp, dim), bf)}
    for i in range(p["n_layers"]):
        pre = f"layers.{i}."
        shard.update({pre + "attention.wq.weight": ((p["n_heads"] * hd // mp, dim), bf),
                      pre + "attention.wk.weight": ((p["n_kv_heads"] * hd // mp, dim), bf),
                      pre + "attention.wv.weight": ((p["n_kv_heads"] * hd // mp, dim), bf),
                      pre + "attention.wo.weight": ((dim, p["n_heads"] * hd // mp), bf),
                      pre + "feed_forward.w1.weight": ((F // mp, dim), bf), pre + "feed_forward.w2.weight": ((dim, F // mp), bf),
                      pre + "feed_forward.w3.weight": ((F // mp, dim), bf),
                      pre + "attention_norm.weight": ((dim,), bf), pre + "ffn_norm.weight": ((dim,), bf)})
    return [dict(shard) for _ in range(mp)]


@pytest.mark.parametrize("params,mp,vocab,legacy,hf,release", [
    (LLAMA2_70B, 8, 32000, True, dict(hidden=8192, inter=28672, heads=64, kv=8, vocab=32000, layers=80), "llama-2-70b"),
    (LLAMA31_405B, 8, 128256, False, dict(hidden=16384, inter=53248, heads=128, kv=8, vocab=128256, layers=126),
     "llama-3.1-405b"),
])
def test_real_70b_and_405b_layouts_on_meta_device(tmp_path, params, mp, vocab, legacy, hf, release):
    plan = plan_shards(params, _meta_shard_shapes(params, mp, vocab, legacy), where=tmp_path)
    a = plan.arch
    assert (plan.mp, a.legacy_embedding, a.hidden_dim, a.vocab_size, a.n_kv_heads) == (mp, legacy, hf["inter"], hf["vocab"], hf["kv"])
    ours = a.to_hf_config("bfloat16")
    # the catalog (the release's published shapes) recognises the layout and agrees on every shape
    assert release in [r.name for r in catalog_matches(a)]
    theirs = get_release(release).hf_config()
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "vocab_size", "tie_word_embeddings"):
        assert ours[key] == theirs[key], key
    assert get_release(release).mp_shards == mp

    # merge and permute meta-device shards exactly as MetaSource + write_hf do, for every tensor
    hd = hf["hidden"] // hf["heads"]
    expected_hf = {"model.embed_tokens.weight": (hf["vocab"], hf["hidden"]), "lm_head.weight": (hf["vocab"], hf["hidden"]),
                   "model.norm.weight": (hf["hidden"],)}
    for i in range(hf["layers"]):
        pre = f"model.layers.{i}."
        expected_hf.update({pre + "self_attn.q_proj.weight": (hf["heads"] * hd, hf["hidden"]),
                            pre + "self_attn.k_proj.weight": (hf["kv"] * hd, hf["hidden"]),
                            pre + "self_attn.v_proj.weight": (hf["kv"] * hd, hf["hidden"]),
                            pre + "self_attn.o_proj.weight": (hf["hidden"], hf["heads"] * hd),
                            pre + "mlp.gate_proj.weight": (hf["inter"], hf["hidden"]),
                            pre + "mlp.up_proj.weight": (hf["inter"], hf["hidden"]),
                            pre + "mlp.down_proj.weight": (hf["hidden"], hf["inter"]),
                            pre + "input_layernorm.weight": (hf["hidden"],),
                            pre + "post_attention_layernorm.weight": (hf["hidden"],)})
    shards = _meta_shard_shapes(params, mp, vocab, legacy)
    got = {}
    for e in plan.entries:
        pieces = [torch.empty(s[e.name][0], dtype=torch.bfloat16, device="meta") for s in shards]
        d = plan.split_dims[e.name]
        full = pieces[0] if d is None else torch.cat(pieces, dim=d)
        rule, layer = keymap.lookup(e.name, "meta")
        hf_t = keymap.to_hf_layout(rule, full, a.head_dim)
        got[keymap.name_of(rule, "hf", layer)] = tuple(hf_t.shape)
        # and back: HF → Meta shards reproduce Meta's shard shapes
        back = keymap.from_hf_layout(rule, hf_t, a.head_dim)
        assert tuple((back if d is None else back.chunk(mp, dim=d)[0]).shape) == shards[0][e.name][0]
    assert got == expected_hf


# --- every catalog text release, as Meta ships it, planned on meta-device shapes -----------------


def _catalog_text_releases():
    from llamakit import catalog

    return [r for r in catalog.list_releases() if "meta" in r.formats and r.moe is None and r.vision is None
            and r.quantization is None]


@pytest.mark.parametrize("release", [r.name for r in _catalog_text_releases()])
def test_every_catalog_text_release_plans_as_meta_ships_it(tmp_path, release):
    """Meta's code always has output.weight (3.2 1B/3B: byte-equal to the embedding); Llama 1/2 ship vocab_size -1."""
    rel = get_release(release)
    m = rel.meta
    legacy = rel.family in ("llama-1", "llama-2", "code-llama")
    params = {k: v for k, v in m.model_dump().items() if v is not None}
    if legacy:
        params["vocab_size"] = -1
    shards = _meta_shard_shapes(dict(params, n_kv_heads=m.n_kv_heads), rel.mp_shards, m.vocab_size,
                                legacy and rel.mp_shards > 1)
    plan = plan_shards(params, shards, where=tmp_path, output_same=lambda: rel.tie_embeddings, legacy_hint=legacy)
    a = plan.arch
    assert (plan.mp, a.tied, a.hidden_dim, a.vocab_size, a.n_kv_heads) == (
        rel.mp_shards, rel.tie_embeddings, rel.intermediate_size, m.vocab_size, m.n_kv_heads)
    if m.use_scaled_rope or not rel.rope_scaling:  # Guard 3 8B: params.json says unscaled, its HF config 8 (as published)
        assert a.rope_scaling == ({k: v for k, v in rel.rope_scaling.model_dump().items() if k != "rope_type"}
                                  if rel.rope_scaling else None)
    assert release in plan.decision.catalog
    twins = {r.context_length for r in _catalog_text_releases() if r.name in plan.decision.catalog}
    if len(twins) == 1:  # files that cannot tell Llama 3 8B from Guard 3 8B get the generation's context
        assert a.max_position_embeddings == rel.context_length
    names = {e.name for e in plan.entries}
    assert ("output.weight" in names) is not rel.tie_embeddings  # a tied output converts as the tie
    if rel.tie_embeddings:
        assert "llama3.2-small-rope-factor-32" in plan.decision.errata


def test_fp8_release_is_refused_naming_it(tmp_path):
    from convert_helpers import write_meta_checkpoint

    from llamakit.convert import convert
    from llamakit.errors import ConversionError

    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 1)
    (src / "fp8_scales_0.pt").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"an FP8 checkpoint.*fp8_scales_0\.pt.*"):
        convert(src, tmp_path / "hf", show_progress=False)
    assert not (tmp_path / "hf").exists()
