"""The real embedded default: SmolLM2-135M-Instruct GGUF → HF → Meta (MP 3) → HF, equal to transformers' GGUF loader."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from llamakit.convert import convert
from llamakit.errors import UsageError

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return"]


@pytest.fixture(scope="session")
def smol_hf(tmp_path_factory, smollm2_gguf):
    out = tmp_path_factory.mktemp("smol") / "hf"
    result = convert(smollm2_gguf, out, show_progress=False)  # with the default check
    return out, result


@pytest.fixture(scope="session")
def gguf_reference(smollm2_gguf):
    """Token ids and fp32 logits from transformers' own GGUF loading path."""
    d, name = str(smollm2_gguf.parent), smollm2_gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    return tok, batch, logits


def _logits(model_dir, batch):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(**batch).logits


def _assert_same(a, b):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_gguf_to_hf_equals_transformers_gguf_loader(smol_hf, gguf_reference):
    out, result = smol_hf
    assert result.src_format == "gguf" and result.check["top1"] == 1.0
    assert result.check["max_abs"] <= result.check["tol"]
    tok, batch, ref = gguf_reference
    _assert_same(_logits(out, batch), ref)
    ours = AutoTokenizer.from_pretrained(out)
    for text in PROMPTS + ["<|im_start|>user\nHi there!<|im_end|>\n", "  spaced   out \t text 123"]:
        assert ours.encode(text) == tok.encode(text)
    assert ours.chat_template == tok.chat_template


def test_gguf_hf_meta_mp3_hf_round_trip(smol_hf, gguf_reference, tmp_path):
    out, _ = smol_hf
    # 9 heads / 3 kv heads: MP 3 works. The built-in checks are left to the slow test below; the end-to-end
    # comparison with transformers' GGUF model here is the stronger statement anyway.
    r = convert(out, tmp_path / "meta", to="meta", mp=3, check=False, show_progress=False)
    assert r.mp_out == 3 and sorted(p.name for p in (tmp_path / "meta").glob("*.pth")) == [
        "consolidated.00.pth", "consolidated.01.pth", "consolidated.02.pth"]
    convert(tmp_path / "meta", tmp_path / "hf2", check=False, show_progress=False)
    _assert_same(_logits(tmp_path / "hf2", gguf_reference[1]), gguf_reference[2])
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cli_chain_with_every_check(smollm2_gguf, gguf_reference, tmp_path):
    """The same chain through the installed CLI, each step proving itself (the MP 3 step by Meta's reference code
    running the three shards) before committing."""
    llamakit = [sys.executable, "-m", "llamakit", "convert"]
    steps = [[smollm2_gguf, tmp_path / "hf"], [tmp_path / "hf", tmp_path / "meta", "--to", "meta", "--mp", "3"],
             [tmp_path / "meta", tmp_path / "hf2"]]
    for step in steps:
        done = subprocess.run([*llamakit, *map(str, step), "--json"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)["check"]
        assert report["max_abs"] <= report["tol"] and report["top1"] == 1.0
    _assert_same(_logits(tmp_path / "hf2", gguf_reference[1]), gguf_reference[2])


def test_smollm2_mp2_is_refused(smol_hf, tmp_path):
    out, _ = smol_hf
    with pytest.raises(UsageError, match=r"--mp 2 does not divide the model's 9 attention heads, 3 kv heads"):
        convert(out, tmp_path / "meta", to="meta", mp=2, show_progress=False)
    assert not (tmp_path / "meta").exists()
