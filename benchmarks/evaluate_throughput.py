"""Evaluation throughput: llamakit's forward loop and its length bucketing vs a plain Hugging Face `Trainer.predict`.

Three comparisons on the same model, the same prepared sentences, in one process and one thread count,
interleaved per repeat (so machine load hits each alike):

  matched    llamakit vs `Trainer.predict` on the *same batches*: file order, `--batch` sentences each,
             padded to each batch's longest (the peer's usual recipe: DataCollatorForTokenClassification).
             The ratio is the loop's own overhead or gain, nothing else.
  bucketing  llamakit, `--batch` sentences per batch, length-sorted vs file order: what sorting by length
             (less padding) buys at the same batch size.
  budget     llamakit as `llamakit evaluate` runs it (length-sorted, a budget of DEFAULT_BATCH_TOKENS padded
             tokens per batch, so short sentences go many to a batch) vs length-sorted `--batch` sentences.

Reported are words/s per run, the median of each ratio, and whether all four runs predict the same tag
for every word (exit 1 if not).

    .venv/bin/python benchmarks/evaluate_throughput.py --model MODEL_DIR --data PREPARED [--limit 600] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def _ours(model, records, pad_id, batches):
    """llamakit's predict() over exactly `batches` (lists of record indices), each one forward pass."""
    from llamakit.train.evaluate import predict

    preds: list = [None] * len(records)
    t = time.perf_counter()
    for idx in batches:
        chunk = [records[i] for i in idx]
        width = max(len(r["input_ids"]) for r in chunk)
        # a budget of exactly this batch's padded size: predict() runs it as one batch
        for i, p in zip(idx, predict(model, chunk, pad_id=pad_id, batch_tokens=len(chunk) * width)):
            preds[i] = p
    return time.perf_counter() - t, preds


def ours_file_order(model, records, pad_id, batch):
    return _ours(model, records, pad_id, [list(range(i, min(i + batch, len(records)))) for i in range(0, len(records), batch)])


def ours_sorted(model, records, pad_id, batch):
    order = sorted(range(len(records)), key=lambda i: len(records[i]["input_ids"]), reverse=True)
    return _ours(model, records, pad_id, [order[i:i + batch] for i in range(0, len(order), batch)])


def ours_default(model, records, pad_id):
    from llamakit.train.evaluate import DEFAULT_BATCH_TOKENS, predict

    t = time.perf_counter()
    preds = predict(model, records, pad_id=pad_id, batch_tokens=DEFAULT_BATCH_TOKENS)
    return time.perf_counter() - t, preds


def peer(model, tok, records, batch):
    import numpy as np
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

    ds = [{"input_ids": r["input_ids"], "attention_mask": [1] * len(r["input_ids"]), "labels": r["labels"]} for r in records]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_eval_batch_size=batch, report_to=[], use_cpu=True,
                                 dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, data_collator=DataCollatorForTokenClassification(tok))
        t = time.perf_counter()
        out = trainer.predict(ds)
        dt = time.perf_counter() - t
    best = np.argmax(out.predictions, axis=-1)
    preds = [[int(best[i, j]) for j, x in enumerate(r["labels"]) if x != -100] for i, r in enumerate(records)]
    return dt, preds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=600, help="first N sentences of the split")
    ap.add_argument("--batch", type=int, default=32, help="sentences per batch (matched and bucketing runs)")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from llamakit.data import prepared
    from llamakit.train.modeling import load_token_classifier

    split = prepared.read_prepared(a.data, a.split)
    records = split.records[: a.limit]
    pad_id = split.manifest["tokenizer"]["pad_token_id"] or 0
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.convert_ids_to_tokens(pad_id)
    torch.manual_seed(0)  # a causal LM gets a random head: the same one every run
    model = load_token_classifier(a.model, labels=prepared.read_labels(a.data)).eval()
    words = sum(r["n_words"] for r in records)
    tokens = sum(len(r["input_ids"]) for r in records)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{len(records)} sentences, {words} words, {tokens} tokens, batch {a.batch} sentences")
    ratios: dict[str, list[float]] = {"matched": [], "bucketing": [], "budget": [], "overall": []}
    agree = True
    for i in range(a.repeats):
        t_file, p_file = ours_file_order(model, records, pad_id, a.batch)
        t_peer, p_peer = peer(model, tok, records, a.batch)
        t_sort, p_sort = ours_sorted(model, records, pad_id, a.batch)
        t_def, p_def = ours_default(model, records, pad_id)
        agree &= p_file == p_peer == p_sort == p_def
        ratios["matched"].append(t_peer / t_file)
        ratios["bucketing"].append(t_file / t_sort)
        ratios["budget"].append(t_sort / t_def)
        ratios["overall"].append(t_peer / t_def)
        print(f"run {i}: HF Trainer.predict {words / t_peer:7.1f} words/s ({t_peer:.1f}s) | llamakit, same batches "
              f"{words / t_file:7.1f} ({t_file:.1f}s) | llamakit sorted, {a.batch}/batch {words / t_sort:7.1f} ({t_sort:.1f}s) "
              f"| llamakit evaluate's default {words / t_def:7.1f} ({t_def:.1f}s)   load {os.getloadavg()[0]:.1f}")
    med = {k: statistics.median(v) for k, v in ratios.items()}
    print(f"median ratios: matched batches (Trainer.predict time / llamakit time) {med['matched']:.2f}; "
          f"bucketing at {a.batch}/batch (file order / length-sorted) {med['bucketing']:.2f}; "
          f"token budget (sorted {a.batch}/batch / default budget) {med['budget']:.2f}; "
          f"llamakit evaluate's default vs Trainer.predict {med['overall']:.2f}; "
          f"identical predictions: {agree}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
