"""What a run shows and records while it trains: a rich progress bar and per-step dvclive metrics.

dvclive is kept strictly local: no Studio (DVC_STUDIO_OFFLINE), no `dvc exp save`, no dvc.yaml
edits (the pipeline's dvc.yaml declares the plots itself) and no system monitor thread. On resume
the metric files are cut back to the checkpoint's step, so steps that were trained after the last
checkpoint and then lost to a kill are not plotted twice.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path


def _truncate_tsv(live_dir: Path, last_step: int) -> None:
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv") if (live_dir / "plots").is_dir() else []:
        with tsv.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
        if not rows or "step" not in rows[0]:
            continue
        col = rows[0].index("step")
        kept = [rows[0]] + [r for r in rows[1:] if len(r) > col and r[col].isdigit() and int(r[col]) <= last_step]
        tmp = tsv.with_suffix(".tsv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, delimiter="\t", lineterminator="\n").writerows(kept)
        os.replace(tmp, tsv)


class Tracker:
    """Rank 0 only: other ranks get a Tracker(enabled=False) that does nothing."""

    def __init__(self, out: Path, *, enabled: bool, resume_step: int | None, total_steps: int, params: dict, log_every: int):
        self.enabled = enabled
        self.live = None
        self.progress = None
        self.log_every = log_every
        self.total = total_steps
        self._interactive = sys.stderr.isatty()
        self._t0 = time.perf_counter()
        if not enabled:
            return
        os.environ.setdefault("DVC_STUDIO_OFFLINE", "1")
        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        os.environ.setdefault("DVCLIVE_LOGLEVEL", "WARNING")
        from dvclive import Live

        live_dir = out / "dvclive"
        if resume_step is not None:
            _truncate_tsv(live_dir, resume_step)
        self.live = Live(
            dir=str(live_dir),
            resume=resume_step is not None,
            save_dvc_exp=False,
            dvcyaml=False,
            report=None,
            monitor_system=False,
        )
        self.live.log_params(_flat(params))
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True, highlight=False)
        if self._interactive:
            self.progress = Progress(
                TextColumn("finetune"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=total_steps, completed=resume_step or 0, loss="-", tps="-")

    def step(self, step: int, *, epoch: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        self.live.step = step
        self.live.log_metric("train/loss", loss)
        self.live.log_metric("train/lr", lr)
        self.live.log_metric("train/tokens_per_s", tokens_per_s)
        self.live.log_metric("train/epoch", epoch)
        if step % self.log_every == 0 or step == self.total:
            self.live.make_summary()  # metrics.json: rewriting it every step cost more than the TSV rows
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tokens_per_s:.0f}")
        elif step % self.log_every == 0 or step == self.total:
            # Not a terminal (a background run, a DVC stage): plain lines a log file can hold.
            self.console.print(
                f"step {step}/{self.total} epoch {epoch + 1} loss {loss:.4f} lr {lr:.3g} {tokens_per_s:.0f} tok/s "
                f"elapsed {time.perf_counter() - self._t0:.0f}s"
            )

    def eval(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.live.step = step
        for k, v in metrics.items():
            self.live.log_metric(f"dev/{k}", v)
        self.live.make_summary()
        self.console.print("dev " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.live is not None:
            # Not Live.end(): under `dvc exp run` that would also git-add the dvclive dir.
            self.live.make_summary()
            self.live = None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = ",".join(str(x) for x in v)
        else:
            out[f"{prefix}{k}"] = v
    return out
