"""`llamakit finetune RECIPE`: token-classification fine-tuning, deterministic, resumable, DDP-ready.

A plain loop (no HF Trainer) so every source of variation is pinned and recorded: seeds, threads,
deterministic kernels, a batch plan that is a pure function of (seed, epoch), and checkpoints that
carry weights + optimizer + schedule + RNG + data position. Under torchrun each rank takes the
rows `rank::world` of every global batch and the loss is normalised by the *global* count of
labelled tokens, so N processes compute the same update as one (up to summation order).
Only rank 0 writes anything.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llamakit import numerics
from llamakit.atomic import replace_dir, write_json as write_json_atomic
from llamakit.train import checkpoint as ckpt
from llamakit.train.components import Determinism, build_model, build_optimizer, check_model_dir, init_distributed, pick_device, unwrap
from llamakit.data.prepared import read_labels
from llamakit.train.data import IGNORE, Split, check_prepared, collate, epoch_batches, eval_batches, pack_split, read_train_split
from llamakit.train.outputs import export_model, summarize, summarize_ensemble, training_metrics
from llamakit.train.recipe import Recipe, load_recipe


@dataclass
class FinetuneResult:
    out: Path
    step: int
    total_steps: int
    final_loss: float | None
    tokens_per_s: float
    wall_s: float
    interrupted: bool = False
    resumed_from: int | None = None
    rank: int = 0
    world: int = 1
    dev: list = field(default_factory=list)
    tokens: int = 0

    def summary_line(self) -> str:
        where = f"{self.out}" if self.rank == 0 else f"rank {self.rank}/{self.world}"
        loss = f"{self.final_loss:.4f}" if self.final_loss is not None else "-"
        resumed = f", resumed from step {self.resumed_from}" if self.resumed_from is not None else ""
        if self.interrupted:
            return f"stopped at step {self.step}/{self.total_steps} (loss {loss}{resumed}); re-run the same command to resume → {where}"
        dev = f", dev token F1 {self.dev[-1]['token_micro_f1']:.4f}" if self.dev else ""
        return (
            f"fine-tuned {self.step} steps (loss {loss}, {self.tokens_per_s:.0f} tok/s, {self.wall_s:.0f}s{resumed}{dev}) → {where}"
        )


def run(recipe_path, *, profile: str | None = None, overrides=(), metrics: Path | None = None) -> FinetuneResult:
    """`metrics`: also write the finished run's training metrics there (outputs.training_metrics)."""
    recipe = load_recipe(recipe_path, profile=profile, overrides=list(overrides))
    provenance = {"recipe_path": str(recipe_path), "profile": profile, "overrides": list(overrides)}
    if recipe.ensemble:
        result = train_ensemble(recipe, provenance=provenance)
    else:
        result = train(recipe, provenance=provenance)
    if metrics is not None and result.rank == 0 and not result.interrupted:
        summary = json.loads((Path(recipe.out) / "train_summary.json").read_text(encoding="utf-8"))
        Path(metrics).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(metrics), training_metrics(summary))
    return result


def train_ensemble(recipe: Recipe, *, provenance: dict, on_step=None) -> FinetuneResult:
    """Train each member of `recipe.ensemble` in turn (OUT/members/<k>/, each an ordinary resumable
    run), then publish OUT/model (llamakit/train/ensemble.py) and OUT/train_summary.json."""
    from llamakit.train import ensemble

    out = Path(recipe.out)
    results = []
    for k, member in enumerate(recipe.members(), start=1):
        res = train(member, provenance={**provenance, "member": k}, on_step=on_step, keep_state=True)
        if res.interrupted:
            return res  # its summary line says where it stopped; the same command resumes there
        results.append(res)
    last = results[-1]
    tokens = sum(r.tokens for r in results)
    train_s = sum(r.tokens / r.tokens_per_s for r in results if r.tokens_per_s)
    result = FinetuneResult(out, sum(r.step for r in results), sum(r.total_steps for r in results), last.final_loss,
                            tokens / train_s if train_s else 0.0, sum(r.wall_s for r in results), False,
                            results[0].resumed_from, last.rank, last.world, last.dev, tokens)
    if last.rank == 0:
        ensemble.publish(out, recipe)
        members = [ensemble.member_summary(out, k) for k in range(1, len(results) + 1)]
        write_json_atomic(out / "train_summary.json", summarize_ensemble(recipe, provenance, members))
        if recipe.state:
            clear_state(Path(recipe.state))
    return result


