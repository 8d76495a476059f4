"""IOB2-constrained Viterbi decoding: valid, optimal, and a no-op where argmax is already valid."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from llamakit.errors import UsageError
from llamakit.train import evaluate
from llamakit.train.decode import iob2_constraints, is_valid_iob2, viterbi
from ner_fixtures import LABELS, conll_slice, prepared_slice, tiny_classifier, tiny_tokenizer  # noqa: F401

SMALL = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _score(logprobs, path) -> float:
    return float(sum(logprobs[i, t] for i, t in enumerate(path)))


@pytest.mark.parametrize("seed", range(40))
def test_viterbi_is_the_best_valid_sequence(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6))
    logprobs = np.log(rng.dirichlet(np.ones(len(SMALL)) * 0.3, size=n))
    start_ok, follows_ok = iob2_constraints(SMALL)
    best = viterbi(logprobs, start_ok, follows_ok)
    valid = [p for p in itertools.product(range(len(SMALL)), repeat=n) if is_valid_iob2([SMALL[t] for t in p])]
    assert is_valid_iob2([SMALL[t] for t in best])
    assert _score(logprobs, best) == pytest.approx(max(_score(logprobs, p) for p in valid))


def test_constraints_and_fixed_points():
    start_ok, follows_ok = iob2_constraints(SMALL)
    assert start_ok.tolist() == [True, True, False, True, False]
    assert follows_ok[SMALL.index("B-PER"), SMALL.index("I-PER")] and follows_ok[SMALL.index("I-PER"), SMALL.index("I-PER")]
    assert not follows_ok[SMALL.index("O"), SMALL.index("I-PER")] and not follows_ok[SMALL.index("B-LOC"), SMALL.index("I-PER")]
    # an already valid argmax is kept; an I- after O is repaired to the best valid alternative
    lp = np.log(np.array([[0.1, 0.7, 0.1, 0.05, 0.05], [0.1, 0.1, 0.7, 0.05, 0.05], [0.6, 0.1, 0.1, 0.1, 0.1]]))
    assert viterbi(lp, start_ok, follows_ok) == [1, 2, 0]
    lp = np.log(np.array([[0.8, 0.1, 0.04, 0.03, 0.03], [0.1, 0.3, 0.5, 0.05, 0.05]]))
    assert viterbi(lp, start_ok, follows_ok) == [0, 1]  # O I-PER is invalid: O B-PER wins
    assert viterbi(np.zeros((0, 5)), start_ok, follows_ok) == []


def test_evaluate_with_viterbi_writes_only_valid_iob2(tiny_classifier, prepared_slice, tmp_path):
    arg = evaluate.run(tiny_classifier, prepared_slice, tmp_path / "argmax", show_progress=False)
    vit = evaluate.run(tiny_classifier, prepared_slice, tmp_path / "viterbi", decode="viterbi", show_progress=False)
    sents = [s.split("\n") for s in (tmp_path / "viterbi" / "predictions.txt").read_text()[:-2].split("\n\n")]
    assert all(is_valid_iob2(s) for s in sents) and {t for s in sents for t in s} <= set(LABELS)
    raw = [s.split("\n") for s in (tmp_path / "argmax" / "predictions.txt").read_text()[:-2].split("\n\n")]
    assert [len(s) for s in raw] == [len(s) for s in sents]
    assert not all(is_valid_iob2(s) for s in raw)  # the random head does emit invalid sequences: decoding mattered
    doc = json.loads((tmp_path / "viterbi" / "metrics.json").read_text())
    assert doc["provenance"]["decoding"].startswith("viterbi") and arg.n_words == vit.n_words
    with pytest.raises(UsageError):
        evaluate.run(tiny_classifier, prepared_slice, tmp_path / "x", decode="beam", show_progress=False)
