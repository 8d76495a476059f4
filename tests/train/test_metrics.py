"""Metric code against sklearn and seqeval, on hand-made and random cases, and the seed's layout."""

from __future__ import annotations

import random

import pytest

from llamakit.train import metrics
from ner_fixtures import LABELS
from tests.seed_table import SEED_TABLE

TYPES = ["LOC", "MISC", "ORG", "PER"]

# Hand-made sentences: agreement, a missed entity, a wrong type, a boundary error, a predicted
# I- that starts a span (strict IOB2 drops it), and a tag never predicted (I-MISC).
GOLD = [
    ["B-PER", "I-PER", "O", "B-LOC"],
    ["B-ORG", "I-ORG", "I-ORG", "O", "B-MISC", "I-MISC"],
    ["O", "B-LOC", "O", "B-PER"],
    ["B-ORG", "O"],
]
PRED = [
    ["B-PER", "I-PER", "O", "O"],
    ["B-ORG", "I-ORG", "O", "O", "B-MISC", "O"],
    ["O", "B-ORG", "O", "I-PER"],
    ["B-ORG", "O"],
]


def _flat(seqs):
    return [t for s in seqs for t in s]


def _random_case(rng: random.Random, n_sent: int = 60):
    gold, pred = [], []
    for _ in range(n_sent):
        g = []
        for _ in range(rng.randint(1, 15)):
            t = rng.choice(LABELS + ["O"] * 6)
            if t.startswith("I-") and not (g and g[-1][2:] == t[2:] and g[-1] != "O"):
                t = "B-" + t[2:]  # keep gold valid IOB2
            g.append(t)
        gold.append(g)
        pred.append([t if rng.random() < 0.7 else rng.choice(LABELS) for t in g])  # predictions may be invalid IOB2
    return gold, pred


def _assert_matches_sklearn(gold, pred):
    from sklearn.metrics import classification_report

    ours = metrics.token_report(_flat(gold), _flat(pred), LABELS)
    ref = classification_report(_flat(gold), _flat(pred), labels=LABELS, output_dict=True, zero_division=0)
    for tag in LABELS + ["macro avg", "weighted avg"]:
        for k, rk in [("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"), ("support", "support")]:
            assert ours[tag][k] == pytest.approx(ref[tag][rk], abs=1e-12), (tag, k)
    # every prediction is a label, so sklearn prints "accuracy" where the seed prints "micro avg"
    for k in ("precision", "recall", "f1"):
        assert ours["micro avg"][k] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert ours["micro avg"]["support"] == len(_flat(gold))
    assert list(ours) == LABELS + list(metrics.AVERAGES)


