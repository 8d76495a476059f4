"""NER metrics: the token-level report (the seed's layout), seqeval entity scores, a confusion matrix.

Token level: every word is one sample; per tag precision/recall/F1/support, then the micro,
macro and weighted averages over all tags including O, as sklearn's classification_report
computes them (its "accuracy" row is our "micro avg": when every prediction is one of the
labels, micro P = micro R = micro F1 = accuracy). Entity level: seqeval in strict IOB2 mode,
where an entity is exactly a B-X followed by I-X's; a predicted I-X that starts a span is not
an entity.
"""

from __future__ import annotations

from typing import Sequence

AVERAGES = ("micro avg", "macro avg", "weighted avg")


def _prf(tp: float, n_pred: float, n_gold: float) -> dict:
    # zero_division=0, like sklearn/seqeval with zero_division=0; f1 as 2tp/(2tp+fp+fn)
    return {
        "precision": tp / n_pred if n_pred else 0.0,
        "recall": tp / n_gold if n_gold else 0.0,
        "f1": 2 * tp / (n_pred + n_gold) if (n_pred + n_gold) else 0.0,
    }


def confusion_matrix(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]):
    """Counts as an int64 array: rows = gold label, columns = predicted label (in `labels` order)."""
    import numpy as np

    index = {t: i for i, t in enumerate(labels)}
    unknown = sorted({t for t in (*gold, *pred) if t not in index})
    if unknown:
        raise ValueError(f"tags not in the label set: {unknown}")
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold tags but {len(pred)} predictions")
    n = len(labels)
    g = np.fromiter((index[t] for t in gold), dtype=np.int64, count=len(gold))
    p = np.fromiter((index[t] for t in pred), dtype=np.int64, count=len(pred))
    return np.bincount(g * n + p, minlength=n * n).reshape(n, n)


def token_report(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict:
    """{tag: {precision, recall, f1, support}, ..., micro/macro/weighted avg} over flat word tags."""
    return report_from_confusion(confusion_matrix(gold, pred, labels), labels)


def report_from_confusion(cm, labels: Sequence[str]) -> dict:
    tp = cm.diagonal()
    n_pred = cm.sum(axis=0)
    n_gold = cm.sum(axis=1)
    total = int(n_gold.sum())
    out: dict = {}
    for i, tag in enumerate(labels):
        out[tag] = {**_prf(int(tp[i]), int(n_pred[i]), int(n_gold[i])), "support": int(n_gold[i])}
    rows = [out[t] for t in labels]
    out["micro avg"] = {**_prf(int(tp.sum()), int(n_pred.sum()), total), "support": total}
    out["macro avg"] = {k: sum(r[k] for r in rows) / len(rows) for k in ("precision", "recall", "f1")}
    out["macro avg"]["support"] = total
    out["weighted avg"] = {
        k: (sum(r[k] * r["support"] for r in rows) / total if total else 0.0) for k in ("precision", "recall", "f1")
    }
    out["weighted avg"]["support"] = total
    return out


def entity_report(gold: list[list[str]], pred: list[list[str]], types: Sequence[str]) -> dict:
    """seqeval strict IOB2: {TYPE: {precision, recall, f1, support}, ..., micro/macro/weighted avg}.

    Types absent from both gold and predictions are listed with zeros and support 0; like
    seqeval, they do not enter the macro average.
    """
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    rep = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    out: dict = {}
    for key in [*sorted(set(types) | (set(rep) - set(AVERAGES))), *AVERAGES]:
        r = rep.get(key)
        out[key] = (
            {"precision": float(r["precision"]), "recall": float(r["recall"]), "f1": float(r["f1-score"]), "support": int(r["support"])}
            if r is not None
            else {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        )
    return out


def headline(token: dict, entity: dict) -> dict:
    return {
        "token_micro_f1": token["micro avg"]["f1"],
        "token_macro_f1": token["macro avg"]["f1"],
        "token_weighted_f1": token["weighted avg"]["f1"],
        "entity_f1": entity["micro avg"]["f1"],
    }


def compute(gold: list[list[str]], pred: list[list[str]], labels: Sequence[str], types: Sequence[str]) -> dict:
    """All metrics for sentences of word tags: token, entity, headline and the confusion matrix."""
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predictions differ in sentence count or sentence length")
    flat_gold = [t for s in gold for t in s]
    flat_pred = [t for s in pred for t in s]
    cm = confusion_matrix(flat_gold, flat_pred, labels)
    token = report_from_confusion(cm, labels)
    entity = entity_report(gold, pred, types)
    return {
        "token": token,
        "entity": entity,
        "headline": headline(token, entity),
        "confusion": {"labels": list(labels), "matrix": cm.tolist()},
    }


def format_report(report: dict, digits: int = 3) -> str:
    """The report as text, in the seed's layout (sklearn's classification_report rows, no blank lines)."""
    names = list(report)
    width = max(len(n) for n in names)
    lines = [" " * width + " " + "".join(f" {h:>9}" for h in ("precision", "recall", "f1-score", "support"))]
    for name in names:
        r = report[name]
        lines.append(
            f"{name:>{width}} " + "".join(f" {r[k]:>9.{digits}f}" for k in ("precision", "recall", "f1")) + f" {r['support']:>9}"
        )
    return "\n".join(lines)
