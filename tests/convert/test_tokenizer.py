"""Meta's tokenizer.model (sentencepiece for Llama 1/2, tiktoken for Llama 3) becomes an HF tokenizer that agrees."""

from __future__ import annotations

import base64
import io
import random
from collections import Counter

import pytest
import regex
from convert_helpers import write_meta_checkpoint
from transformers import AutoTokenizer

from llamakit.convert import convert
from llamakit.convert.tokenizer import LLAMA3_PATTERN, llama3_special_tokens, tokenizer_kind

TEXTS = ["hello world", "abc déf 123 4567!", "new\nlines\n\nand\ttabs", "zq xw's they'll", "日本語 ok", "a  b   c"]

pytestmark = pytest.mark.usefixtures("small_blocks")


def _corpus(seed=0) -> str:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7))) for _ in range(200)]
    return "\n".join(" ".join(rng.choice(words) for _ in range(10)) + rng.choice([".", "!", " 12", " héllo", "'s"])
                     for _ in range(400))


def _bpe_ranks(text: str, merges: int) -> dict[bytes, int]:
    """A tiny byte-level BPE in tiktoken's file format: 256 byte tokens, then merges by frequency."""
    ranks = {bytes([b]): b for b in range(256)}
    words = [[bytes([b]) for b in piece.encode()] for piece in regex.findall(LLAMA3_PATTERN, text)]
    for _ in range(merges):
        pairs = Counter(p for w in words for p in zip(w, w[1:]))
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        words = [_merge(w, a, b) for w in words]
    return ranks


def _merge(w, a, b):
    out, i = [], 0
    while i < len(w):
        if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(w[i])
            i += 1
    return out


@pytest.mark.parametrize("llama31", [False, True])
def test_tiktoken_tokenizer_model(tmp_path, llama31):
    import tiktoken

    shape = "rope_scaled" if llama31 else "gqa"
    src, _, _ = write_meta_checkpoint(tmp_path / "Meta-Llama-3" , shape, 1)
    ranks = _bpe_ranks(_corpus(), 60)
    (src / "tokenizer.model").write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    assert tokenizer_kind(src / "tokenizer.model") == "tiktoken"
    result = convert(src, tmp_path / "hf", show_progress=False)
    assert result.tokenizer.startswith("tiktoken")

    specials = llama3_special_tokens(llama31=llama31)
    assert len(specials) == 256 and len(set(specials)) == 256
    enc = tiktoken.Encoding("tiny", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens={s: len(ranks) + i for i, s in enumerate(specials)})
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    bos = len(ranks)
    for text in TEXTS + [_corpus(1)[:300]]:
        assert tok.encode(text) == [bos] + enc.encode(text), text
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    assert tok.convert_tokens_to_ids("<|eot_id|>") == len(ranks) + 9
    cfg = (tmp_path / "hf" / "config.json").read_text()
    assert f'"bos_token_id": {bos}' in cfg and f'"eos_token_id": {bos + 1}' in cfg


def test_sentencepiece_tokenizer_model_beside_the_llama2_dir(tmp_path):
    import sentencepiece as spm

    src, _, _ = write_meta_checkpoint(tmp_path / "llama-2-7b", "mha", 2)
    buf = io.BytesIO()  # Llama 2's settings: BPE, byte fallback, no normalisation, dummy prefix, digits split
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus().splitlines()), model_writer=buf, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())  # Meta's Llama 2 download puts it at the top
    result = convert(src, tmp_path / "hf", show_progress=False)
    assert result.tokenizer.startswith("sentencepiece")

    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    # transformers' Llama conversion differs from sentencepiece only on leading whitespace, so TEXTS avoid it
    for text in TEXTS + [_corpus(1)[:300]]:
        assert tok.encode(text) == [1] + sp.encode(text), text
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == buf.getvalue()

    convert(tmp_path / "hf", tmp_path / "meta", to="meta", mp=2, check=False, show_progress=False)
    assert (tmp_path / "meta" / "tokenizer.model").read_bytes() == buf.getvalue()


def test_no_tokenizer_still_converts_the_weights(tmp_path):
    src, _, _ = write_meta_checkpoint(tmp_path / "m", "gqa", 1)
    result = convert(src, tmp_path / "hf", check=False, show_progress=False)
    assert result.tokenizer.startswith("skipped") and "tokenizer: skipped" in result.summary_line()
    assert (tmp_path / "hf" / "model.safetensors").exists() and not (tmp_path / "hf" / "tokenizer.json").exists()
