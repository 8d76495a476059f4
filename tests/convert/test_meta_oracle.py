"""Meta's own model code (llama-models + fairscale, the `reference` extra) is the oracle.

Tiny checkpoints are *written by Meta's `Transformer`* (meta_oracle.py: one gloo process per
model-parallel rank, fairscale splitting the weights), so their layout is Meta's by
construction, not llamakit's idea of it. For each generation's shape: Meta's code on the
Meta files and transformers on llamakit's HF output agree on a consecutive batch and on
position ids spread to 100k; llamakit's HF → Meta output loads (strictly) into Meta's code
and gives the same logits again.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("llama_models")
pytest.importorskip("fairscale")

import meta_oracle  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from llamakit.convert import convert, errata  # noqa: E402

SPREAD = [0, 7, 31, 400, 2047, 5000, 9000, 20000, 41000, 65000, 88000, 100000]
FACTOR_32 = "llama3.2-small-rope-factor-32"


def _batches(tmp_path, vocab: int):
    g = torch.Generator().manual_seed(3)
    b = [(torch.randint(0, vocab, (2, 11), generator=g), torch.arange(11)),
         (torch.randint(0, vocab, (1, 12), generator=g), torch.tensor(SPREAD))]
    torch.save(b, tmp_path / "batches.pt")
    return b


def _factor(shape: str) -> float:
    """The factor Meta's code must run with: the errata's for 3.2 1B/3B, Meta's own 8 otherwise."""
    if shape in meta_oracle.TIED:
        return errata.get(FACTOR_32).sets.rope_scaling.factor
    return 8.0


def _transformers(d, batches):
    model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(t, position_ids=p[None].expand(t.shape[0], -1)).logits for t, p in batches]


def _close(a, b, rel=1e-4):
    return (a - b).abs().max().item() <= rel * max(1.0, a.abs().max().item())


@pytest.mark.parametrize("shape,mp", [("llama2", 1), ("llama2-gqa", 1), ("llama3.1", 1), ("llama3.2-1b", 1),
                                      ("llama3.2-1b", 2), pytest.param("llama2", 2, marks=pytest.mark.slow)])
def test_meta_code_and_transformers_agree_both_ways(tmp_path, shape, mp):
    vocab = meta_oracle.VOCAB if shape in meta_oracle.LEGACY else meta_oracle.SHAPES[shape]["vocab_size"]
    batches = _batches(tmp_path, vocab)
    factor = _factor(shape)
    meta_oracle.launch("write", tmp_path / "meta", shape, factor, tmp_path / "batches.pt", tmp_path / "meta.pt", nproc=mp)
    meta_logits = torch.load(tmp_path / "meta.pt", weights_only=True)
    assert sorted(p.name for p in (tmp_path / "meta").iterdir()) == sorted(
        ["params.json"] + [f"consolidated.{r:02d}.pth" for r in range(mp)])

    r = convert(tmp_path / "meta", tmp_path / "hf", show_progress=False)  # the built-in two-sided check runs too
    assert r.check["spread_max_abs"] <= r.check["tol"]
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    tied = shape in meta_oracle.TIED
    assert cfg["tie_word_embeddings"] is tied
    assert ("lm_head.weight" in load_file(tmp_path / "hf" / "model.safetensors")) is not tied
    rope = cfg["rope_parameters"]
    if meta_oracle.SHAPES[shape].get("use_scaled_rope"):
        assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == ("llama3", factor, 8192)
    else:
        assert rope["rope_type"] == "default"
        assert rope["rope_theta"] == (10000.0 if shape in meta_oracle.LEGACY else 500000.0)
    if tied:  # the summary names the errata the decision used
        assert set(r.errata) == {FACTOR_32, "llama3.2-small-tied-output"}
        assert FACTOR_32 in r.summary_line()

    hf_logits = _transformers(tmp_path / "hf", batches)
    assert meta_logits[1].abs().max() > 0.5  # a model that says something
    for a, b in zip(meta_logits, hf_logits):
        assert _close(a, b), (a - b).abs().max()

    # HF → Meta: Meta's code loads every shard strictly (output.weight included) and agrees again
    convert(tmp_path / "hf", tmp_path / "meta2", to="meta", mp=mp, show_progress=False)
    params = json.loads((tmp_path / "meta2" / "params.json").read_text())
    assert params.get("use_scaled_rope", False) == bool(meta_oracle.SHAPES[shape].get("use_scaled_rope"))
    assert not any(k.startswith("rope_scaling") or k.startswith("rope_original") for k in params)  # Meta's keys only
    meta_oracle.launch("forward", tmp_path / "meta2", shape, factor, tmp_path / "batches.pt", tmp_path / "back.pt", nproc=mp)
    for a, b in zip(meta_logits, torch.load(tmp_path / "back.pt", weights_only=True)):
        assert _close(a, b, 1e-6), (a - b).abs().max()


