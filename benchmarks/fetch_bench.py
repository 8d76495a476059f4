"""fetch (hub source) vs huggingface_hub.snapshot_download from the same loopback hub, in one run.

Two pairings, each into the same kind of destination: a plain directory
(`fetch --out DIR`, llamakit's own engine, vs `snapshot_download(local_dir=DIR)`)
and the Hugging Face cache (`fetch` without --out, which downloads through
`hf_hub_download` and then verifies, vs `snapshot_download(cache_dir=…)`).

The hub server (tests/fetch/_servers.py) runs in its own process so neither
client shares a GIL with it. Both clients download the same repo with the same
number of parallel workers into a fresh directory per run; llamakit also hashes
every byte as it arrives and checks it against the hub's LFS sha256 / git blob
id, writes resumable parts and renames; snapshot_download checks sizes only.
Ratio = snapshot_download time / llamakit time (>= 1.0 means llamakit is no slower).

    .venv/bin/python benchmarks/fetch_bench.py [--files 4] [--file-mb 128] [--runs 3] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SERVER = r"""
import json, os, sys, random
sys.path.insert(0, sys.argv[1])
from _servers import HubServer, HubRepo
n, mb = int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(0)
block = rng.randbytes(1 << 20)
files = {f"model-{i+1:05d}-of-{n:05d}.safetensors": b"".join(block[:8] + j.to_bytes(8, "little") + block[16:]
         for j in range(i * mb, (i + 1) * mb)) for i in range(n)}
files.update({"config.json": b'{"architectures": ["LlamaForCausalLM"]}', "tokenizer.json": b"{}" * 1000,
              "model.safetensors.index.json": b'{"weight_map": {}}', "generation_config.json": b"{}"})
srv = HubServer([HubRepo("bench-org/bench-model", files)])
srv.send_size = 1 << 20
srv.__enter__()
print(srv.base, flush=True)
sys.stdin.read()
"""

CATALOG = """family: bench
releases:
  - {name: bench-model, params: 1M, variant: base, gated: false, license: x, context_length: 8, formats: [hf],
     meta: {dim: 8, n_layers: 1, n_heads: 2, vocab_size: 8, multiple_of: 4, norm_eps: 1.0e-5},
     hf: {repo: bench-org/bench-model, original_dir: null}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--file-mb", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llamakit-fetch-bench-"))
    (tmp / "manifests" / "catalog").mkdir(parents=True)
    (tmp / "manifests" / "catalog" / "bench.yaml").write_text(CATALOG)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(REPO_ROOT / "tests" / "fetch"), str(args.files), str(args.file_mb)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base = server.stdout.readline().strip()
        os.environ.update({"HF_ENDPOINT": base, "LLAMAKIT_MANIFESTS": str(tmp / "manifests"), "HF_HOME": str(tmp / "hf"),
                           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"})
        from huggingface_hub import snapshot_download

        from llamakit.fetch import fetch_release

        def hub(run: int) -> float:
            d = tmp / f"snap{run}"
            t = time.perf_counter()
            snapshot_download("bench-org/bench-model", local_dir=d, max_workers=args.workers)
            dt = time.perf_counter() - t
            shutil.rmtree(d)
            return dt

        def hub_cache(run: int) -> float:
            d = tmp / f"snapcache{run}"
            t = time.perf_counter()
            snapshot_download("bench-org/bench-model", cache_dir=d, max_workers=args.workers)
            dt = time.perf_counter() - t
            shutil.rmtree(d)
            return dt

        def mine_cache(run: int) -> float:
            d = tmp / f"ourcache{run}"
            os.environ["HF_HUB_CACHE"] = str(d)  # llamakit reads it per call (huggingface_hub froze it at import)
            t = time.perf_counter()
            res = fetch_release("bench-model", source="hf", workers=args.workers, show_progress=False)
            dt = time.perf_counter() - t
            assert all(f.status == "downloaded" for f in res.files) and str(res.out).startswith(str(d))
            shutil.rmtree(d)
            return dt

        def mine(run: int) -> float:
            d = tmp / f"ours{run}"
            t = time.perf_counter()
            res = fetch_release("bench-model", source="hf", out=d, workers=args.workers, show_progress=False)
            dt = time.perf_counter() - t
            assert all(f.status == "downloaded" for f in res.files)
            shutil.rmtree(d)
            return dt

        hub(-1), mine(-1), hub_cache(-1), mine_cache(-1)  # warm-up: imports, connection pools
        t_hub, t_mine, t_hubc, t_minec = [], [], [], []
        for r in range(args.runs):
            t_hub.append(hub(r))
            t_mine.append(mine(r))
            t_hubc.append(hub_cache(r))
            t_minec.append(mine_cache(r))
        total_mb = args.files * args.file_mb
        h, m = statistics.median(t_hub), statistics.median(t_mine)
        hc, mc = statistics.median(t_hubc), statistics.median(t_minec)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}; "
              f"{args.files} x {args.file_mb} MB LFS files + 4 small, workers={args.workers}, median of {args.runs} interleaved runs")
        print(f"{'client':36} {'s':>7} {'MB/s':>7}")
        print(f"{'huggingface_hub.snapshot_download':36} {h:7.3f} {total_mb / h:7.1f}")
        print(f"{'llamakit fetch (hash+verify inline)':36} {m:7.3f} {total_mb / m:7.1f}")
        print(f"ratio snapshot_download / llamakit = {h / m:.2f}  (local dir)")
        print(f"{'snapshot_download(cache_dir=)':36} {hc:7.3f} {total_mb / hc:7.1f}")
        print(f"{'llamakit fetch into the HF cache':36} {mc:7.3f} {total_mb / mc:7.1f}")
        print(f"ratio snapshot_download / llamakit = {hc / mc:.2f}  (HF cache)")
        print(json.dumps({"snapshot_download_s": t_hub, "llamakit_s": t_mine,
                          "snapshot_download_cache_s": t_hubc, "llamakit_cache_s": t_minec}))
    finally:
        server.stdin.close()
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