def plan_epochs(recipe: Recipe, lengths: list[int]) -> list[list[list[int]]]:
    return [
        epoch_batches(
            lengths,
            seed=recipe.seed,
            epoch=e,
            max_tokens=recipe.max_tokens_per_batch,
            max_sentences=recipe.max_sentences_per_batch,
            sort_window=recipe.sort_window,
        )
        for e in range(recipe.epochs)
    ]


def train(recipe: Recipe, *, provenance: dict | None = None, on_step=None, keep_state: bool = False) -> FinetuneResult:
    """Run `recipe` (one model; `run` hands ensembles to `train_ensemble`). `on_step(position)`
    (optional) is called after every optimizer step: the benchmark times steps with it exactly as it
    times the Trainer's. `keep_state`: leave a separate `state` dir as it is when the run finishes (an
    ensemble member's final checkpoint re-exports it after DVC deleted OUT; the ensemble empties it)."""
    if recipe.ensemble:
        from llamakit.errors import UsageError

        raise UsageError("train() runs one model; this recipe is an ensemble", fix="call finetune.run, or train each of recipe.members()")
    t_start = time.perf_counter()
    out = Path(recipe.out)
    model_dir = Path(recipe.model)
    model_cfg = check_model_dir(model_dir)
    labels = read_labels(recipe.data)
    train_split = read_train_split(recipe.data, "train", n_labels=len(labels), vocab_size=model_cfg.get("vocab_size"), limit=recipe.limit_train)
    dev_split = None
    if recipe.eval_sentences:
        dev_split = read_train_split(recipe.data, "valid", n_labels=len(labels), vocab_size=model_cfg.get("vocab_size"), limit=recipe.eval_sentences)

    manifest = check_prepared(recipe.data, [s for s in (train_split, dev_split) if s is not None], model_dir)
    bos_id = (manifest.get("tokenizer") or {}).get("bos_token_id")
    train_split = pack_split(train_split, budget=recipe.pack_documents, bos_id=bos_id)
    if dev_split is not None:
        dev_split = pack_split(dev_split, budget=recipe.pack_documents, bos_id=bos_id)
    plans = plan_epochs(recipe, train_split.lengths)
    total_steps = sum(len(p) for p in plans)
    if recipe.max_steps is not None:
        total_steps = min(total_steps, recipe.max_steps)

    if recipe.deterministic:
        # cuBLAS reads this when its first handle is created, so before NCCL or the model touch CUDA.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    numerics.apply(recipe.cpu_isa)  # MKL, ATen and oneDNN read their ISA caps once, when torch starts
    import torch

    dist = init_distributed("cuda" if recipe.device != "cpu" and torch.cuda.is_available() else "cpu")
    det = Determinism(recipe)
    try:
        return _train(recipe, dist, det, out, model_dir, labels, train_split, dev_split, plans, total_steps, t_start, provenance or {}, on_step, keep_state)
    finally:
        det.restore()
        if dist.owns_group:
            import torch.distributed as tdist

            tdist.destroy_process_group()


