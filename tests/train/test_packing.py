"""Document packing (llamakit/train/packing.py): rows are runs of one document's sentences."""

from __future__ import annotations

import random

import pytest

from llamakit.train import packing
from llamakit.train.data import Split, pack_split

BOS = 1


def _corpus(seed: int, n_docs: int = 12):
    rng = random.Random(seed)
    docs, ids, labels = [], [], []
    for d in range(n_docs):
        for _ in range(rng.randint(1, 15)):
            n = rng.randint(1, 60)
            body = [rng.randrange(2, 500) for _ in range(n)]
            lab = [(t % 5) if (j == 0 or rng.random() < 0.6) else -100 for j, t in enumerate(body)]
            docs.append(d)
            ids.append([BOS] + body)
            labels.append([-100] + lab)
    return docs, ids, labels


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [1, 32, 100, 256])
def test_rows_cover_every_sentence_once_in_order_and_stay_in_one_document(seed, budget):
    docs, ids, labels = _corpus(seed)
    rows = packing.plan_rows(docs, ids, budget=budget, bos_id=BOS)
    assert [i for r in rows for i in r] == list(range(len(ids)))
    for r in rows:
        assert len({docs[i] for i in r}) == 1 and r == list(range(r[0], r[-1] + 1))
        row_ids, row_labels = packing.join(r, ids, labels, bos_id=BOS)
        assert len(row_ids) <= budget or len(r) == 1  # only a sentence longer than the budget overflows
        # one BOS, at the start; every word's label survives, in order
        assert row_ids[0] == BOS and BOS not in row_ids[1:]
        assert [x for x in row_labels if x != -100] == [x for i in r for x in labels[i] if x != -100]
    # rows are as few as the budget allows, up to the even cut's one extra row per document
    assert len(rows) <= sum(1 + -(-sum(len(ids[i]) for i in range(len(ids)) if docs[i] == d) // budget) for d in set(docs))


def test_a_document_is_cut_into_even_rows_not_greedily():
    ids = [[BOS] + [7] * 29 for _ in range(10)]  # 10 sentences of 29 tokens: 291 with one BOS
    rows = packing.plan_rows([0] * 10, ids, budget=256, bos_id=BOS)
    assert [len(r) for r in rows] == [5, 5]  # greedy filling would give 8 + a lone context-poor 2


def test_budget_zero_is_one_sentence_per_row_and_without_bos_nothing_is_dropped():
    docs, ids, labels = _corpus(0)
    assert packing.plan_rows(docs, ids, budget=0, bos_id=BOS) == [[i] for i in range(len(ids))]
    # data prepared without document ids: every sentence is a document of its own
    assert packing.plan_rows([None] * len(ids), ids, budget=256, bos_id=BOS) == [[i] for i in range(len(ids))]
    no_bos = [x[1:] for x in ids]
    rows = packing.plan_rows(docs, no_bos, budget=128, bos_id=None)
    for r in rows:
        joined, _ = packing.join(r, no_bos, [x[1:] for x in labels], bos_id=None)
        assert joined == [t for i in r for t in no_bos[i]]


def test_pack_split_keeps_identity_and_labels():
    docs, ids, labels = _corpus(3)
    split = Split("train", None, "sha", ids, labels, docs)
    assert pack_split(split, budget=0, bos_id=BOS) is split
    packed = pack_split(split, budget=200, bos_id=BOS)
    assert packed.sha256 == "sha" and len(packed) < len(split) == packed.n_sentences
    assert packed.n_labeled(range(len(packed))) == split.n_labeled(range(len(split)))
    assert max(packed.lengths) <= max(200, max(split.lengths))
