"""Evaluation throughput: llamakit's length-sorted batching vs a plain Hugging Face `Trainer.predict`.

Both run the same model on the same prepared sentences, in the same process, with the same
thread count and batch size in sentences; the peer is the usual recipe (file order,
DataCollatorForTokenClassification padding every batch to its longest sentence). The runs are
interleaved (ours, peer, ours, peer, ...) so machine load hits each alike; reported are words/s
per run, the median ratio, and whether the two agree on every word's predicted tag.

    .venv/bin/python benchmarks/evaluate_throughput.py --model MODEL_DIR --data PREPARED [--limit 600] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def ours(model, records, pad_id, batch_sentences):
    from llamakit.train.evaluate import predict

    width = max(len(r["input_ids"]) for r in records)
    t = time.perf_counter()
    # the same number of sentences per batch as the peer: the budget is for the longest batch
    preds = predict(model, records, pad_id=pad_id, batch_tokens=batch_sentences * width)
    return time.perf_counter() - t, preds


def peer(model, tok, records, batch_sentences):
    import numpy as np
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

    ds = [{"input_ids": r["input_ids"], "attention_mask": [1] * len(r["input_ids"]), "labels": r["labels"]} for r in records]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_eval_batch_size=batch_sentences, report_to=[], use_cpu=True,
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
    ap.add_argument("--batch", type=int, default=32, help="sentences per batch (both)")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from llamakit.data import conll
    from llamakit.train.modeling import load_token_classifier

    records = conll.load_split(a.data, a.split)[: a.limit]
    manifest = conll.read_manifest(a.data)
    pad_id = manifest["tokenizer"]["pad_token_id"] or 0
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.convert_ids_to_tokens(pad_id)
    model = load_token_classifier(a.model).eval()
    words = sum(r["n_words"] for r in records)
    tokens = sum(len(r["input_ids"]) for r in records)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{len(records)} sentences, {words} words, {tokens} tokens, batch {a.batch} sentences")
    ratios, agree = [], True
    for i in range(a.repeats):
        t_ours, p_ours = ours(model, records, pad_id, a.batch)
        t_peer, p_peer = peer(model, tok, records, a.batch)
        agree &= p_ours == p_peer
        ratios.append(t_peer / t_ours)
        print(f"run {i}: llamakit {words / t_ours:8.1f} words/s ({t_ours:.1f}s)   HF Trainer.predict {words / t_peer:8.1f} words/s ({t_peer:.1f}s)   ratio {t_peer / t_ours:.2f}")
    print(f"median speed ratio llamakit / Trainer.predict = {statistics.median(ratios):.2f}; identical predictions: {agree}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