def _train(recipe, dist, det, out, model_dir, labels, train_split, dev_split, plans, total_steps, t_start, provenance, on_step, keep_state):
    import torch
    import torch.nn.functional as F

    device = pick_device(recipe, dist.local_rank)
    fingerprint = recipe.schedule_fingerprint()
    state = Path(recipe.state) if recipe.state else out
    ckpt_dir = state / "checkpoints"
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        state.mkdir(parents=True, exist_ok=True)
        if recipe.resume == "never":
            ckpt.clear(ckpt_dir)
        elif recipe.state:
            _drop_stale_state(state, fingerprint, train_split.sha256)
    _barrier(dist)

    model = build_model(recipe, labels, device)
    optimizer, scheduler = build_optimizer(model, recipe, total_steps)
    position = ckpt.Position()
    resumed_from = None
    dev_history: list[dict] = []
    found = ckpt.list_checkpoints(ckpt_dir) if recipe.resume == "auto" else []
    if found:
        meta = ckpt.read_meta(found[-1])
        ckpt.check_compatible(found[-1], meta, fingerprint=fingerprint, data_sha256=train_split.sha256)
        position = ckpt.load(found[-1], model=model, optimizer=optimizer, scheduler=scheduler)
        dev_history = list(meta.get("dev", []))
        resumed_from = position.step

    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)

    from llamakit.train.tracking import Tracker

    tracker = Tracker(state, enabled=dist.main, resume_step=resumed_from, total_steps=total_steps, params=recipe.resolved(), log_every=recipe.log_every)
    pad_id = _pad_id(unwrap(model).config)
    label_counts = [sum(1 for v in row if v != IGNORE) for row in train_split.labels]
    trainable = [p for p in model.parameters() if p.requires_grad]
    interrupted = False
    padded_tokens = real_tokens = 0

    def save_checkpoint():
        if dist.main:
            pos = ckpt.Position(**asdict(position))
            ckpt.save(
                ckpt_dir, model=unwrap(model), optimizer=optimizer, scheduler=scheduler, position=pos,
                fingerprint=fingerprint, data_sha256=train_split.sha256, keep=recipe.keep_checkpoints,
            )
            _write_dev_history(ckpt_dir, position.step, dev_history)
        _barrier(dist)

    try:
        while position.step < total_steps and position.epoch < recipe.epochs:
            plan = plans[position.epoch]
            while position.batch < len(plan) and position.step < total_steps:
                t0 = time.perf_counter()
                batch = plan[position.batch]
                n_labels_global = sum(label_counts[i] for i in batch)
                shard = batch[dist.rank :: dist.world]
                ids, lab, mask, n_real = collate(train_split, shard or batch[:1], pad_id=pad_id, device=device)
                logits = net(input_ids=ids, attention_mask=mask).logits
                loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=IGNORE, reduction="sum")
                if not shard:
                    loss_sum = loss_sum * 0.0  # a rank with no rows still joins DDP's gradient all-reduce
                # DDP averages gradients over ranks, hence the world factor: the update is sum/N_global.
                (loss_sum * (dist.world / max(1, n_labels_global))).backward()
                if recipe.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, recipe.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step_loss = _global_loss(loss_sum.detach(), dist) / max(1, n_labels_global)
                batch_tokens = sum(train_split.lengths[i] for i in batch) if dist.world > 1 else n_real
                position.step += 1
                position.batch += 1
                position.tokens += batch_tokens
                position.last_loss = step_loss
                position.train_s += time.perf_counter() - t0
                if shard:
                    real_tokens += n_real
                    padded_tokens += ids.numel()
                tracker.step(position.step, epoch=position.epoch, loss=step_loss, lr=scheduler.get_last_lr()[0], tokens_per_s=position.tokens / position.train_s)
                if on_step is not None:
                    on_step(position)
                if position.step % recipe.checkpoint_every == 0:
                    save_checkpoint()
                if recipe.stop_after_steps is not None and position.step >= recipe.stop_after_steps and position.step < total_steps:
                    interrupted = True
                    break
            if interrupted:
                break
            if position.batch >= len(plan):
                position.epoch += 1
                position.batch = 0
                if dev_split is not None:
                    dev_history.append(_dev_eval_on_main(recipe, unwrap(model), dev_split, device, pad_id, dist, position, tracker, plans))
        if not interrupted and dev_split is not None and (not dev_history or dev_history[-1]["step"] != position.step):
            # max_steps ended the run inside an epoch: score where it stopped
            dev_history.append(_dev_eval_on_main(recipe, unwrap(model), dev_split, device, pad_id, dist, position, tracker, plans))
        if not interrupted:
            # The final state is a checkpoint too, so re-running a finished run only re-exports.
            if _has_checkpoint_at(ckpt_dir, position.step):
                if dist.main:
                    _write_dev_history(ckpt_dir, position.step, dev_history)
            else:
                save_checkpoint()
    finally:
        tracker.close()

    wall_s = time.perf_counter() - t_start
    tps = position.tokens / position.train_s if position.train_s else 0.0
    result = FinetuneResult(
        out, position.step, total_steps, position.last_loss, tps, wall_s, interrupted, resumed_from, dist.rank, dist.world, dev_history, position.tokens
    )
    if interrupted:
        return result
    if dist.main:
        export_model(recipe, unwrap(model), model_dir, out)
        summary = summarize(recipe, dist, det, train_split, labels, result, fingerprint, provenance, position, real_tokens, padded_tokens, device)
        write_json_atomic(out / "train_summary.json", summary)
        if recipe.state:
            _publish_log(state, out)
            if not keep_state:
                clear_state(state)
    _barrier(dist)
    result.wall_s = time.perf_counter() - t_start
    return result


