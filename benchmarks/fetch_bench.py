"""fetch (hub source) vs huggingface_hub.snapshot_download from the same loopback hub, in one run.

Three pairings, each into the same kind of destination:
  * a plain directory, as `fetch --out DIR` runs by default on this hub (no Xet: llamakit's own engine)
    vs `snapshot_download(local_dir=DIR)`;
  * the same directory with every file sent through huggingface_hub's public `hf_hub_download`
    (LLAMAKIT_HF_TRANSFER=hub: the route Xet-backed files take), then verified and renamed;
  * the Hugging Face cache: `fetch` without --out (hf_hub_download, then verify) vs
    `snapshot_download(cache_dir=…)`.

The hub server (tests/fetch/_servers.py) runs in its own process so no client shares a GIL with it.
Every client downloads the same repo with the same number of parallel workers into a fresh directory
per run; runs are interleaved and the order rotates every repeat, so all clients see the same machine
load. llamakit also checks every byte against the hub's LFS sha256 / git blob id (the engine while
writing its resumable parts, the hub-API route by reading the file once more) and fsyncs before the
rename; snapshot_download checks sizes only. Ratio = snapshot_download time / llamakit time
(>= 1.0 means llamakit is no slower), for wall time and for the client process's CPU seconds (all its
threads, not the server's), which stay meaningful when other jobs share the cores. Xet is off for every
client (the loopback hub serves no Xet).

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
srv = HubServer([HubRepo(sys.argv[4], files)])
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
REPO_ID = "bench-org/bench-model"


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
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(REPO_ROOT / "tests" / "fetch"), str(args.files), str(args.file_mb),
                               REPO_ID],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base = server.stdout.readline().strip()
        os.environ.update({"HF_ENDPOINT": base, "LLAMAKIT_MANIFESTS": str(tmp / "manifests"), "HF_HOME": str(tmp / "hf"),
                           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"})
        from huggingface_hub import snapshot_download

        from llamakit.fetch import fetch_release
        from llamakit.fetch._engine import FetchConfig

        def llamakit(transfer: str, *, cache: bool):
            def go(d: Path) -> None:
                cfg = FetchConfig.from_env()
                cfg.hf_transfer = transfer
                if cache:
                    os.environ["HF_HUB_CACHE"] = str(d)  # llamakit reads it per call (huggingface_hub froze it at import)
                res = fetch_release("bench-model", source="hf", out=None if cache else d, workers=args.workers,
                                    show_progress=False, config=cfg)
                assert all(f.status == "downloaded" for f in res.files) and str(res.out).startswith(str(d))
            return go

        clients = {  # name: (download into a fresh directory, the snapshot_download client it is paired with)
            "snapshot_download(local_dir=)": (lambda d: snapshot_download(REPO_ID, local_dir=d, max_workers=args.workers), None),
            "llamakit fetch --out (engine)": (llamakit("auto", cache=False), "snapshot_download(local_dir=)"),
            "llamakit fetch --out (hub API)": (llamakit("hub", cache=False), "snapshot_download(local_dir=)"),
            "snapshot_download(cache_dir=)": (lambda d: snapshot_download(REPO_ID, cache_dir=d, max_workers=args.workers), None),
            "llamakit fetch into the HF cache": (llamakit("auto", cache=True), "snapshot_download(cache_dir=)"),
        }

        def timed(name: str, run: int) -> tuple[float, float]:
            """(wall s, CPU s of this process: every client thread, not the server) for one download."""
            d = tmp / f"run{run}"
            t, c = time.perf_counter(), time.process_time()
            clients[name][0](d)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            shutil.rmtree(d)
            return dt, dc

        names = list(clients)
        for name in names:
            timed(name, -1)  # warm-up: imports, connection pools
        times: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.runs):
            for name in names[r % len(names):] + names[:r % len(names)]:
                dt, dc = timed(name, r)
                times[name].append(dt)
                cpu[name].append(dc)
            print(f"repeat {r}: " + ", ".join(f"{n} {times[n][-1]:.2f}s/{cpu[n][-1]:.2f} cpu" for n in names),
                  file=sys.stderr, flush=True)
        total_mb = args.files * args.file_mb
        med = {name: statistics.median(ts) for name, ts in times.items()}
        medc = {name: statistics.median(ts) for name, ts in cpu.items()}
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}; "
              f"{args.files} x {args.file_mb} MB LFS files + 4 small, workers={args.workers}, "
              f"median of {args.runs} interleaved runs (order rotated)")
        print(f"{'client':36} {'s':>7} {'MB/s':>7} {'ratio':>6} {'cpu s':>7} {'ratio':>6}")
        for name in names:
            pair = clients[name][1]
            ratio = f"{med[pair] / med[name]:6.2f}" if pair else " " * 6
            cratio = f"{medc[pair] / medc[name]:6.2f}" if pair else ""
            print(f"{name:36} {med[name]:7.3f} {total_mb / med[name]:7.1f} {ratio} {medc[name]:7.3f} {cratio}")
        print("ratio = the paired snapshot_download's median / this client's median (wall, then CPU seconds of the"
              " client process: the CPU column stays meaningful when other jobs share the cores)")
        print(json.dumps({"wall_s": times, "cpu_s": cpu}))
    finally:
        server.stdin.close()
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
