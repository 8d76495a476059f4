"""Builders for NER tests: slices of the real CoNLL files, a tiny tokenizer, a tiny classifier.

Everything is written to tmp at test time (no corpus text is committed) and nothing depends on
/work/smollm2-hf. Import the builders, or the fixtures at the bottom, from a test module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_llama_config

LABELS = ["B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER", "O"]
SLICE_SIZES = {"train": 60, "valid": 25, "test": 40}


def write_slice(src: Path, dest: Path, n_sentences: int) -> Path:
    """The first `n_sentences` sentences of `src` (with their -DOCSTART- lines), byte for byte."""
    out, seen, in_sentence = [], 0, False
    with open(src) as f:
        for line in f:
            if seen == n_sentences:
                break
            out.append(line)
            if line.strip() and not line.startswith("-DOCSTART-"):
                in_sentence = True
            elif not line.strip() and in_sentence:
                seen, in_sentence = seen + 1, False
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(out))
    return dest


def write_conll_slice(conll_dir: Path, dest: Path, sizes: dict[str, int] = SLICE_SIZES) -> Path:
    for split, n in sizes.items():
        write_slice(conll_dir / f"{split}.txt", dest / f"{split}.txt", n)
    return dest


def words_of(data_dir: Path) -> list[str]:
    words = []
    for p in sorted(data_dir.glob("*.txt")):
        for line in p.read_text().splitlines():
            if line.strip() and not line.startswith("-DOCSTART-"):
                words.append(line.split()[0])
    return words


def build_tokenizer(words: list[str], out: Path, *, vocab_size: int = 400, style: str = "bytelevel") -> Path:
    """A tiny BPE trained on `words`, saved as an HF tokenizer dir.

    style="bytelevel": GPT-2 style like SmolLM2/Llama 3 (no prefix space added by the tokenizer).
    style="metaspace": SentencePiece style like Llama 2 (the tokenizer adds its own "▁" prefix).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        alphabet = sorted({c for w in words for c in w} | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator([" ".join(words[i : i + 20]) for i in range(0, len(words), 20)], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    fast.save_pretrained(out)
    return out


def build_classifier(tokenizer_dir: Path, out: Path, *, labels: list[str] = LABELS, seed: int = 0,
                     bidirectional: bool = False, shape: str = "gqa") -> Path:
    """A tiny random LlamaForTokenClassification saved next to a copy of the tokenizer files."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaForTokenClassification

    from llamakit.train.modeling import set_bidirectional

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = make_llama_config(
        shape, vocab_size=len(tok), max_position_embeddings=2048, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForTokenClassification(cfg).eval()
    with torch.no_grad():
        model.score.weight.mul_(50.0)  # a random head near zero would predict one tag everywhere
    set_bidirectional(model, bidirectional)
    model.save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out


# --- fixtures (session-scoped: built once, read-only afterwards) -------------------


@pytest.fixture(scope="session")
def conll_slice(conll_dir, tmp_path_factory) -> Path:
    return write_conll_slice(conll_dir, tmp_path_factory.mktemp("conll_slice"))


@pytest.fixture(scope="session")
def tiny_tokenizer(conll_slice, tmp_path_factory) -> Path:
    return build_tokenizer(words_of(conll_slice), tmp_path_factory.mktemp("tiny_tok"))


@pytest.fixture(scope="session")
def prepared_slice(conll_slice, tiny_tokenizer, tmp_path_factory) -> Path:
    from llamakit.data import conll

    out = tmp_path_factory.mktemp("prepared") / "p"
    conll.prepare(conll_slice, tiny_tokenizer, out, max_length=1024, check_counts=False, show_progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_classifier(tiny_tokenizer, tmp_path_factory) -> Path:
    return build_classifier(tiny_tokenizer, tmp_path_factory.mktemp("tiny_clf"))
