"""verify vs `openssl dgst -sha256` on the same files, in one run.

Cases (page cache warm for both tools, runs interleaved so machine load hits
both alike, median of --runs):
  single  one large file, sha256 against a lock
  multi   a multi-file release, sha256 against a lock; llamakit hashes files in parallel
  both    the multi-file release checked against a lock (sha256) AND checklist.chk (md5):
          llamakit reads each file once; the peer is `openssl dgst -sha256` + `openssl dgst -md5`
Ratios are peer time / llamakit time (> 1 means llamakit is faster).

    .venv/bin/python benchmarks/verify_bench.py [--single-mb 1024] [--files 8] [--file-mb 128] [--runs 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamakit.fetch._hashing import default_workers  # noqa: E402
from llamakit.fetch.lock import Lock, LockEntry, save_lock  # noqa: E402
from llamakit.verify import verify_dir  # noqa: E402


def make_file(path: Path, mb: int) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    block = os.urandom(8 << 20)
    with open(path, "wb") as f:
        for i in range((mb << 20) // len(block)):
            b = block[:8] + i.to_bytes(8, "little") + block[16:]  # distinct blocks, cheap to make
            f.write(b)
            sha.update(b)
            md5.update(b)
    return sha.hexdigest(), md5.hexdigest()


def make_release(root: Path, sizes_mb: list[int], *, checklist: bool) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    entries, lines, paths = [], [], []
    for i, mb in enumerate(sizes_mb):
        p = root / f"consolidated.{i:02d}.pth"
        sha, md5 = make_file(p, mb)
        entries.append(LockEntry(path=p.name, size=p.stat().st_size, sha256=sha))
        lines.append(f"{md5}  {p.name}\n")
        paths.append(p)
    save_lock(Lock(name="bench", format="meta", source={"kind": "dir"}, files=entries), root / ".llamakit" / "lock.json")
    if checklist:
        (root / "checklist.chk").write_text("".join(lines))
    return paths


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process's threads plus finished children)."""
    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    t, c = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - t, cpu() - c


def openssl(algo: str, paths: list[Path]) -> None:
    subprocess.run(["openssl", "dgst", f"-{algo}", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)


def ours(root: Path, workers: int) -> None:
    rep = verify_dir(root, workers=workers, show_progress=False)
    if not rep.ok:
        raise SystemExit(f"verify failed on {root}: {rep.mismatches}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single-mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--file-mb", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None, help="default: all cores")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    workers = args.workers or default_workers()
    base = Path(args.dir or tempfile.mkdtemp(prefix="llamakit-verify-bench-"))
    try:
        single = make_release(base / "single", [args.single_mb], checklist=False)
        multi = make_release(base / "multi", [args.file_mb] * args.files, checklist=False)
        both = make_release(base / "both", [args.file_mb] * args.files, checklist=True)
        for p in single + multi + both:  # warm the page cache for everyone
            with open(p, "rb") as f:
                while f.read(16 << 20):
                    pass
        cases = {
            "single": (lambda: openssl("sha256", single), lambda: ours(base / "single", workers)),
            "multi": (lambda: openssl("sha256", multi), lambda: ours(base / "multi", workers)),
            "both": (lambda: (openssl("sha256", both), openssl("md5", both)), lambda: ours(base / "both", workers)),
        }
        times = {k: ([], []) for k in cases}
        load0 = os.getloadavg()[0]
        for _ in range(args.runs):
            for name, (peer, mine) in cases.items():
                times[name][0].append(timed(peer))
                times[name][1].append(timed(mine))
        load = max(load0, os.getloadavg()[0])
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, llamakit workers={workers}, "
              f"load avg up to {load:.1f}; median of {args.runs} interleaved runs; wall and CPU seconds")
        print(f"{'case':7} {'data':>8} {'peer':30} {'peer s':>7} {'ours s':>7} {'GB/s':>5} {'ratio':>6}"
              f" {'peer cpu':>8} {'ours cpu':>8}")
        sizes = {"single": args.single_mb, "multi": args.files * args.file_mb, "both": args.files * args.file_mb}
        peers = {"single": "openssl dgst -sha256", "multi": "openssl dgst -sha256 (all)",
                 "both": "openssl dgst -sha256 + -md5"}
        for name in cases:
            p = statistics.median(w for w, _ in times[name][0])
            m = statistics.median(w for w, _ in times[name][1])
            pc = statistics.median(c for _, c in times[name][0])
            mc = statistics.median(c for _, c in times[name][1])
            print(f"{name:7} {sizes[name]:>5} MB {peers[name]:30} {p:7.3f} {m:7.3f} {sizes[name] / 1024 / m:5.2f} {p / m:6.2f}"
                  f" {pc:8.3f} {mc:8.3f}")
        print("ratio = peer wall / llamakit wall (> 1: llamakit faster); CPU columns: same work, so near-equal CPU "
              "means the wall ratio is set by how many cores are free")
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