def test_meta_code_as_published_disagrees_on_llama32_spread_positions(tmp_path):
    """The erratum matters: Meta's apply_scaling with its hard-coded 8 is not the 3.2 1B model transformers runs."""
    _batches(tmp_path, meta_oracle.SHAPES["llama3.2-1b"]["vocab_size"])
    meta_oracle.launch("write", tmp_path / "meta", "llama3.2-1b", _factor("llama3.2-1b"), tmp_path / "batches.pt",
                       tmp_path / "m32.pt")
    meta_oracle.launch("forward", tmp_path / "meta", "llama3.2-1b", 8.0, tmp_path / "batches.pt", tmp_path / "m8.pt")
    m32, m8 = (torch.load(tmp_path / f, weights_only=True) for f in ("m32.pt", "m8.pt"))
    assert (m32[1] - m8[1]).abs().max() > 0.1  # spread positions see the factor ...
    assert (m32[0] - m8[0]).abs().max() < (m32[1] - m8[1]).abs().max() / 10  # ... consecutive ones hardly


def test_convert_check_can_run_meta_code_as_its_meta_side(tmp_path):
    _batches(tmp_path, meta_oracle.SHAPES["llama3.2-1b"]["vocab_size"])
    meta_oracle.launch("write", tmp_path / "meta", "llama3.2-1b", _factor("llama3.2-1b"), tmp_path / "batches.pt",
                       tmp_path / "m.pt", nproc=2)
    r = convert(tmp_path / "meta", tmp_path / "hf", reference="meta", show_progress=False)
    assert r.check["source"].startswith("Meta's llama-models 0.3.0 code") and r.check["result"] == "transformers (streamed)"
    assert r.check["max_abs"] <= r.check["tol"] and "llama-models 0.3.0" in r.summary_line()
    back = convert(tmp_path / "hf", tmp_path / "meta2", to="meta", mp=2, reference="meta", show_progress=False)
    assert back.check["result"].startswith("Meta's llama-models 0.3.0 code (result, MP 2")


def test_reference_meta_catches_a_wrong_factor_too(tmp_path):
    from convert_helpers import write_meta_checkpoint

    from llamakit.convert import check
    from llamakit.convert.detect import open_source
    from llamakit.errors import EquivalenceError

    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "tied", 1, qk_gain=20.0)
    convert(src, tmp_path / "hf", check=False, show_progress=False)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["rope_parameters"]["factor"] = 8.0
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EquivalenceError):
        check.compare(open_source(src), tmp_path / "hf", "hf", reference_code="meta")


def test_reference_meta_without_the_extra_is_a_usage_error(tmp_path, monkeypatch):
    import sys

    from convert_helpers import write_meta_checkpoint

    from llamakit.errors import UsageError

    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 1)
    monkeypatch.setitem(sys.modules, "llama_models.llama3.model", None)  # as if llama-models were not installed
    with pytest.raises(UsageError, match=r"needs Meta's model code") as exc:
        convert(src, tmp_path / "hf", reference="meta", show_progress=False)
    assert "pip install 'llamakit[reference]'" in exc.value.one_line()
    assert not (tmp_path / "hf").exists()
