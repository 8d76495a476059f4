"""Training tokens/s: `llamakit finetune`'s loop vs Hugging Face `Trainer` loops on the same model.

All three runs train the same LlamaForTokenClassification (built by llamakit's own `build_model`,
bidirectional as the recipe says) with the same thread count, deterministic kernels, fused AdamW,
warmup + linear schedule, grad clipping and number of steps:

  llamakit              the real command path (`finetune.train`) with its length-bucketed batches;
  trainer_same_batches  Trainer fed llamakit's exact batches in the same order, one pre-collated
                        batch per step: only the loop differs;
  trainer_default       Trainer as usually set up for NER: its default random sampler and
                        `DataCollatorForTokenClassification` padding fixed-size batches of the
                        same mean number of sentences: the loop *and* the batching differ.

Tokens are real (non-padding) tokens. Every run is timed the same way: a stamp (wall clock,
process CPU time, tokens) at the end of every optimizer step, rates from the end of step 1 to the
end of the last step (setup, first-step allocations, load and save excluded). Runs alternate so a
noisy shared machine hits all alike; the ratios of medians are printed, in wall-clock tokens/s
and in tokens per CPU-second.

    .venv/bin/python benchmarks/train_bench.py --model work/model-hf --data work/prepared --steps 8 --repeats 3
    .venv/bin/python benchmarks/train_bench.py --tiny            # smoke: tiny random model, synthetic data
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def recipe_for(args, out: Path):
    from llamakit.train.recipe import Recipe

    return Recipe(
        model=str(args.model), data=str(args.data), out=str(out), threads=args.threads, max_steps=args.steps,
        max_tokens_per_batch=args.max_tokens, max_sentences_per_batch=args.max_sentences, lr=5e-5,
        checkpoint_every=10**6, eval_sentences=0, log_every=10**6, bidirectional=True, method="full", epochs=args.epochs,
    )


class Stamps:
    """(wall, cpu, tokens so far) at the end of every optimizer step. Rates are taken from the end of
    step 1 to the end of the last step, so one-time costs (first-touch allocations, setup) and
    everything outside the loop (model load, save) are excluded on both sides alike."""

    def __init__(self):
        self.rows: list[tuple[float, float, int]] = []

    def mark(self, tokens: int) -> None:
        self.rows.append((time.perf_counter(), time.process_time(), tokens))

    def rates(self) -> dict:
        (w0, c0, t0), (w1, c1, t1) = self.rows[0], self.rows[-1]
        return {"steps": len(self.rows) - 1, "tokens": t1 - t0, "tokens_per_s": (t1 - t0) / (w1 - w0), "tokens_per_cpu_s": (t1 - t0) / (c1 - c0)}


def run_llamakit(args, root: Path) -> dict:
    from llamakit.train import finetune

    stamps = Stamps()
    out = root / f"lk-{time.monotonic_ns()}"
    res = finetune.train(recipe_for(args, out), on_step=lambda pos: stamps.mark(pos.tokens))
    return {**stamps.rates(), "final_loss": res.final_loss}


def run_trainer(args, root: Path, *, same_batches: bool) -> dict:
    """The HF Trainer peer. same_batches=True: llamakit's exact batches, so only the loop differs.
    same_batches=False: Trainer as usually set up for NER: its default random sampler and
    `DataCollatorForTokenClassification` padding fixed-size batches of the same mean size."""
    import torch
    from transformers import AutoTokenizer, DataCollatorForTokenClassification, Trainer, TrainerCallback, TrainingArguments

    from llamakit.train.components import Determinism, build_model
    from llamakit.data.prepared import read_labels
    from llamakit.train.data import collate, read_train_split
    from llamakit.train.finetune import plan_epochs

    recipe = recipe_for(args, root / "unused")
    det = Determinism(recipe)  # same seeds, threads and deterministic kernels as the llamakit run
    try:
        labels = read_labels(recipe.data)
        split = read_train_split(recipe.data, "train", n_labels=len(labels))
        plan = [b for p in plan_epochs(recipe, split.lengths) for b in p][: args.steps]
        model = build_model(recipe, labels, torch.device("cpu"))
        pad_id = model.config.pad_token_id if isinstance(model.config.pad_token_id, int) else 0
        stamps = Stamps()
        if same_batches:
            dataset, batch_size = plan, 1

            def collator(items):
                ids, lab, mask, _ = collate(split, items[0], pad_id=pad_id)
                batch = {"input_ids": ids, "labels": lab}
                if mask is not None:
                    batch["attention_mask"] = mask
                return batch

            def real_tokens(items):
                return sum(split.lengths[i] for i in items[0])
        else:
            dataset = [{"input_ids": i, "labels": l} for i, l in zip(split.input_ids, split.labels)]
            batch_size = max(1, round(sum(len(b) for b in plan) / len(plan)))
            hf_collate = DataCollatorForTokenClassification(AutoTokenizer.from_pretrained(recipe.model))

            def collator(items):
                return hf_collate(items)

            def real_tokens(items):
                return sum(len(x["input_ids"]) for x in items)

        seen = [0]

        def counting(items):
            seen[0] += real_tokens(items)
            return collator(items)

        class Clock(TrainerCallback):
            def on_step_end(self, args_, state, control, **kw):
                stamps.mark(seen[0])

        targs = TrainingArguments(
            output_dir=str(root / "hf"), per_device_train_batch_size=batch_size, max_steps=len(plan), learning_rate=recipe.lr,
            lr_scheduler_type="linear", warmup_steps=recipe.warmup_ratio, weight_decay=0.0, max_grad_norm=1.0,
            optim="adamw_torch_fused", train_sampling_strategy="sequential" if same_batches else "random",
            save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[], use_cpu=True,
            dataloader_num_workers=0, seed=recipe.seed, disable_tqdm=True, remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=counting, callbacks=[Clock()])
        out = trainer.train()
        return {**stamps.rates(), "final_loss": out.training_loss, "batch_size": batch_size}
    finally:
        det.restore()


def tiny_assets(root: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.train._fixtures import write_prepared, write_tiny_model

    model = write_tiny_model(root / "tiny-model")
    return model, write_prepared(root / "tiny-data", n_train=512, model_dir=model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("work/model-hf"))
    ap.add_argument("--data", type=Path, default=Path("work/prepared"))
    ap.add_argument("--tiny", action="store_true", help="tiny random model and synthetic data (smoke test)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1, help="epochs planned (steps stop at --steps)")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--max-sentences", type=int, default=64)
    args = ap.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        root = Path(tmp)
        if args.tiny:
            args.model, args.data = tiny_assets(root)
            args.epochs = max(args.epochs, 5)
        runs = {
            "llamakit": lambda: run_llamakit(args, root),
            "trainer_same_batches": lambda: run_trainer(args, root, same_batches=True),
            "trainer_default": lambda: run_trainer(args, root, same_batches=False),
        }
        results: dict[str, list] = {k: [] for k in runs}
        for rep in range(args.repeats):
            for name, fn in runs.items():
                results[name].append(fn())
                r = results[name][-1]
                print(f"  [{rep + 1}] {name:22s} {r['tokens_per_s']:8.1f} tok/s  {r['tokens_per_cpu_s']:8.1f} tok/cpu-s", flush=True)

    def med(side, key):
        return statistics.median(r[key] for r in results[side])

    summary = {
        "model": str(args.model), "timed_steps": results["llamakit"][0]["steps"], "threads": args.threads,
        "max_tokens_per_batch": args.max_tokens, "trainer_default_batch_size": results["trainer_default"][0]["batch_size"],
        **{f"{k}_tokens_per_s": round(med(k, "tokens_per_s"), 2) for k in runs},
    }
    for peer in ("trainer_same_batches", "trainer_default"):
        summary[f"ratio_vs_{peer}"] = round(med("llamakit", "tokens_per_s") / med(peer, "tokens_per_s"), 3)
        summary[f"ratio_cpu_vs_{peer}"] = round(med("llamakit", "tokens_per_cpu_s") / med(peer, "tokens_per_cpu_s"), 3)
    print(json.dumps(summary, indent=2))
    print(
        f"llamakit finetune: {summary['ratio_vs_trainer_same_batches']:.2f}x HF Trainer on the same batches, "
        f"{summary['ratio_vs_trainer_default']:.2f}x HF Trainer with its default sampler + padding collator (tokens/s)"
    )


if __name__ == "__main__":
    main()
