"""What bounds `llamakit convert`'s default command (check on): three measurements on a checkpoint that
benchmarks/convert_bench.py made (default: its 2.09 GB 7B-width MP 2 one).

  phases   each piece of the default command alone, one after another in one process, torch at one
           thread: import torch, open the source, the check's source side (Meta-semantics forward),
           import transformers' Llama modeling code, the tokenizer, the check's result side (transformers'
           model over the written files; needs OUT, a finished `llamakit convert --no-check` output).
  split    the check moved out of the converting process: `llamakit convert --no-check` in one child
           process and, beside it, a second child that imports torch, runs the source side (torch at
           one thread, as convert's worker runs it), imports transformers, then waits for the first
           child to finish and runs the result side (torch at two threads) (the two
           processes share nothing; wall time is from the start of both to the end of the second).
  gil      one thread running torch operations on check-sized blocks (widen 128 × 4096 bf16 rows to
           float32, multiply 28 tokens by them) beside one thread running plain Python: how much of
           the torch thread's work gets done while the Python thread runs.

    .venv/bin/python benchmarks/convert_bound.py phases --out /tmp/out-nocheck
    .venv/bin/python benchmarks/convert_bound.py split --runs 3
    .venv/bin/python benchmarks/convert_bound.py gil
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

IN = Path("/work/scratch/convert-bench/in-big-5L")


def lap(what: str, t: float) -> float:
    print(f"{what}: {time.perf_counter() - t:.2f} s", flush=True)
    return time.perf_counter()


def phases(src: Path, out: Path) -> None:
    t = time.perf_counter()
    import torch

    t = lap("import torch", t)
    torch.set_num_threads(1)
    from llamakit.convert import check, detect, tokenizer

    t = lap("import llamakit's check", t)
    source = detect.open_source(src, torch_free=True)
    t = lap("open (torch-free plan)", t)
    side = check.source_side(source)
    t = lap("check: source side", t)
    import transformers.models.llama.modeling_llama  # noqa: F401

    t = lap("import transformers.models.llama.modeling_llama", t)
    scratch = Path(f"/tmp/convert-bound-tok-{time.time_ns()}")
    scratch.mkdir()
    tokenizer.meta_to_hf(source.tokenizer_path, scratch, llama31=False)
    shutil.rmtree(scratch)
    t = lap("tokenizer (transformers already imported)", t)
    report = check.finish(side, source, out, "hf")
    lap("check: result side + compare", t)
    print(f"max |Δlogit| {report.max_abs:.3g} (tolerance {report.tol:.3g})")


_WORKER = """
import sys, time
from pathlib import Path
t0 = time.perf_counter()
import torch
from llamakit.convert import check, detect
torch.set_num_threads(1)  # the other core is the converting process's (as convert's own worker thread does)
source = detect.open_source(Path(sys.argv[1]))
side = check.source_side(source)
t_side = time.perf_counter() - t0
import transformers.models.llama.modeling_llama
t_imports = time.perf_counter() - t0
sys.stdin.readline()  # the converting process has finished
t_go = time.perf_counter() - t0
torch.set_num_threads(2)
report = check.finish(side, source, Path(sys.argv[2]), "hf")
print(f"worker: source side done {t_side:.2f} s, transformers imported {t_imports:.2f} s, "
      f"weights written {t_go:.2f} s, check done {time.perf_counter() - t0:.2f} s, max |Δlogit| {report.max_abs:.3g}")
"""


def split(src: Path, runs: int) -> None:
    for _ in range(runs):
        out = Path("/tmp/convert-bound-split")
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(["sync"], check=True)
        t0 = time.perf_counter()
        worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(src), str(out)], stdin=subprocess.PIPE, text=True)
        subprocess.run([sys.executable, "-m", "llamakit", "convert", str(src), str(out), "--no-check", "--json"],
                       stdout=subprocess.DEVNULL, check=True)
        t_copy = time.perf_counter() - t0
        worker.communicate("go\n")
        print(f"split: converting process done {t_copy:.2f} s, total {time.perf_counter() - t0:.2f} s", flush=True)
        shutil.rmtree(out, ignore_errors=True)


def gil() -> None:
    import torch

    torch.set_num_threads(1)
    x, src, scratch = torch.randn(28, 4096), torch.randn(128, 4096).bfloat16(), torch.empty(128, 4096)

    def torch_work(n=3000):
        for _ in range(n):
            scratch.copy_(src)
            x @ scratch.T

    def python_work(n=40_000_000):
        s = 0
        for i in range(n):
            s += i

    for name, fn in (("torch blocks alone", torch_work), ("plain Python alone", python_work)):
        t = time.perf_counter()
        fn()
        lap(name, t)
    for interval in (5e-3, 2e-4):
        sys.setswitchinterval(interval)
        t = time.perf_counter()
        th = threading.Thread(target=torch_work)
        th.start()
        python_work()
        t_py = time.perf_counter() - t
        th.join()
        print(f"switch interval {interval * 1e3:g} ms, together: Python thread done {t_py:.2f} s, "
              f"both done {time.perf_counter() - t:.2f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["phases", "split", "gil"])
    ap.add_argument("--src", type=Path, default=IN)
    ap.add_argument("--out", type=Path, help="phases: a finished `llamakit convert --no-check SRC OUT`")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if a.what == "phases":
        if a.out is None:
            ap.error("phases needs --out (a finished `llamakit convert --no-check` of --src)")
        phases(a.src, a.out)
    elif a.what == "split":
        split(a.src, a.runs)
    else:
        gil()


if __name__ == "__main__":
    main()
