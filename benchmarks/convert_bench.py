"""Meta → HF conversion: llamakit vs transformers 4.46.3's convert_llama_weights_to_hf, side by side.

A synthetic Llama-2-7B-width checkpoint (dim 4096, 32 heads, FFN 11008, fewer layers,
MP 2, bf16, a 4000-piece sentencepiece tokenizer.model trained here) is converted by

  * llamakit:      python -m llamakit convert IN OUT [--no-check]   (this venv, this checkout)
  * transformers:  python -m transformers.models.llama.convert_llama_weights_to_hf
                       --input_dir IN --output_dir OUT --num_shards 2 --llama_version 2
                   run from a separate virtualenv (--tf-python) holding transformers==4.46.3;
                   llamakit never imports it.
  * cp of the same shard bytes, plain and fsynced, as the I/O ceiling.

Runs start from a warm page cache (the input read once beforehand); the "cold cache" pair
first drops the input shards (only them, posix_fadvise DONTNEED) from the page cache.

Each command runs in its own child process; wall time is measured around it (interpreter
start and imports included) and peak RSS is the child's ru_maxrss (which counts touched
pages of mmap'd files too). Outputs of llamakit and transformers are compared tensor by
tensor at the end. Every run starts after os.sync(), so none pays for the writeback of the
previous one's output; llamakit fsyncs its own output before the rename (its atomic commit),
transformers does not. cp, cp + fsync, llamakit --no-check, llamakit with its default check and
transformers run --runs times,
interleaved (this VM's disk is noisy, and a deleted 2 GB output is discarded on the next journal
commit, which slows whatever writes next); every ratio is of median walls.

    .venv/bin/python benchmarks/convert_bench.py --work /work/scratch/convert-bench \\
        --tf-python /work/scratch/venv-tf446/bin/python
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import torch

DIM, HEADS, FFN, VOCAB = 4096, 32, 11008, 4000  # Llama 2 7B widths, a 4000-piece vocabulary
REPO = Path(__file__).resolve().parents[1]


def train_tokenizer(path: Path) -> None:
    import sentencepiece as spm

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(6000)]
    lines = [" ".join(rng.choice(words) for _ in range(14)) for _ in range(20000)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=VOCAB, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True)
    path.write_bytes(buf.getvalue())


def make_checkpoint(out: Path, n_layers: int, tokenizer: Path, mp: int = 2) -> int:
    """A Meta MP-`mp` bf16 checkpoint written shard by shard (never the whole model in memory); returns its bytes."""
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    norms = {f"layers.{i}.{n}.weight": 1 + 0.1 * torch.randn(DIM, generator=g) for i in range(n_layers)
             for n in ("attention_norm", "ffn_norm")}
    norms["norm.weight"] = 1 + 0.1 * torch.randn(DIM, generator=g)
    shapes = {"tok_embeddings.weight": (VOCAB, DIM // mp), "output.weight": (VOCAB // mp, DIM)}  # Llama 2 splits
    for i in range(n_layers):
        p = f"layers.{i}."
        shapes.update({p + "attention.wq.weight": (DIM // mp, DIM), p + "attention.wk.weight": (DIM // mp, DIM),
                       p + "attention.wv.weight": (DIM // mp, DIM), p + "attention.wo.weight": (DIM, DIM // mp),
                       p + "feed_forward.w1.weight": (FFN // mp, DIM), p + "feed_forward.w2.weight": (DIM, FFN // mp),
                       p + "feed_forward.w3.weight": (FFN // mp, DIM)})
    for r in range(mp):
        shard = {k: (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
        shard.update({k: v.to(torch.bfloat16) for k, v in norms.items()})
        shard["rope.freqs"] = torch.ones(DIM // HEADS // 2, dtype=torch.bfloat16)
        torch.save(shard, out / f"consolidated.{r:02d}.pth")
        del shard
    params = {"dim": DIM, "multiple_of": 256, "n_heads": HEADS, "n_layers": n_layers, "norm_eps": 1e-05, "vocab_size": -1}
    (out / "params.json").write_text(json.dumps(params))
    shutil.copyfile(tokenizer, out / "tokenizer.model")
    return sum(p.stat().st_size for p in out.glob("consolidated.*.pth"))


def measure(cmd: list[str], *, env=None) -> dict:
    """Wall seconds and the child's peak RSS (MiB), via a one-child wrapper so ru_maxrss is this run's alone."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); "
               "w = time.perf_counter() - t; print(rc, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    os.sync()  # no run inherits the previous one's dirty pages still being written back
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    *child, last = out.stdout.strip().splitlines()
    rc, wall, rss_kb = last.split()
    if rc != "0":
        raise SystemExit(f"{cmd[:4]} failed ({rc}):\n{out.stderr[-3000:]}")
    run = {"wall_s": float(wall), "peak_rss_mb": int(rss_kb) / 1024, "load_before": load}
    if child and child[0].startswith("{"):  # llamakit --json: its own phase timings
        run["phases_s"] = json.loads("\n".join(child))["timings"]
    return run


