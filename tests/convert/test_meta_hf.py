"""Meta ⇄ HF on tiny random models of every Llama shape, at MP 1, 2, 4 and 8."""

from __future__ import annotations

import json

import pytest
import torch
from convert_helpers import LEGACY, TIED, hf_dir, shard_weights, write_meta_checkpoint
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from llamakit.convert import convert, reference
from llamakit.convert.pth import load_pth

MPS = [1, 2, 4, 8]

pytestmark = pytest.mark.usefixtures("small_blocks")


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(1))


def _hf_tensors(d) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("mp", MPS)
def test_meta_to_hf_matches_reference_and_transformers(tmp_path, tiny_shape, mp):
    src, params, shards = write_meta_checkpoint(tmp_path / "meta", tiny_shape, mp)
    result = convert(src, tmp_path / "hf", show_progress=False)  # the built-in check runs too
    assert result.check["max_abs"] <= result.check["tol"] and result.mp_in == mp

    vocab = shards[0]["tok_embeddings.weight"].shape[0] * (1 if tiny_shape in LEGACY else mp)
    tokens = _tokens(vocab)
    rope = None
    if params.get("use_scaled_rope"):  # what the HF release says for these generations (the errata's values)
        rope = dict(factor=32.0 if tiny_shape in TIED else 8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=params["rope_original_max_position_embeddings"])
    ref = reference.forward(params, shard_weights(shards), tokens, mp=mp, rope=rope)
    model = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        hf = model(tokens).logits
    assert ref.abs().max() > 0.1  # a model that says something
    assert torch.allclose(hf, ref, rtol=0, atol=1e-5 * ref.abs().max().item()), (hf - ref).abs().max()

    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["vocab_size"] == vocab and cfg["tie_word_embeddings"] == (tiny_shape in TIED)
    assert cfg["num_key_value_heads"] == params.get("n_kv_heads", params["n_heads"])
    if params.get("use_scaled_rope"):
        rope = cfg["rope_parameters"]
        assert rope["rope_type"] == "llama3" and rope["factor"] == (32.0 if tiny_shape in TIED else 8.0)
        assert rope["original_max_position_embeddings"] == 64
    assert "lm_head.weight" not in _hf_tensors(tmp_path / "hf") or tiny_shape not in TIED

    # ... and back to Meta at the same MP: every shard tensor bit-identical to Meta's originals
    convert(tmp_path / "hf", tmp_path / "meta2", to="meta", mp=mp, check=False, show_progress=False)
    assert json.loads((tmp_path / "meta2" / "params.json").read_text()) == {
        **{k: v for k, v in params.items() if k != "vocab_size"}, "vocab_size": vocab}
    for r in range(mp):
        back = load_pth(tmp_path / "meta2" / f"consolidated.{r:02d}.pth")
        orig = {k: v for k, v in shards[r].items() if k != "rope.freqs"}
        assert back.keys() == orig.keys()
        for k in orig:
            assert back[k].dtype == orig[k].dtype and torch.equal(back[k], orig[k]), k


@pytest.mark.parametrize("mp", MPS)
def test_hf_to_meta_to_hf_is_bit_identical(tmp_path, tiny_shape, mp):
    overrides = {}
    if mp > 2:  # let Meta's MP code split the kv heads (and, for mha, the FFN) `mp` ways
        overrides = dict(num_key_value_heads=mp, num_attention_heads=2 * mp) if tiny_shape != "mha" else {}
        if tiny_shape == "mha" and mp == 8:
            overrides = dict(intermediate_size=176)
    src = hf_dir(tmp_path, tiny_shape, **overrides)
    r1 = convert(src, tmp_path / "meta", to="meta", mp=mp, show_progress=False)  # checked by the reference forward
    assert r1.check["max_abs"] <= r1.check["tol"]
    assert sorted(p.name for p in (tmp_path / "meta").iterdir()) == sorted(
        [f"consolidated.{r:02d}.pth" for r in range(mp)] + ["params.json", "checklist.chk"])
    convert(tmp_path / "meta", tmp_path / "hf2", check=False, show_progress=False)
    a, b = _hf_tensors(src), _hf_tensors(tmp_path / "hf2")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (src, tmp_path / "hf2"))
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "num_hidden_layers", "rms_norm_eps", "tie_word_embeddings", "rope_parameters"):
        assert ca[key] == cb[key], key


def _as_hub_original(meta, dst):
    """`meta`'s files with its one shard named as the HF repos' original/ folders name it: consolidated.pth."""
    dst.mkdir()
    for f in meta.iterdir():
        (dst / ("consolidated.pth" if f.name == "consolidated.00.pth" else f.name)).write_bytes(f.read_bytes())
    return dst


def test_a_single_consolidated_pth_converts_like_consolidated_00(tmp_path):
    """An MP-1 checkpoint whose one file is consolidated.pth (no number) is the same checkpoint: same HF bytes,
    and the check passes; a folder holding both names is two checkpoints and is refused."""
    from llamakit.errors import InputFileError

    write_meta_checkpoint(tmp_path / "meta", "tied", 1)
    hub = _as_hub_original(tmp_path / "meta", tmp_path / "original")
    a = convert(tmp_path / "meta", tmp_path / "a", show_progress=False)
    b = convert(hub, tmp_path / "b", show_progress=False)
    assert b.mp_in == 1 and b.check is not None and b.errata == a.errata and b.arch == a.arch
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()

    (hub / "consolidated.00.pth").write_bytes((tmp_path / "meta" / "consolidated.00.pth").read_bytes())
    with pytest.raises(InputFileError, match="both consolidated.pth and consolidated.NN.pth"):
        convert(hub, tmp_path / "c", show_progress=False)
    assert not (tmp_path / "c").exists()
