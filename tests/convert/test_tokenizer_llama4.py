"""Llama 4's tiktoken tokenizer.model → HF tokenizer.json, held against Meta's own llama4 Tokenizer class.

The rank file is trained in the test (tiktoken_ranks.py); Meta's `llama_models.llama4.tokenizer.Tokenizer`
reads it and numbers its 2048 specials after the ranks, and the tokenizer llamakit writes must give the
same ids on the same text (bos first, special tokens in the text read as specials, as Meta's code does
with allowed_special="all") and decode back to the text. The slow test does the same with the real
Llama 4 tokenizer.model that llama-models ships.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("llama_models")
pytest.importorskip("tiktoken")

from llama_models.llama4 import tokenizer as meta_tok  # noqa: E402
from tiktoken_ranks import write_rank_file  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from llamakit.convert.tokenizer import LLAMA4_PATTERN, llama4_meta_to_hf, llama4_special_tokens  # noqa: E402

SAMPLES = ["Hello world, the quick brown fox!", "12345 numbers  and   spaces\n\n\tnew lines ",
           "<|begin_of_text|><|header_start|>user<|header_end|>\n\nhi there<|eot|>",
           "<|image_start|><|image|><|patch|><|patch|><|image_end|> what is it?",
           "ünïcödé 日本語 🦙 — «quotes» I'm you're THEY'LL", ""]


def _same_ids(meta, hf) -> None:
    for text in SAMPLES:
        want = meta.encode(text, bos=True, eos=False, allowed_special="all")
        assert hf.encode(text) == want, text
        assert hf.decode(want[1:]) == meta.decode(want[1:]) == text


def test_special_tokens_and_pattern_are_metas():
    meta = meta_tok
    want = (meta.BASIC_SPECIAL_TOKENS + meta.LLAMA4_SPECIAL_TOKENS)
    assert llama4_special_tokens()[:len(want)] == want
    assert len(llama4_special_tokens()) == meta.Tokenizer.num_reserved_special_tokens
    assert LLAMA4_PATTERN == meta.Tokenizer.O200K_PATTERN


def test_tokenizer_json_gives_metas_ids(tmp_path):
    ranks = write_rank_file(tmp_path / "tokenizer.model", 300)
    out = tmp_path / "hf"
    out.mkdir()
    note, ids = llama4_meta_to_hf(ranks, out)
    meta = meta_tok.Tokenizer(ranks)
    assert "300 BPE ranks" in note
    assert ids["bos_token_id"] == meta.bos_id and ids["eos_token_id"] == meta.eos_id and ids["pad_token_id"] == meta.pad_id
    assert ids["stop_token_ids"] == meta.stop_tokens
    hf = AutoTokenizer.from_pretrained(out)
    assert len(hf) == meta.n_words
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (meta.bos_id, meta.eos_id, meta.pad_id)
    assert all(hf.convert_tokens_to_ids(t) == i for t, i in meta.special_tokens.items())
    _same_ids(meta, hf)
    assert (out / "original" / "tokenizer.model").read_bytes() == ranks.read_bytes()
    assert json.loads((out / "tokenizer_config.json").read_text())["bos_token"] == "<|begin_of_text|>"


def test_a_rank_file_with_gaps_is_not_converted(tmp_path):
    """Meta numbers the specials after len(ranks): a file whose ranks skip a number would shift them."""
    ranks = write_rank_file(tmp_path / "tokenizer.model", 280)
    lines = ranks.read_text().splitlines()
    ranks.write_text("\n".join(lines[:-1] + [lines[-1].split()[0] + " 400"]) + "\n")
    note, ids = llama4_meta_to_hf(ranks, tmp_path)
    assert note.startswith("skipped") and ids == {}
    assert not (tmp_path / "tokenizer.json").exists()


@pytest.mark.slow
def test_the_real_llama4_tokenizer_model(tmp_path):
    real = Path(meta_tok.__file__).parent / "tokenizer.model"  # shipped with llama-models
    note, _ = llama4_meta_to_hf(real, tmp_path)
    assert "200000 BPE ranks" in note
    _same_ids(meta_tok.Tokenizer(real), AutoTokenizer.from_pretrained(tmp_path))