def warm(paths) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def evict(paths) -> None:
    """Drop these files (only these) from the page cache, for a cold-read run."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def fresh(p: Path) -> Path:
    shutil.rmtree(p, ignore_errors=True)
    return p


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    def index(d):
        where = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(f, "pt") as st:
                where.update(dict.fromkeys(st.keys(), f))
        return where

    wa, wb = index(a), index(b)
    if wa.keys() != wb.keys():
        return False
    for k in wa:
        with safe_open(wa[k], "pt") as x, safe_open(wb[k], "pt") as y:
            if not torch.equal(x.get_tensor(k), y.get_tensor(k)):
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/work/scratch/convert-bench"))
    ap.add_argument("--tf-python", default="/work/scratch/venv-tf446/bin/python")
    ap.add_argument("--layers", type=int, default=5, help="layers of the big checkpoint (5 ≈ 2.1 GB)")
    ap.add_argument("--small-layers", type=int, default=2, help="layers of the small one, for the flat-RSS line")
    ap.add_argument("--runs", type=int, default=3, help="interleaved llamakit/transformers pairs; the wall ratio is of medians")
    args = ap.parse_args()
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    llamakit = [sys.executable, "-m", "llamakit", "convert"]  # this venv, this checkout's llamakit
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))

    tok = w / "tokenizer.model"
    if not tok.exists():
        train_tokenizer(tok)
    sizes = {}
    for name, layers in (("big", args.layers), ("small", args.small_layers)):
        d = w / f"in-{name}-{layers}L"
        sizes[name] = make_checkpoint(d, layers, tok) if not (d / "params.json").exists() else \
            sum(p.stat().st_size for p in d.glob("consolidated.*.pth"))
    big, small = w / f"in-big-{args.layers}L", w / f"in-small-{args.small_layers}L"
    largest = FFN * DIM * 2  # w1/w2/w3 merged, bf16: the largest tensor
    shards = sorted(str(p) for p in big.glob("consolidated.*.pth"))
    warm(shards + sorted(str(p) for p in small.glob("consolidated.*.pth")))

    r = {}
    fsync = "import os, sys\nfor p in sys.argv[1:]:\n    fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.close(fd)"

    def cp_runs() -> tuple[dict, dict]:
        fresh(w / "out-cp").mkdir()
        plain = measure(["cp", *shards, str(w / "out-cp")])
        fresh(w / "out-cp").mkdir()
        synced = measure(["sh", "-c", f'cp "$@" {w / "out-cp"} && {sys.executable} -c "{fsync}" {w / "out-cp"}/*', "sh",
                          *shards])
        return plain, synced

    r["llamakit small --no-check"] = measure([*llamakit, str(small), str(fresh(w / "out-lk-small")), "--no-check", "--json"],
                                             env=env)
    evict(shards)
    fresh(w / "out-cp").mkdir()
    r["cp, cold cache"] = measure(["cp", *shards, str(w / "out-cp")])
    evict(shards)
    r["llamakit --no-check, cold cache"] = measure([*llamakit, str(big), str(fresh(w / "out-lk-cold")), "--no-check",
                                                    "--json"], env=env)
    warm(shards)
    pairs, cps, checked = [], [], []
    for _ in range(args.runs):  # interleaved, so drift in the machine's load and disk hits every side alike
        cps.append(cp_runs())
        lk_run = measure([*llamakit, str(big), str(fresh(w / "out-lk")), "--no-check", "--json"], env=env)
        # the default command, as users run it: the logit check on
        checked.append(measure([*llamakit, str(big), str(fresh(w / "out-lk-check")), "--json"], env=env))
        tf_run = measure(
            [args.tf_python, "-m", "transformers.models.llama.convert_llama_weights_to_hf", "--input_dir", str(big),
             "--output_dir", str(fresh(w / "out-tf")), "--num_shards", "2", "--llama_version", "2"], env=env)
        pairs.append((lk_run, tf_run))
    median = lambda runs: sorted(runs, key=lambda x: x["wall_s"])[len(runs) // 2]  # noqa: E731
    r["cp"] = median([c[0] for c in cps])
    r["cp+fsync"] = median([c[1] for c in cps])
    r["llamakit --no-check"] = median([p[0] for p in pairs])
    r["llamakit (default: check on)"] = median(checked)
    r["transformers 4.46.3"] = median([p[1] for p in pairs])
    identical = same_tensors(w / "out-lk", w / "out-tf")

    lk, tf, cp = r["llamakit --no-check"], r["transformers 4.46.3"], r["cp"]
    gb = sizes["big"] / 1e9
    summary = {
        "checkpoint_gb": {"big": round(gb, 3), "small": round(sizes["small"] / 1e9, 3)},
        "largest_tensor_mb": round(largest / 2**20, 1),
        "runs": r,
        "triples_wall_s (llamakit --no-check, llamakit default, transformers)":
            [(a["wall_s"], c["wall_s"], b["wall_s"]) for (a, b), c in zip(pairs, checked)],
        "wall_ratio_llamakit_vs_transformers": round(lk["wall_s"] / tf["wall_s"], 3),
        "peak_rss_ratio_llamakit_vs_transformers": round(lk["peak_rss_mb"] / tf["peak_rss_mb"], 3),
        "wall_ratio_default_vs_transformers": round(r["llamakit (default: check on)"]["wall_s"] / tf["wall_s"], 3),
        "peak_rss_ratio_default_vs_transformers": round(max(c["peak_rss_mb"] for c in checked) / tf["peak_rss_mb"], 3),
        "check_s_vs_weights_s (median run)": [r["llamakit (default: check on)"]["phases_s"].get("check_s"),
                                              r["llamakit (default: check on)"]["phases_s"].get("weights_s")],
        "rss_bound_mb (2x largest + 300)": round(2 * largest / 2**20 + 300, 1),
        "throughput_gb_s": {k: round(gb / v["wall_s"], 3) for k, v in r.items() if "small" not in k},
        "throughput_vs_cp": round(cp["wall_s"] / lk["wall_s"], 3),
        "throughput_vs_cp_fsync": round(r["cp+fsync"]["wall_s"] / lk["wall_s"], 3),
        "throughput_vs_cp_cold": round(r["cp, cold cache"]["wall_s"] / r["llamakit --no-check, cold cache"]["wall_s"], 3),
        # the streaming itself (read, merge, permute, write), without interpreter start, imports and fsync
        "weights_phase_vs_cp": round(cp["wall_s"] / lk["phases_s"]["weights_s"], 3),
        "weights_phase_vs_cp_cold": round(r["cp, cold cache"]["wall_s"]
                                          / r["llamakit --no-check, cold cache"]["phases_s"]["weights_s"], 3),
        "peak_rss_small_vs_big_mb": [round(r["llamakit small --no-check"]["peak_rss_mb"], 1), round(lk["peak_rss_mb"], 1)],
        "llamakit_and_transformers_tensors_identical": identical,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(summary, indent=2))
    (w / "results.json").write_text(json.dumps(summary, indent=2))
    print("\n| run | wall s | peak RSS MiB | GB/s | llamakit phases s | load avg before |\n|---|---:|---:|---:|---|---:|")
    for k, v in r.items():
        size = sizes["small"] if "small" in k else sizes["big"]
        phases = ", ".join(f"{p.removesuffix('_s')} {s:.1f}" for p, s in v.get("phases_s", {}).items())
        print(f"| {k} | {v['wall_s']:.1f} | {v['peak_rss_mb']:.0f} | {size / 1e9 / v['wall_s']:.2f} | {phases} | "
              f"{v['load_before']:.1f} |")


if __name__ == "__main__":
    main()
