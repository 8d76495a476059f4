"""Llama 4 hyperparameters: Meta's width formulas, params.json ⇄ config.json, the key table, the rope erratum."""

from __future__ import annotations

import pytest

from llamakit.convert import keymap
from llamakit.convert.llama4 import ROPE_ERRATUM, decide_rope, hf_shape
from llamakit.convert.llama4_arch import Llama4Arch
from llamakit.errors import UnknownKeyError

# Published Llama 4 Scout params.json model args (the text part)
SCOUT = {"dim": 5120, "n_layers": 48, "n_heads": 40, "n_kv_heads": 8, "vocab_size": 202048, "multiple_of": 2048,
         "ffn_dim_multiplier": 1.2, "ffn_exp": 4.0, "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": True,
         "nope_layer_interval": 4, "use_qk_norm": True, "attention_chunk_size": 8192,
         "moe_args": {"num_experts": 16, "capacity_factor": 1.0, "auto_scale_F": True, "top_k": 1,
                      "interleave_moe_layer_step": 1}}


def _scout(**p):
    params = {**SCOUT, **p}
    rope, _ = decide_rope(params)
    return Llama4Arch.from_params(params, path=None, vocab_size=202048, dense=None, expert=None, rope_scaling=rope)


def test_meta_widths_are_the_published_hf_ones():
    a = _scout()
    assert (a.expert_hidden, a.dense_hidden) == (8192, 16384)  # HF intermediate_size, intermediate_size_mlp
    (down, _), = keymap.llama4_lookup("model.layers.0.feed_forward.experts.down_proj", "hf")
    assert hf_shape(down, a) == (16, 8192, 5120)  # (E, F, D)
    gate_up = keymap.llama4_lookup("model.layers.0.feed_forward.experts.gate_up_proj", "hf")[0][0]
    assert hf_shape(gate_up, a) == (16, 5120, 2 * 8192)  # (E, D, 2F): w1 | w3


def test_params_json_round_trips_through_the_hf_config(tmp_path):
    import json

    for p in ({}, {"use_scaled_rope": False, "use_qk_norm": False,
                   "moe_args": {**SCOUT["moe_args"], "num_experts": 128, "interleave_moe_layer_step": 2}}):
        a = _scout(**p)
        (tmp_path / "config.json").write_text(json.dumps(a.to_hf_text_config("bfloat16")))
        b = Llama4Arch.from_hf_config(tmp_path / "config.json")
        assert b == a
        rope, _ = decide_rope(a.to_params())
        assert Llama4Arch.from_params(a.to_params(), path=None, vocab_size=a.vocab_size, dense=None, expert=None,
                                      rope_scaling=rope) == a.with_(max_position_embeddings=262144)


def test_scout_rope_comes_from_the_erratum_unless_params_json_states_it():
    rope, used = decide_rope(SCOUT)
    assert (rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]) == (16.0, 1.0, 1.0) and used == [ROPE_ERRATUM]
    rope, used = decide_rope({**SCOUT, "rope_scaling_factor": 8, "rope_high_freq_factor": 4})
    assert (rope["factor"], rope["high_freq_factor"], used) == (8.0, 4.0, [])
    assert decide_rope({**SCOUT, "use_scaled_rope": False}) == (None, [])


def test_the_erratum_agrees_with_meta_code_and_the_catalog():
    from llama_models.llama4.args import ModelArgs  # Meta's defaults, read from Meta's code

    from llamakit import catalog
    from llamakit.convert import errata

    meta = ModelArgs(**{k: v for k, v in SCOUT.items() if k != "moe_args"})
    e = errata.get(ROPE_ERRATUM)
    assert (e.sets.rope_scaling.factor, e.sets.rope_scaling.high_freq_factor) == (meta.rope_scaling_factor,
                                                                                 meta.rope_high_freq_factor)
    for name in e.releases:  # load_errata also cross-checks this
        assert catalog.load_catalog().releases[name].rope_scaling == e.sets.rope_scaling


def test_the_llama3_decision_never_takes_a_llama4_erratum():
    from llamakit.convert.arch import Arch
    from llamakit.convert.decide import Facts, decide

    odd = Arch(dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100, hidden_dim=256, norm_eps=1e-5,
               rope_theta=500000.0)
    d = decide(Facts(odd, True, "distinct", False))
    assert ROPE_ERRATUM not in d.errata and d.arch.rope_scaling["factor"] == 8.0


def test_the_key_table_knows_the_shipped_names_only():
    rules = keymap.llama4_lookup("layers.3.attention.wqkv.weight", "meta")
    assert [r.take for r, _ in rules] == [("qkv", 0), ("qkv", 1), ("qkv", 2)] and {i for _, i in rules} == {3}
    assert [r.slot for r, _ in keymap.llama4_lookup("model.layers.0.feed_forward.experts.gate_up_proj", "hf")] == [0, 1]
    assert keymap.LLAMA4_DROPPED.search("layers.0.attention.wqkv._extra_state")
    with pytest.raises(UnknownKeyError):
        keymap.llama4_lookup("layers.0.feed_forward.experts.w1", "meta")


def test_convert_names_the_layout_it_detected():
    a = _scout(moe_args={**SCOUT["moe_args"], "num_experts": 128, "interleave_moe_layer_step": 2}, use_scaled_rope=False)
    assert a.describe(vision=True).startswith("Llama 4 Maverick layout: 128 experts, MoE every 2nd layer")
    assert a.describe(vision=True).endswith("vision encoder")


def test_maverick_fp8_is_refused_naming_the_bf16_release(tmp_path):
    import json

    from llamakit.convert import convert
    from llamakit.errors import ConversionError

    params = {**SCOUT, "use_scaled_rope": False, "use_qk_norm": False,
              "moe_args": {**SCOUT["moe_args"], "num_experts": 128, "interleave_moe_layer_step": 2}}
    (tmp_path / "params.json").write_text(json.dumps(params))
    for name in ("consolidated.00.pth", "fp8_scales_0.pt"):
        (tmp_path / name).write_bytes(b"PK")  # never opened: the refusal comes first
    with pytest.raises(ConversionError) as err:
        convert(tmp_path, tmp_path.parent / "out", show_progress=False)
    msg = str(err.value) + " " + (err.value.fix or "")
    assert "llama-4-maverick-17b-128e-instruct-fp8" in msg and "bf16 release llama-4-maverick-17b-128e-instruct" in msg


def test_405b_fp8_is_refused_naming_the_bf16_releases(tmp_path):
    from llamakit.convert.quantized import refuse_quantized
    from llamakit.errors import ConversionError

    (tmp_path / "fp8_scales_0.pt").write_bytes(b"")
    with pytest.raises(ConversionError) as err:
        refuse_quantized(tmp_path, {"dim": 16384, "n_layers": 126})
    assert "llama-3.1-405b-fp8" in str(err.value) and "bf16 release llama-3.1-405b or" in err.value.fix


def test_info_shows_the_moe_and_layer_facts():
    from typer.testing import CliRunner

    from llamakit.cli import app

    res = CliRunner().invoke(app, ["info", "llama-4-maverick-17b-128e"], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    for fact in ("num_experts", "128", "interleave_moe_layer_step", "expert width (HF intermediate_size)", "8192",
                 "kind", "llama4", "nope_layer_interval", "attention_chunk_size"):
        assert fact in res.output
