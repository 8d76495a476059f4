"""Llama 4 (Scout-like, Maverick-like) Meta ⇄ HF, proved against Meta's own llama4 code.

Tiny checkpoints are written by Meta's llama4 `Transformer` in the layout Meta ships and proven
to be that layout by a strict load through Meta's hooks (meta_oracle_llama4.py). Meta's code on
those files and transformers' Llama4ForCausalLM on llamakit's HF output give the same logits, on
a consecutive batch and on position ids spread to 100k (NoPE layers, chunked attention, QK-norm,
Scout's scaled rope, MoE every layer / every 2nd layer); llamakit's HF → Meta output is the
original files' tensors bit for bit and loads into Meta's code with the same logits.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("llama_models")
pytest.importorskip("fairscale")

import meta_oracle_llama4 as oracle  # noqa: E402
from transformers import Llama4ForCausalLM  # noqa: E402

from llamakit.convert import convert, keymap  # noqa: E402
from llamakit.errors import ConversionError  # noqa: E402

SPREAD = [0, 7, 31, 400, 2047, 5000, 9000, 20000, 41000, 65000, 88000, 100000]


def _batches(path):
    g = torch.Generator().manual_seed(3)
    vocab = oracle.COMMON["vocab_size"]
    b = [(torch.randint(0, vocab, (2, 11), generator=g), torch.arange(11)),
         (torch.randint(0, vocab, (1, 12), generator=g), torch.tensor(SPREAD))]
    torch.save(b, path)
    return b


def _transformers(d, batches):
    model = Llama4ForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(t, position_ids=p[None].expand(t.shape[0], -1)).logits for t, p in batches]


def _close(a, b, rel=1e-4):
    return (a - b).abs().max().item() <= rel * max(1.0, a.abs().max().item())


@pytest.fixture(scope="module", params=[("scout", 1), ("maverick", 2)], ids=["scout-mp1", "maverick-mp2"])
def written(request, tmp_path_factory):
    shape, mp = request.param
    tmp = tmp_path_factory.mktemp(shape)
    batches = _batches(tmp / "batches.pt")
    oracle.launch("write", tmp / "meta", shape, tmp / "batches.pt", tmp / "meta.pt", nproc=mp)
    return shape, mp, tmp, batches, torch.load(tmp / "meta.pt", weights_only=True)


def test_meta_code_and_transformers_agree_both_ways(written):
    shape, mp, tmp, batches, meta_logits = written
    r = convert(tmp / "meta", tmp / "hf", show_progress=False)
    assert r.check["kind"] == "inverse" and r.check["bit_identical"]
    cfg = json.loads((tmp / "hf" / "config.json").read_text())
    step = oracle.SHAPES[shape]["moe_args"]["interleave_moe_layer_step"]
    assert cfg["moe_layers"] == [i for i in range(4) if (i + 1) % step == 0]
    assert cfg["no_rope_layers"] == [1, 1, 1, 0] and cfg["use_qk_norm"] is (shape == "scout")
    assert (cfg["rope_parameters"]["rope_type"] == "llama3") is (shape == "scout")
    if shape == "scout":  # params.json says only use_scaled_rope: the erratum supplies Meta's 16 / 1
        assert (cfg["rope_parameters"]["factor"], cfg["rope_parameters"]["high_freq_factor"]) == (16.0, 1.0)
        assert r.errata == ["llama4-scout-rope-constants"]
    assert r.generation.startswith(f"Llama 4 {shape.capitalize()} layout: {oracle.SHAPES[shape]['moe_args']['num_experts']} experts")

    for got, want in zip(_transformers(tmp / "hf", batches), meta_logits):
        assert _close(got, want), (got - want).abs().max()

    back = convert(tmp / "hf", tmp / "back", to="meta", mp=mp, show_progress=False)
    assert back.mp_out == mp
    for rank in range(mp):  # bit-identical round trip of every weight, in the shipped names
        orig = oracle.load(tmp / "meta" / f"consolidated.{rank:02d}.pth")
        again = oracle.load(tmp / "back" / f"consolidated.{rank:02d}.pth")
        weights = {k: v for k, v in orig.items() if isinstance(v, torch.Tensor)}
        assert set(weights) == set(again)
        assert all(torch.equal(weights[k], again[k]) for k in weights)
    oracle.launch("forward", tmp / "back", shape, tmp / "batches.pt", tmp / "back.pt", nproc=mp)
    for got, want in zip(torch.load(tmp / "back.pt", weights_only=True), meta_logits):
        assert torch.equal(got, want)


def test_a_wrong_expert_transform_is_caught(written, monkeypatch, tmp_path):
    """w1 and w3 swapped inside experts.gate_up_proj: a self-consistent map (it round-trips bit-identically) that
    only the logits against Meta's code can catch."""
    shape, _mp, tmp, batches, meta_logits = written
    swapped = tuple(r.__class__(**{**r.__dict__, "slot": 1 - r.slot}) if r.slot is not None else r
                    for r in keymap.LLAMA4_RULES)
    monkeypatch.setattr(keymap, "LLAMA4_RULES", swapped)
    r = convert(tmp / "meta", tmp_path / "hf", show_progress=False)
    assert r.check["bit_identical"]  # the inverse check cannot see it ...
    got = _transformers(tmp_path / "hf", batches)
    assert not all(_close(g, w) for g, w in zip(got, meta_logits))  # ... Meta's code does


def test_a_params_json_with_the_wrong_interleave_is_refused(written, tmp_path):
    shape, _mp, tmp, _b, _l = written
    src = tmp_path / "meta"
    src.mkdir()
    for p in (tmp / "meta").iterdir():
        (src / p.name).symlink_to(p)
    params = json.loads((tmp / "meta" / "params.json").read_text())
    params["moe_args"]["interleave_moe_layer_step"] = 2 if shape == "scout" else 1
    (src / "params.json").unlink()
    (src / "params.json").write_text(json.dumps(params))
    with pytest.raises(ConversionError, match="do not have the layers params.json describes"):
        convert(src, tmp_path / "hf", show_progress=False)
    assert not (tmp_path / "hf").exists()


def test_dim0_split_tensors_stream_from_the_shards_pages(written):
    """MP > 1: the embedding and output (split on dim 0) go out as row blocks of each shard's mapped piece, in shard
    order, never through a merged copy, which held a full-vocabulary embedding twice (its copy plus the pages read:
    4.2 GB peak at Scout width, MP 8, in issue 20's benchmark, against a 2.5 GB largest expert group)."""
    from llamakit.convert.llama4 import open_meta

    _shape, mp, tmp, _b, _l = written
    if mp == 1:
        pytest.skip("one shard: nothing to merge")
    src = open_meta(tmp / "meta", json.loads((tmp / "meta" / "params.json").read_text()))
    seen = set()
    for name, shape, _dt, blocks in src.hf_tensors():
        meta = {"model.embed_tokens.weight": "tok_embeddings.weight", "lm_head.weight": "output.weight"}.get(
            name.removeprefix("language_model."))
        if meta is None:
            continue
        pieces = [src.shard_tensor(r, meta) for r in range(mp)]
        spans = [(p.data_ptr(), p.data_ptr() + p.numel() * p.element_size()) for p in pieces]
        got = list(blocks())
        assert all(any(lo <= b.data_ptr() < hi for lo, hi in spans) for b in got), f"{name}: a block is a copy"
        assert torch.equal(torch.cat(got), torch.cat(pieces)) and torch.cat(got).shape == shape
        seen.add(meta)
    assert seen == {"tok_embeddings.weight", "output.weight"}
