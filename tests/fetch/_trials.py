"""Seeded fault-injection trials against the loopback servers.

One trial = one synthetic release on a server whose plan cuts connections, flips
bytes, answers 500/429/403 or stalls; the client fetches, and on failure (an
expired-URL 403, a give-up, a checksum that never matched) runs again, as a user
would. Checked on every trial:
  * nothing corrupted is ever accepted: a watcher thread hashes every file that
    appears under a final name while the fetch runs, and the end state is exact;
  * no partial or unverified file ever carries a final name (same watcher);
  * every interrupted fetch completes on retry or rerun;
  * a rerun resumes each part from at most one chunk before what was on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

from _release import hub_files, meta_files
from _servers import Faults, HubRepo, MetaRelease

from llamakit.errors import AccessError, NetworkError, VerificationError
from llamakit.fetch import fetch_release
from llamakit.fetch._engine import FetchConfig
from llamakit.verify import verify_dir

MAX_RUNS = 12


def trial_config(chunk: int = 32 << 10, transfer: str = "auto") -> FetchConfig:
    return FetchConfig(timeout=0.4, retries=6, backoff=0.01, max_backoff=0.05, chunk=chunk, fsync=False, corrupt_retries=2,
                       hf_transfer=transfer)


class FinalNameWatcher(threading.Thread):
    """Hash every file that shows up (or changes) under a final name while a fetch runs."""

    def __init__(self, root: Path, truth: dict[str, str]):
        super().__init__(daemon=True)
        self.root, self.truth = root, truth
        self.violations: list[str] = []
        self.seen: dict[str, tuple] = {}
        self._halt = threading.Event()

    def scan(self) -> None:
        if not self.root.exists():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != ".llamakit"]
            for name in filenames:
                p = Path(dirpath, name)
                rel = p.relative_to(self.root).as_posix()
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # atomic_write's temp name beside the target, not a final name
                try:
                    st = p.stat()
                    key = (st.st_ino, st.st_size, st.st_mtime_ns)
                    if self.seen.get(rel) == key:
                        continue
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                except FileNotFoundError:
                    continue
                self.seen[rel] = key
                if self.truth.get(rel) != digest:
                    self.violations.append(f"{rel}: wrong bytes under its final name ({st.st_size} bytes)")

    def run(self) -> None:
        while not self._halt.wait(0.01):
            self.scan()

    def stop(self) -> list[str]:
        self._halt.set()
        self.join()
        self.scan()
        return self.violations


def part_sizes(root: Path) -> dict[str, int]:
    """{destination path: bytes of its .part on disk}, read from the parts' own identity files."""
    parts = root / ".llamakit" / "parts"
    out = {}
    if parts.is_dir():
        for meta in parts.glob("*.json"):
            try:
                path = json.loads(meta.read_text())["path"]
                out[path] = meta.with_suffix(".part").stat().st_size
            except (OSError, ValueError, KeyError):
                continue
    return out


@dataclass
class TrialResult:
    seed: int
    kind: str
    runs: int = 0
    errors: list[str] = field(default_factory=list)
    faults: int = 0
    resumes: int = 0
    max_retransfer: int = 0
    problems: list[str] = field(default_factory=list)


def _run_until_done(res: TrialResult, out: Path, truth: dict, fetch, server, remote_of, cfg: FetchConfig) -> None:
    watcher = FinalNameWatcher(out, truth)
    watcher.start()
    try:
        while True:
            res.runs += 1
            before = part_sizes(out)
            mark = len(server.log)
            try:
                fetch()
                done = True
            except (AccessError, NetworkError, VerificationError) as exc:
                res.errors.append(type(exc).__name__)
                done = False
            reqs = server.log[mark:]
            for rel, on_disk in before.items():
                mine = [r for r in reqs if r.path == remote_of(rel) and r.method == "GET"]
                if not mine or on_disk == 0:
                    continue
                res.resumes += 1
                re_sent = on_disk - mine[0].start
                res.max_retransfer = max(res.max_retransfer, re_sent)
                if re_sent > cfg.chunk or re_sent < 0:
                    res.problems.append(f"run {res.runs}: {rel} had {on_disk} bytes on disk, resumed at {mine[0].start}")
            if done:
                break
            if res.runs >= MAX_RUNS:
                res.problems.append(f"still failing after {res.runs} runs: {res.errors}")
                break
    finally:
        res.problems += watcher.stop()
    got = {}
    for rel in truth:
        p = out / rel
        if p.is_file():
            got[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    if got != truth:
        res.problems.append(f"end state differs: {sorted(set(truth) ^ set(got)) or [k for k in truth if got.get(k) != truth[k]]}")
    if not res.problems:
        rep = verify_dir(out, show_progress=False)
        if not rep.ok:
            res.problems.append(f"verify: {rep.mismatches}")
    res.faults = sum(1 for r in server.log if r.fault and r.path.startswith(f"{res.kind}{res.seed}/"))


def meta_trial(server, tmp: Path, seed: int) -> TrialResult:
    from llamakit.fetch.meta_url import dest_path

    rng = random.Random(seed)
    prefix = f"meta{seed}"
    files = meta_files(seed, shard_kb=(60, 260))
    faults = Faults(seed=seed, p=0.4, budget=rng.randint(1, 5), kinds=("cut", "flip", "stall", "500", "429", "403"),
                    stall_s=0.8, deny_exempt=("LICENSE", "USE_POLICY.md"))
    server.add(prefix, MetaRelease(files, faults=faults))
    truth = {dest_path(k): hashlib.sha256(v).hexdigest() for k, v in files.items()}
    remote = {dest_path(k): f"{prefix}/{k}" for k in files}
    cfg = trial_config()
    out = tmp / prefix
    res = TrialResult(seed, "meta")

    def fetch():
        # A rerun after a 403 asks Meta for a fresh URL, as the error message says.
        fetch_release("tiny-llama", source="meta-url", meta_url=server.url(prefix), out=out, workers=3,
                      show_progress=False, config=cfg)

    _run_until_done(res, out, truth, fetch, server, lambda rel: remote.get(rel), cfg)
    return res


def hub_trial(server, tmp: Path, seed: int, transfer: str = "auto") -> TrialResult:
    rng = random.Random(seed)
    repo_id = f"hub{seed}/tiny-llama"
    files = hub_files(seed, weight_kb=(60, 260))
    repo = HubRepo(repo_id, files,
                   faults=Faults(seed=seed, p=0.4, budget=rng.randint(1, 4), kinds=("cut", "flip", "stall", "500", "429"),
                                 stall_s=0.8),
                   api_faults=Faults(seed=seed + 1, p=0.3, budget=1, kinds=("500", "429")))
    server.add(repo)
    fmt = "meta" if seed % 3 == 0 else "hf"
    if fmt == "hf":
        wanted = {k: k for k in files if "/" not in k and not k.endswith((".bin", ".gitattributes"))}
    else:
        wanted = {k: k.split("/", 1)[1] for k in files if k.startswith("original/")}
    truth = {dest: hashlib.sha256(files[k]).hexdigest() for k, dest in wanted.items()}
    remote = {dest: f"{repo_id}/{k}" for k, dest in wanted.items()}
    cfg = trial_config(transfer=transfer)
    out = tmp / f"hub{seed}"
    res = TrialResult(seed, "hub")

    def fetch():
        fetch_release(repo_id, source="hf", fmt=fmt, out=out, workers=3, show_progress=False, config=cfg)

    _run_until_done(res, out, truth, fetch, server, lambda rel: remote.get(rel), cfg)
    return res
