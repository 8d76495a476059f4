"""The batch plan: a permutation per epoch, within the token budget, seeded, little padding."""

from __future__ import annotations

import random

from llamakit.train.data import Split, collate, epoch_batches


def lengths(n=3000, seed=1):
    rng = random.Random(seed)
    return [max(1, int(rng.lognormvariate(3.0, 0.6))) for _ in range(n)]


def test_each_epoch_is_a_permutation_within_budget():
    ls = lengths()
    for epoch in range(3):
        plan = epoch_batches(ls, seed=0, epoch=epoch, max_tokens=1024, max_sentences=64, sort_window=512)
        flat = [i for b in plan for i in b]
        assert sorted(flat) == list(range(len(ls)))
        for b in plan:
            assert len(b) <= 64
            assert len(b) == 1 or max(ls[i] for i in b) * len(b) <= 1024


def test_plan_is_a_function_of_seed_and_epoch():
    ls = lengths()
    kw = dict(max_tokens=1024, max_sentences=64, sort_window=512)
    a = epoch_batches(ls, seed=0, epoch=0, **kw)
    assert a == epoch_batches(ls, seed=0, epoch=0, **kw)
    assert a != epoch_batches(ls, seed=0, epoch=1, **kw)
    assert a != epoch_batches(ls, seed=1, epoch=0, **kw)


def test_bucketing_cuts_padding():
    ls = lengths()
    bucketed = epoch_batches(ls, seed=0, epoch=0, max_tokens=1024, max_sentences=64, sort_window=2048)
    # the naive peer: the same shuffled sentences in batches of the same mean size, unsorted
    order = list(range(len(ls)))
    random.Random(0).shuffle(order)
    size = round(len(ls) / len(bucketed))
    unsorted = [order[i : i + size] for i in range(0, len(order), size)]

    def padding(plan):
        padded = sum(max(ls[i] for i in b) * len(b) for b in plan)
        return 1 - sum(ls) / padded

    assert padding(bucketed) < 0.05 < padding(unsorted)


def test_collate_pads_right_and_drops_the_mask_when_unneeded():
    split = Split("train", None, "", [[5, 6, 7], [8, 9], [1, 2, 3]], [[0, -100, 1], [2, 3], [1, 1, 1]])
    ids, lab, mask, n = collate(split, [0, 1], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 0]] and lab.tolist() == [[0, -100, 1], [2, 3, -100]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]] and n == 5
    ids, _, mask, n = collate(split, [0, 2], pad_id=0)
    assert mask is None and n == 6