def test_token_report_matches_sklearn_on_hand_made_case():
    _assert_matches_sklearn(GOLD, PRED)
    rep = metrics.token_report(_flat(GOLD), _flat(PRED), LABELS)
    # by hand: B-LOC gold 2, predicted 0 times → P 0 (zero division), R 0; O gold 5, pred 8, tp 5
    assert rep["B-LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert rep["O"] == {"precision": 5 / 8, "recall": 1.0, "f1": 2 * 5 / 13, "support": 5}
    assert rep["micro avg"]["f1"] == pytest.approx(11 / 16)  # 11 of 16 words right


@pytest.mark.parametrize("seed", range(5))
def test_token_report_matches_sklearn_on_random_cases(seed):
    _assert_matches_sklearn(*_random_case(random.Random(seed)))


def test_confusion_matrix_matches_sklearn():
    from sklearn.metrics import confusion_matrix

    gold, pred = _random_case(random.Random(7))
    ours = metrics.confusion_matrix(_flat(gold), _flat(pred), LABELS)
    assert ours.tolist() == confusion_matrix(_flat(gold), _flat(pred), labels=LABELS).tolist()
    with pytest.raises(ValueError, match="not in the label set"):
        metrics.confusion_matrix(["O"], ["B-CITY"], LABELS)


def test_entity_report_is_seqeval_strict_iob2():
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    rep = metrics.entity_report(GOLD, PRED, TYPES)
    # by hand: gold entities PER, LOC | ORG(3 words), MISC(2) | LOC, PER | ORG = 7; predicted PER ✓ |
    # ORG(2 words) ✗, MISC(1) ✗ | ORG ✗ (gold LOC) | ORG ✓; the lone I-PER is no entity in strict
    # mode → 5 predicted, 2 correct
    assert rep["micro avg"]["precision"] == pytest.approx(2 / 5) and rep["micro avg"]["recall"] == pytest.approx(2 / 7)
    assert rep["PER"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert rep["MISC"]["f1"] == 0.0 and rep["MISC"]["support"] == 1  # B-MISC I-MISC vs B-MISC O: boundary error
    kw = dict(mode="strict", scheme=IOB2)
    assert rep["micro avg"]["f1"] == pytest.approx(f1_score(GOLD, PRED, **kw))
    assert rep["micro avg"]["precision"] == pytest.approx(precision_score(GOLD, PRED, **kw))
    assert rep["macro avg"]["recall"] == pytest.approx(recall_score(GOLD, PRED, average="macro", **kw))
    assert list(rep) == TYPES + list(metrics.AVERAGES)
    # the default (conlleval-like) mode would count the lone I-PER as an entity: strict is stricter
    assert precision_score(GOLD, PRED) != rep["micro avg"]["precision"]


@pytest.mark.parametrize("seed", range(3))
def test_entity_report_matches_seqeval_functions_on_random_cases(seed):
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    gold, pred = _random_case(random.Random(100 + seed))
    rep = metrics.entity_report(gold, pred, TYPES)
    kw = dict(mode="strict", scheme=IOB2)
    for avg, key in [("micro", "micro avg"), ("macro", "macro avg"), ("weighted", "weighted avg")]:
        assert rep[key]["precision"] == pytest.approx(precision_score(gold, pred, average=avg, **kw))
        assert rep[key]["recall"] == pytest.approx(recall_score(gold, pred, average=avg, **kw))
        assert rep[key]["f1"] == pytest.approx(f1_score(gold, pred, average=avg, **kw))


def test_absent_entity_type_is_listed_with_zero_support():
    rep = metrics.entity_report([["B-PER", "O"]], [["B-PER", "O"]], TYPES)
    assert rep["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert rep["PER"]["f1"] == 1.0 and rep["macro avg"]["f1"] == 1.0


def test_compute_layout_and_headline():
    m = metrics.compute(GOLD, PRED, LABELS, TYPES)
    assert set(m) == {"token", "entity", "headline", "confusion"}
    assert m["headline"] == {
        "token_micro_f1": m["token"]["micro avg"]["f1"],
        "token_macro_f1": m["token"]["macro avg"]["f1"],
        "token_weighted_f1": m["token"]["weighted avg"]["f1"],
        "entity_f1": m["entity"]["micro avg"]["f1"],
    }
    assert sum(map(sum, m["confusion"]["matrix"])) == 16 and m["confusion"]["labels"] == LABELS
    with pytest.raises(ValueError, match="sentence length"):
        metrics.compute(GOLD, [p[:-1] for p in PRED], LABELS, TYPES)





def test_format_report_reproduces_the_seed_layout():
    rep = {}
    for line in SEED_TABLE.splitlines()[1:]:
        *name, p, r, f, s = line.split()
        rep[" ".join(name)] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
    assert metrics.format_report(rep) == SEED_TABLE


def test_gold_against_itself_on_the_real_test_split(conll_dir):
    from llamakit.data import conll

    sentences, _ = conll.read_conll(conll_dir / "test.txt", conll.load_spec())
    gold = [list(s.tags) for s in sentences]
    m = metrics.compute(gold, gold, LABELS, TYPES)
    seed_support = {line.split()[0]: int(line.split()[-1]) for line in SEED_TABLE.splitlines()[1:10]}
    assert {t: m["token"][t]["support"] for t in LABELS} == seed_support
    assert m["token"]["micro avg"]["support"] == 46435 and m["headline"]["token_micro_f1"] == 1.0
    assert {t: m["entity"][t]["support"] for t in TYPES} == {"LOC": 1668, "MISC": 702, "ORG": 1661, "PER": 1617}
    assert m["headline"]["entity_f1"] == 1.0
