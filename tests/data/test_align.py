"""Word → sub-token alignment for byte-level BPE (SmolLM2, Llama 3) and SentencePiece-style tokenizers."""

from __future__ import annotations

import pytest

from llamakit.data.align import WordTokenizer, align
from llamakit.errors import InputFileError
from ner_fixtures import build_tokenizer, conll_slice, tiny_tokenizer, words_of  # noqa: F401

SENTENCE = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]


def test_bytelevel_words_get_a_leading_space_like_running_text(tiny_tokenizer):
    wt = WordTokenizer(tiny_tokenizer)
    assert wt.info.word_prefix == "space" and wt.info.bos_token_id == wt.tok.bos_token_id
    ids, labels = align(SENTENCE, list(range(len(SENTENCE))), wt)
    # the word-by-word ids are exactly the tokenizer's ids for the sentence as mid-document text
    assert ids[1:] == wt.tok(" " + " ".join(SENTENCE), add_special_tokens=False)["input_ids"]
    assert [x for x in labels if x != -100] == list(range(len(SENTENCE)))
    # the same word gets the same pieces at the start and in the middle of a sentence
    first, _ = align(["German"], [0], wt)
    assert first[1:] == wt.word_ids("German") and wt.word_ids("German") == wt.tok(" German", add_special_tokens=False)["input_ids"]


def test_sentencepiece_style_tokenizer_gets_bare_words(conll_slice, tmp_path):
    d = build_tokenizer(words_of(conll_slice), tmp_path / "sp", style="metaspace")
    wt = WordTokenizer(d)
    assert wt.info.word_prefix == "none"  # it adds its own "▁"; a space would double it
    ids, labels = align(SENTENCE, [8] * len(SENTENCE), wt)
    starts = [i for i, x in enumerate(labels) if x != -100]
    spans = zip(starts, [*starts[1:], len(ids)])
    assert [wt.tok.decode(ids[a:b]).strip() for a, b in spans] == SENTENCE


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(InputFileError, match="no tokenizer.json or tokenizer.model") as err:
        WordTokenizer(tmp_path)
    assert err.value.file == str(tmp_path)
