"""Prepared-split reading (the CONTRACTS.md format) and the deterministic, length-bucketed batch plan.

The batch plan is a pure function of (sentence lengths, seed, epoch, budget), so every rank of a
DDP run and every resumed run computes the same plan without communicating, and a checkpoint
only needs (epoch, batch index) to say where the data stream stands. Python's `random.Random`
seeded with a string is used for it because its stream is stable across Python, numpy and torch
versions.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from llamakit.errors import InputFileError

IGNORE = -100
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


def read_labels(data_dir: str | Path) -> list[str]:
    path = Path(data_dir) / "labels.json"
    if not path.is_file():
        raise InputFileError(
            "prepared data has no labels.json", path=path, fix="run `llamakit prepare conll2003 --out DIR` and point `data:` at DIR"
        )
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"labels.json is not {{\"labels\": [...]}} ({exc})", path=path, fix="re-run `llamakit prepare`") from exc
    if not labels or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
        raise InputFileError("labels.json must list distinct label names", path=path, fix="re-run `llamakit prepare`")
    return labels


def read_split(data_dir: str | Path, split: str, *, n_labels: int, vocab_size: int | None = None, limit: int | None = None) -> Split:
    """Read `<split>.jsonl`, checking every record against the contract; `limit` keeps the first N."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise InputFileError(f"prepared data has no {split}.jsonl", path=path, fix="run `llamakit prepare conll2003` for this directory")
    digest = hashlib.sha256()
    ids_all: list[list[int]] = []
    labels_all: list[list[int]] = []
    docs_all: list[int | None] = []
    fix = "the prepared data is damaged or from another tool; re-run `llamakit prepare`"
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            digest.update(raw)
            if limit is not None and len(ids_all) >= limit:
                continue  # keep hashing: the sha256 names the whole file, as the manifest does
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                ids, labs = rec["input_ids"], rec["labels"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InputFileError(f"not a prepared record ({exc.__class__.__name__}: {exc})", path=path, line=lineno, fix=fix) from exc
            if not isinstance(ids, list) or not ids or not all(type(t) is int for t in ids):
                raise InputFileError("input_ids must be a non-empty list of ints", path=path, line=lineno, fix=fix)
            if not isinstance(labs, list) or len(labs) != len(ids) or not all(type(t) is int for t in labs):
                raise InputFileError(f"labels must be {len(ids)} ints, one per input id", path=path, line=lineno, fix=fix)
            if any(not (v == IGNORE or 0 <= v < n_labels) for v in labs):
                raise InputFileError(f"label id outside 0..{n_labels - 1} (and -100)", path=path, line=lineno, fix=fix)
            if vocab_size is not None and any(not 0 <= t < vocab_size for t in ids):
                raise InputFileError(
                    f"token id outside the model's vocabulary (0..{vocab_size - 1})",
                    path=path,
                    line=lineno,
                    fix="prepare the data with the same model's tokenizer you fine-tune",
                )
            ids_all.append(ids)
            labels_all.append(labs)
            doc = rec.get("doc")
            docs_all.append(doc if type(doc) is int else None)
    if not ids_all:
        raise InputFileError(f"{split}.jsonl has no sentences", path=path, fix="re-run `llamakit prepare`")
    return Split(split, path, digest.hexdigest(), ids_all, labels_all, docs_all)


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


def check_manifest(data_dir: str | Path, splits: list[Split], model_dir: str | Path) -> dict:
    """The prepared dir's manifest.json must vouch for the files read (sha256) and, when both sides
    name one, for the model's tokenizer: ids from another tokenizer would train silently on noise."""
    from llamakit.errors import CheckFailed

    path = Path(data_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputFileError("not a prepared data directory (no manifest.json)", path=data_dir, fix="run `llamakit prepare conll2003` first") from exc
    except ValueError as exc:
        raise InputFileError(f"manifest.json is not JSON ({exc})", path=path, fix="re-run `llamakit prepare`") from exc
    files = manifest.get("files") or {}
    for split in splits:
        want = files.get(split.path.name)
        if want is not None and want != split.sha256:
            raise CheckFailed("file differs from manifest.json's sha256", path=split.path, fix="re-run `llamakit prepare conll2003`")
    tok = ((manifest.get("tokenizer") or {}).get("files") or {}).get("tokenizer.json")
    model_tok = Path(model_dir) / "tokenizer.json"
    if tok and model_tok.is_file() and hashlib.sha256(model_tok.read_bytes()).hexdigest() != tok:
        raise InputFileError(
            "the data was prepared with a different tokenizer than this model's tokenizer.json",
            path=path,
            fix="prepare the data with --model pointing at the model you fine-tune",
        )
    return manifest
