"""Word-level evaluation of a token classifier on a prepared split.

One prediction per word, from the logits at the word's first sub-token (the positions prepare
labelled; every other position is -100 and ignored): their argmax, or with `decode="viterbi"` the
best valid IOB2 sequence of the sentence (llamakit/train/decode.py). Sentences are batched by length
(sorted, padded on the right with an attention mask) and the predictions put back in file order.
Outputs, published atomically: metrics.json, predictions.txt (tags only, a blank line ends each
sentence), confusion.json (rows = gold, cols = predicted) and confusion.csv (actual,predicted per
word, for DVC's confusion plot template).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from llamakit.errors import InputFileError, UsageError

DEFAULT_BATCH_TOKENS = 4096  # padded tokens per forward pass; ~best CPU throughput for 135M


@dataclass
class EvalResult:
    out: Path
    split: str
    n_sentences: int
    n_words: int
    headline: dict
    wall_s: float
    report_text: str

    def summary_line(self) -> str:
        h = self.headline
        return (
            f"{self.split}: {self.n_sentences:,} sentences, {self.n_words:,} words — token micro F1 {h['token_micro_f1']:.4f}, "
            f"macro F1 {h['token_macro_f1']:.4f}, entity F1 {h['entity_f1']:.4f} ({self.wall_s:.1f}s) → {self.out}"
        )


def run(
    model_dir: str | Path | list[str | Path],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    device: str = "auto",
    decode: str = "argmax",
    pack_documents: int | None = None,
    show_progress: bool = True,
    cpu_isa: str = "native",
) -> EvalResult:
    """Evaluate `model_dir` on `split` of the prepared `data_dir`; publish the outputs in `out_dir`.

    device "auto" is CUDA when available, else CPU; the model runs in fp32 either way.
    `pack_documents` None packs sentences into rows as the model was fine-tuned (its config.json's
    `llamakit_pack_documents`, 0 when absent). An ensemble directory (ensemble.json, written by
    `llamakit finetune` for a recipe with `ensemble:`) runs each member in its own context and
    decodes the mean of their per-word probabilities (llamakit/train/ensemble.py). A list of
    several directories is an ensemble put together here, of models fine-tuned separately (each
    one a model or an ensemble directory; their members all count alike): how one picks members
    on dev before writing them into a recipe's `ensemble:`. `cpu_isa` caps the CPU kernels' ISA
    before torch starts (llamakit/numerics.py), as the recipe's key of that name does for training.
    """
    from llamakit import numerics

    numerics.apply(cpu_isa)
    import torch

    from llamakit.train.decode import DECODERS

    if decode not in DECODERS:
        raise UsageError(f"unknown decoder {decode!r}", fix=f"use one of {', '.join(DECODERS)}")
    from llamakit.data import prepared
    from llamakit.atomic import atomic_dir, sha256_file
    from llamakit.train import ensemble, metrics
    from llamakit.train.modeling import load_token_classifier, quiet_transformers

    t0 = time.perf_counter()
    given = [Path(d) for d in model_dir] if isinstance(model_dir, (list, tuple)) else [Path(model_dir)]
    if not given:
        raise UsageError("no model directory given", fix="pass --model DIR (repeat it for an ensemble)")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    for d in given:
        if not (d / "config.json").is_file() and not (d / ensemble.MANIFEST).is_file():
            raise InputFileError("not an HF model directory (no config.json) nor an ensemble (no ensemble.json)", path=d,
                                 fix="pass the finetune output's model/ directory")
    labels = prepared.read_labels(data_dir)
    data = prepared.read_prepared(data_dir, split, n_labels=len(labels))  # every record checked, sha256 matched
    records, manifest = data.records, data.manifest
    for d in given:
        prepared.check_tokenizer(d, manifest)

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir, adhoc = given[0], len(given) > 1  # adhoc: an ensemble put together from several --model
    members = [m for d in given for m in ensemble.member_dirs(d) or [d]] if adhoc else ensemble.member_dirs(model_dir)
    _refuse_repeats(members or [])
    pad_id = manifest["tokenizer"].get("pad_token_id")
    pad_id = pad_id if pad_id is not None else 0  # padded positions are masked out; any valid id works
    bos_id = manifest["tokenizer"].get("bos_token_id")
    n_words = sum(r["n_words"] for r in records)
    scored, info = [], []
    with _progress(show_progress) as progress:
        for k, member_dir in enumerate(members or [model_dir], start=1):
            if members:
                prepared.check_tokenizer(member_dir, manifest)
            with quiet_transformers():  # our progress bar owns stderr
                model = load_token_classifier(member_dir).eval().to(device)
            to_prepared = _label_map(model, labels, member_dir)
            pack = pack_documents if pack_documents is not None else int(getattr(model.config, "llamakit_pack_documents", 0) or 0)
            what = f"evaluating {split}" + (f" (member {k}/{len(members)})" if members else "")
            task = progress.add_task(what, total=n_words)
            lp = word_logprobs(model, records, pad_id=pad_id, batch_tokens=batch_tokens, pack_documents=pack, bos_id=bos_id,
                               on_batch=lambda n: progress.advance(task, n))
            scored.append([_to_prepared_order(x, to_prepared) for x in lp])
            info.append({"dir": member_dir, "pack": pack, "bidirectional": bool(getattr(model.config, "llamakit_bidirectional", False))})
            del model
    decoder = _decoder(labels, decode)
    pred_ids = [decoder(x) for x in ensemble.combine(scored)]

    gold = [[labels[x] for x in r["labels"] if x != -100] for r in records]
    pred = [[labels[i] for i in p] for p in pred_ids]
    types = sorted({t[2:] for t in labels if t != "O"})
    m = metrics.compute(gold, pred, labels, types)
    doc = {
        "split": split,
        "n_sentences": len(records),
        "n_words": n_words,
        "token": m["token"],
        "entity": m["entity"],
        "headline": m["headline"],
        "provenance": {
            # an adhoc ensemble has no file of its own: its members below say what each one is
            "model_config_sha256": None if adhoc else sha256_file(model_dir / ("config.json" if not members else ensemble.MANIFEST)),
            "data_manifest_sha256": sha256_file(data_dir / "manifest.json"),
            "split_sha256": manifest["files"][f"{split}.jsonl"],
            "tokenizer_sha256": manifest["tokenizer"]["sha256"],
            "bidirectional": all(x["bidirectional"] for x in info),
            "device": device,
            "dtype": "float32",
            "cpu_isa": cpu_isa,
            "entity_mode": "seqeval strict IOB2",
            "decoding": "per-word argmax" if decode == "argmax" else "viterbi (valid IOB2 sequences only)",
            "context": _context(info[0]["pack"]) if not members else "each member as it was trained (ensemble)",
            "versions": _versions(),
            # no timings here: two identical runs must write byte-identical metrics.json
        },
    }
    if members:
        doc["provenance"]["ensemble"] = {
            "combine": ensemble.COMBINE,
            "members": [{"dir": str(x["dir"]) if adhoc else x["dir"].name, "config_sha256": sha256_file(x["dir"] / "config.json"), "bidirectional": x["bidirectional"],
                         "context": _context(x["pack"])} for x in info],
        }
    with atomic_dir(out_dir, marker="metrics.json") as tmp:
        (tmp / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
        with open(tmp / "predictions.txt", "w") as f:
            for sent in pred:
                f.write("".join(t + "\n" for t in sent) + "\n")
        (tmp / "confusion.json").write_text(json.dumps(m["confusion"]) + "\n")
        with open(tmp / "confusion.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["actual", "predicted"])
            for gs, ps in zip(gold, pred):
                w.writerows(zip(gs, ps))
    wall = time.perf_counter() - t0
    return EvalResult(out_dir, split, len(records), n_words, m["headline"], wall, metrics.format_report(m["token"]))


def predict(model, records: list[dict], *, pad_id: int, batch_tokens: int = DEFAULT_BATCH_TOKENS, decode: str = "argmax",
            pack_documents: int = 0, bos_id: int | None = None, on_batch=None) -> list[list[int]]:
    """Model label ids, one per word (the labelled positions of each record), in record order."""
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    decoder = _decoder([id2label[i] for i in range(len(id2label))], decode)
    return [decoder(x) for x in word_logprobs(model, records, pad_id=pad_id, batch_tokens=batch_tokens,
                                             pack_documents=pack_documents, bos_id=bos_id, on_batch=on_batch)]


def word_logprobs(model, records: list[dict], *, pad_id: int, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                  pack_documents: int = 0, bos_id: int | None = None, on_batch=None) -> list:
    """Per record, a float32 [n_words, n_labels] array of log-probabilities (the model's label order)
    at the labelled positions, in record order.

    With `pack_documents` > 0 the model sees rows of consecutive same-document sentences, as it
    was trained (llamakit/train/packing.py); each sentence's words are still decoded on their own.
    """
    import torch

    from llamakit.train import packing

    docs = [r["doc"] if type(r.get("doc")) is int else None for r in records]
    rows, row_ids, row_labels = packing.pack(docs, [r["input_ids"] for r in records], [r["labels"] for r in records],
                                             budget=pack_documents, bos_id=bos_id)
    lengths = [len(ids) for ids in row_ids]
    order = sorted(range(len(rows)), key=lambda k: lengths[k], reverse=True)
    out: list = [None] * len(records)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in _batches(order, lengths, batch_tokens):
            width = lengths[batch[0]]  # longest first: sorted descending
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, k in enumerate(batch):
                ids[row, : lengths[k]] = torch.tensor(row_ids[k])
                mask[row, : lengths[k]] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
            for row, k in enumerate(batch):
                pos = [j for j, x in enumerate(row_labels[k]) if x != -100]
                scores = logits[row, pos]
                first = 0
                for i in rows[k]:
                    n = records[i]["n_words"]
                    out[i] = torch.log_softmax(scores[first : first + n], dim=-1).numpy()
                    first += n
            if on_batch is not None:
                on_batch(sum(records[i]["n_words"] for k in batch for i in rows[k]))
    return out


def _decoder(labels: list[str], decode: str):
    """log-probs [n_words, n_labels] → label indices: per-word argmax, or the best valid IOB2 sequence."""
    from llamakit.train import decode as decoding

    if decode == "argmax":
        return lambda lp: lp.argmax(axis=-1).tolist()
    start_ok, follows_ok = decoding.iob2_constraints(labels)
    return lambda lp: decoding.viterbi(lp, start_ok, follows_ok)


def _to_prepared_order(lp, to_prepared: list[int]):
    """Columns from the model's label order to the prepared data's (to_prepared[model index] = prepared index)."""
    import numpy as np

    out = np.empty_like(lp)
    out[:, to_prepared] = lp
    return out


def _context(pack: int) -> str:
    return f"document runs packed into rows of <= {pack} sub-tokens" if pack else "one sentence per row"


def _batches(order: list[int], lengths: list[int], batch_tokens: int):
    batch: list[int] = []
    width = 0
    for i in order:
        n = lengths[i]
        if batch and max(width, n) * (len(batch) + 1) > batch_tokens:
            yield batch
            batch, width = [], 0
        batch.append(i)
        width = max(width, n)
    if batch:
        yield batch


def _label_map(model, labels: list[str], model_dir: Path) -> list[int]:
    """Model output index → prepared label index, by label name (the orders may differ)."""
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    names = [id2label[i] for i in range(len(id2label))]
    if sorted(names) != sorted(labels):
        raise InputFileError(
            f"the model's labels {names} are not the prepared data's labels {labels}",
            path=model_dir / "config.json",
            fix="evaluate a checkpoint fine-tuned on this prepared data (its config.json carries id2label)",
        )
    return [labels.index(n) for n in names]


def _refuse_repeats(dirs: list[Path]) -> None:
    """One model counted twice would silently weigh double: the same directory, or the same weights
    reached twice (a published ensemble's members are hard links to the member runs' exports)."""
    for i, a in enumerate(dirs):
        for b in dirs[:i]:
            if a.resolve() == b.resolve() or os.path.samefile(a / "config.json", b / "config.json"):
                raise UsageError(f"the same model is given twice: {b} and {a}", fix="pass each model once (an ensemble directory already counts each of its members)")


def _versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "transformers", "seqeval")}


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("words"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
        disable=not enabled or not console.is_terminal,  # no stray bar fragments in logs and pipes
    )