def _drop_stale_state(state: Path, fingerprint: str, data_sha256: str) -> None:
    """A separate state dir is DVC's to manage: the stage reruns because its params or inputs changed,
    so a checkpoint of another recipe or other data there is stale, not a run to protect (with the
    state inside OUT, resuming refuses instead and says how to start over)."""
    found = ckpt.list_checkpoints(state / "checkpoints")
    if not found:
        return
    meta = ckpt.read_meta(found[-1])
    if meta.get("fingerprint") != fingerprint or meta.get("data_sha256") != data_sha256:
        print(f"note: {found[-1]} belongs to another recipe or other data; starting from step 0", file=sys.stderr)
        clear_state(state)


def _publish_log(state: Path, out: Path) -> None:
    """OUT/dvclive: the whole run's log (every session of it), copied whole from the state dir."""
    src = state / "dvclive"
    if not src.is_dir():
        return
    tmp = out / f".tmp-dvclive-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    replace_dir(tmp, out / "dvclive")


def clear_state(state: Path) -> None:
    """Empty a finished run's state dir (checkpoints, log, members'), keeping the dir itself: DVC
    records it as an empty persisted output."""
    for p in state.iterdir() if state.is_dir() else []:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _pad_id(config) -> int:
    for key in ("pad_token_id", "eos_token_id"):
        val = getattr(config, key, None)
        if isinstance(val, list):
            val = val[0] if val else None
        if isinstance(val, int):
            return val
    return 0


def _barrier(dist) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def _global_loss(loss_sum, dist) -> float:
    if dist.world > 1:
        import torch.distributed as tdist

        loss_sum = loss_sum.clone()
        tdist.all_reduce(loss_sum)
    return float(loss_sum)


def _has_checkpoint_at(ckpt_dir: Path, step: int) -> bool:
    return any(p.name == f"{ckpt.PREFIX}{step:08d}" for p in ckpt.list_checkpoints(ckpt_dir))


def _write_dev_history(ckpt_dir: Path, step: int, history: list[dict]) -> None:
    """Dev scores of finished epochs ride along in the checkpoint's meta so a resumed run keeps them."""
    path = ckpt_dir / f"{ckpt.PREFIX}{step:08d}" / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["dev"] = history
    write_json_atomic(path, meta)


def dev_eval(model, split: Split, *, device, pad_id: int, max_tokens: int, max_sentences: int) -> dict:
    """Word-level accuracy on labelled (first sub-token) positions of `split`.

    With exactly one label per word and O counted as a class, micro-averaged P = R = F1 = accuracy;
    that is the token micro-F1 of the seed table, cheap enough to log every epoch.
    """
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    correct = total = 0
    loss = 0.0
    with torch.no_grad():
        for batch in eval_batches(split.lengths, max_tokens=max_tokens, max_sentences=max_sentences):
            ids, lab, mask, _ = collate(split, batch, pad_id=pad_id, device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            sel = lab != IGNORE
            gold, scores = lab[sel], logits[sel]
            correct += int((scores.argmax(-1) == gold).sum())
            total += int(sel.sum())
            loss += float(F.cross_entropy(scores, gold, reduction="sum"))
    model.train(was_training)
    out = {"token_micro_f1": correct / max(1, total), "loss": loss / max(1, total), "words": total}
    if split.n_sentences is None:
        return {**out, "sentences": len(split)}
    return {**out, "sentences": split.n_sentences, "rows": len(split)}  # packed document runs


def _dev_eval_on_main(recipe, model, split, device, pad_id, dist, position, tracker, plans) -> dict:
    # Only rank 0 scores (on the unwrapped model: DDP's forward is a collective); the rest wait.
    metrics = {}
    if dist.main:
        metrics = dev_eval(model, split, device=device, pad_id=pad_id, max_tokens=recipe.max_tokens_per_batch, max_sentences=recipe.max_sentences_per_batch)
        tracker.eval(position.step, {"token_micro_f1": metrics["token_micro_f1"], "loss": metrics["loss"]})
    _barrier(dist)
    done = position.epoch + (position.batch / len(plans[position.epoch]) if position.epoch < len(plans) else 0.0)
    return {"epoch": round(done, 4), "step": position.step, **metrics}


