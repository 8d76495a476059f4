"""Llama 3.1+ GGUF: llama.cpp stores llama3 rope scaling as a `rope_freqs` tensor of per-frequency divisors.

The fixture is the real SmolLM2 GGUF rewritten as llama.cpp writes a Llama 3.1+ model: every
key and tensor copied, plus `rope_freqs.weight` computed from *transformers'* llama3 rope
(its unscaled inverse frequencies over its scaled ones), not from llamakit's formula.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llamakit.convert import convert
from llamakit.errors import ConversionError


SCALING = dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


def transformers_freq_factors(theta: float, head_dim: int, scaling: dict) -> np.ndarray:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    def inv_freq(rope):
        cfg = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim, rope_parameters=rope)
        return LlamaRotaryEmbedding(cfg).inv_freq

    plain = inv_freq({"rope_type": "default", "rope_theta": theta})
    scaled = inv_freq({"rope_type": "llama3", "rope_theta": theta, **scaling})
    return (plain / scaled).numpy().astype(np.float32)


def with_rope_freqs(src, dst, factors: np.ndarray):
    """`src` GGUF copied key by key and tensor by tensor into `dst`, plus rope_freqs.weight (as llama.cpp adds it)."""
    import gguf

    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), arch=r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        w.add_key_value(f.name, f.contents(), vtype, sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    tensors = [(t.name, t.data, t.tensor_type) for t in r.tensors] + [("rope_freqs.weight", factors, gguf.GGMLQuantizationType.F32)]
    for name, data, qtype in tensors:
        w.add_tensor_info(name, data.shape, data.dtype, data.nbytes, qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, data, _ in tensors:
        w.write_tensor_data(data)
    w.close()
    return dst


def _meta(gguf_path):
    from llamakit.convert.gguf import read_header

    return read_header(gguf_path)[0]


@pytest.fixture(scope="module")
def llama31_gguf(smollm2_gguf, tmp_path_factory):
    m = _meta(smollm2_gguf)
    head_dim = m["llama.embedding_length"] // m["llama.attention.head_count"]
    factors = transformers_freq_factors(float(m["llama.rope.freq_base"]), head_dim, SCALING)
    assert factors.max() == 32.0 and factors.min() == 1.0  # the fixture really scales some frequencies
    return with_rope_freqs(smollm2_gguf, tmp_path_factory.mktemp("g31") / "smol-rope-freqs.gguf", factors)


def test_llama31_gguf_converts_with_its_rope_scaling_and_proves_it(llama31_gguf, smollm2_gguf, tmp_path):
    r = convert(llama31_gguf, tmp_path / "hf", dtype="fp32", show_progress=False)  # default check, spread batch included
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    rope = cfg["rope_parameters"]
    assert rope["rope_type"] == "llama3" and {k: rope[k] for k in SCALING} == SCALING
    # the check's GGUF side ran llama.cpp's semantics (frequencies divided by the file's rope_freqs), the HF side
    # transformers on config.json: they agree where the scaling matters
    assert r.check["spread_max_abs"] <= r.check["tol"] and r.check["spread_positions"][-1] >= 100_000
    # rope_freqs is dropped; every weight is what the plain GGUF converts to
    convert(smollm2_gguf, tmp_path / "plain", dtype="fp32", check=False, show_progress=False)
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "plain" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_llama31_gguf_against_transformers_own_gguf_load(llama31_gguf, tmp_path):
    """transformers' GGUF loader reads the same weights but ignores rope_freqs for Llama (it builds the unscaled
    model); given the llama3 scaling as a config override it is the model llamakit wrote, at spread positions too."""
    from transformers import AutoModelForCausalLM

    convert(llama31_gguf, tmp_path / "hf", dtype="fp32", check=False, show_progress=False)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    theta = json.loads((tmp_path / "hf" / "config.json").read_text())["rope_parameters"]["rope_theta"]
    where = dict(pretrained_model_name_or_path=str(llama31_gguf.parent), gguf_file=llama31_gguf.name, dtype=torch.float32)
    scaled = AutoModelForCausalLM.from_pretrained(**where, rope_parameters={"rope_type": "llama3", "rope_theta": theta,
                                                                           **SCALING}).eval()
    plain = AutoModelForCausalLM.from_pretrained(**where).eval()
    tokens = torch.tensor([[1, 504, 3458, 282, 4649, 314, 2114, 30]])
    spread = torch.tensor([[0, 5000, 20000, 40000, 60000, 80000, 90000, 100000]])
    with torch.no_grad():
        for pos in (None, spread):
            a, b = ours(tokens, position_ids=pos).logits, scaled(tokens, position_ids=pos).logits
            assert (a - b).abs().max() <= 1e-4 * b.abs().max()
        c = plain(tokens, position_ids=spread).logits
    assert (a - c).abs().max() > 100 * (a - b).abs().max()


def test_rope_freqs_matching_no_known_scaling_is_refused(smollm2_gguf, tmp_path):
    m = _meta(smollm2_gguf)
    head_dim = m["llama.embedding_length"] // m["llama.attention.head_count"]
    odd = transformers_freq_factors(float(m["llama.rope.freq_base"]), head_dim, dict(SCALING, factor=16.0))
    bad = with_rope_freqs(smollm2_gguf, tmp_path / "odd.gguf", odd)
    with pytest.raises(ConversionError, match=r"rope_freqs \[.*\] matches no llama3 rope scaling .*tried factor 8, 32"):
        convert(bad, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
