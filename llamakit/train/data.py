"""Prepared splits as training rows (read by llamakit/data/prepared.py) and the deterministic, length-bucketed batch plan.

The batch plan is a pure function of (sentence lengths, seed, epoch, budget), so every rank of a
DDP run and every resumed run computes the same plan without communicating, and a checkpoint
only needs (epoch, batch index) to say where the data stream stands. Python's `random.Random`
seeded with a string is used for it because its stream is stable across Python, numpy and torch
versions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from llamakit.data.prepared import IGNORE

SPLITS = ("train", "valid", "test")


@dataclass
class Split:
    name: str
    path: Path
    sha256: str
    input_ids: list[list[int]]
    labels: list[list[int]]
    docs: list[int | None] = field(default_factory=list)  # each row's document (its first sentence's); None: unknown
    n_sentences: int | None = None  # when rows are packed runs of sentences (pack_split); else one per row

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]

    def n_labeled(self, idxs) -> int:
        return sum(sum(1 for v in self.labels[i] if v != IGNORE) for i in idxs)


def read_train_split(data_dir: str | Path, split: str, *, n_labels: int, vocab_size: int | None = None,
                     limit: int | None = None) -> Split:
    """One prepared split as a Split, read and checked by the one prepared-data reader
    (llamakit/data/prepared.py); `limit` keeps the first N sentences."""
    from llamakit.data.prepared import read_prepared

    ps = read_prepared(data_dir, split, n_labels=n_labels, vocab_size=vocab_size, limit=limit)
    return Split(split, ps.path, ps.sha256, [r["input_ids"] for r in ps.records], [r["labels"] for r in ps.records],
                 [r["doc"] if type(r.get("doc")) is int else None for r in ps.records])


def pack_split(split: Split, *, budget: int, bos_id: int | None) -> Split:
    """`split` with runs of each document's sentences packed into rows (llamakit/train/packing.py)."""
    from llamakit.train import packing

    if budget <= 0:
        return split
    rows, ids, labels = packing.pack(split.docs, split.input_ids, split.labels, budget=budget, bos_id=bos_id)
    return Split(split.name, split.path, split.sha256, ids, labels, [split.docs[m[0]] for m in rows], n_sentences=len(split))


def epoch_batches(lengths: list[int], *, seed: int, epoch: int, max_tokens: int, max_sentences: int, sort_window: int) -> list[list[int]]:
    """One epoch's batches of sentence indices.

    Shuffle all sentences, cut the order into windows of `sort_window`, sort each window by
    length and fill batches up to `max_tokens` padded tokens (rows x longest row) or
    `max_sentences` rows, then shuffle the batch order so lengths are not correlated with steps.
    Sorting only inside a seeded window keeps the epoch random while cutting padding to a few %.
    """
    rng = random.Random(f"llamakit-order:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), sort_window):
        window = sorted(order[start : start + sort_window], key=lambda i: lengths[i])
        cur: list[int] = []
        longest = 0
        for i in window:
            grown = max(longest, lengths[i])
            if cur and (grown * (len(cur) + 1) > max_tokens or len(cur) >= max_sentences):
                batches.append(cur)
                cur, grown = [], lengths[i]
            cur.append(i)
            longest = grown
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def eval_batches(lengths: list[int], *, max_tokens: int, max_sentences: int) -> list[list[int]]:
    """Length-sorted batches in a fixed order (evaluation needs no shuffling)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (lengths[i] * (len(cur) + 1) > max_tokens or len(cur) >= max_sentences):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def collate(split: Split, idxs: list[int], *, pad_id: int, device=None):
    """Right-padded (input_ids, labels, attention_mask, n_real_tokens).

    The mask is None when every row has the same length: then no mask is built at all and SDPA
    takes its unmasked fast path (the attention modules' `is_causal` decides the direction).
    """
    import torch

    rows = [split.input_ids[i] for i in idxs]
    width = max(len(r) for r in rows)
    n_real = sum(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = None if n_real == width * len(rows) else torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(idxs):
        n = len(split.input_ids[i])
        ids[r, :n] = torch.tensor(split.input_ids[i], dtype=torch.long)
        labels[r, :n] = torch.tensor(split.labels[i], dtype=torch.long)
        if mask is not None:
            mask[r, :n] = 1
    if device is not None:
        ids, labels = ids.to(device), labels.to(device)
        mask = mask.to(device) if mask is not None else None
    return ids, labels, mask, n_real


def check_prepared(data_dir: str | Path, splits: list[Split], model_dir: str | Path) -> dict:
    """The prepared dir's manifest (the splits' sha256s were matched while reading them), after checking
    that `model_dir`'s tokenizer made the ids: ids from another tokenizer would train silently on noise."""
    from llamakit.data.prepared import check_tokenizer, read_manifest

    manifest = read_manifest(data_dir)
    check_tokenizer(model_dir, manifest)
    return manifest
