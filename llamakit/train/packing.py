"""Document context by packing: consecutive sentences of one document share a row.

A CoNLL-2003 sentence is a piece of a Reuters article, and a name's type is often only clear from
elsewhere in it (a bare "Leeds" in a match report is a club). Giving each sentence its neighbours
as unlabelled context multiplies the tokens per epoch (4-5x on this data); packing instead puts a
run of a document's sentences in one row with every word still labelled exactly once, so a
bidirectional model sees its neighbours at about the cost of one sentence per row.

Rows are cut at sentence boundaries and never cross documents. A document of T sub-tokens is
cut into about ceil(T / budget) rows of similar length (not greedily, which would leave a last
row of one context-less sentence); a sentence longer than the budget gets a row of its own. A
sentence's leading BOS is kept only at the start of its row; that position is unlabelled, so the
labels stay aligned with the words.
"""

from __future__ import annotations

import math


def pack(docs: list[int | None], input_ids: list[list[int]], labels: list[list[int]], *, budget: int,
         bos_id: int | None) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """(rows as sentence indices, each row's input_ids, each row's labels)."""
    rows = plan_rows(docs, input_ids, budget=budget, bos_id=bos_id)
    joined = [join(m, input_ids, labels, bos_id=bos_id) for m in rows]
    return rows, [ids for ids, _ in joined], [labs for _, labs in joined]


def plan_rows(docs: list[int | None], input_ids: list[list[int]], *, budget: int, bos_id: int | None) -> list[list[int]]:
    """Sentence indices of each row, in order; `budget` 0 keeps one sentence per row. A sentence whose
    document is None (data prepared without document ids) is a document of its own."""
    if budget <= 0:
        return [[i] for i in range(len(input_ids))]
    rows: list[list[int]] = []
    start = 0
    while start < len(input_ids):
        end = start + 1
        while end < len(input_ids) and docs[start] is not None and docs[end] == docs[start]:
            end += 1
        rows.extend(_cut_document(list(range(start, end)), input_ids, budget=budget, bos_id=bos_id))
        start = end
    return rows


def _cut_document(idxs: list[int], input_ids: list[list[int]], *, budget: int, bos_id: int | None) -> list[list[int]]:
    cost = [len(input_ids[i]) - (1 if _leads_with_bos(input_ids[i], bos_id) else 0) for i in idxs]
    total = sum(cost) + (1 if bos_id is not None else 0)
    target = total / max(1, math.ceil(total / budget))
    rows: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for i, c in zip(idxs, cost):
        full = len(input_ids[i])  # a row's first sentence keeps its BOS
        grown = width + c if cur else full
        if cur and (grown > budget or width >= target):
            rows.append(cur)
            cur, grown = [], full
        cur.append(i)
        width = grown
    if cur:
        rows.append(cur)
    return rows


def join(members: list[int], input_ids: list[list[int]], labels: list[list[int]], *, bos_id: int | None) -> tuple[list[int], list[int]]:
    """One row's (input_ids, labels): the members' concatenated, later members without their BOS."""
    ids: list[int] = []
    labs: list[int] = []
    for k, i in enumerate(members):
        skip = 1 if k and _leads_with_bos(input_ids[i], bos_id) else 0  # prepare never labels the BOS
        ids.extend(input_ids[i][skip:])
        labs.extend(labels[i][skip:])
    return ids, labs


def _leads_with_bos(ids: list[int], bos_id: int | None) -> bool:
    return bos_id is not None and bool(ids) and ids[0] == bos_id
