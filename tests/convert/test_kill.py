"""SIGKILL at random moments of real `llamakit convert` processes: DST is never half-written.

One run is a fresh `python -m llamakit convert` subprocess; the twenty killed runs are the
same CLI entry point forked from a warm interpreter (kill_server.py) so that they cost the
conversion, not twenty `import torch`s.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from convert_helpers import write_meta_checkpoint

from llamakit.convert import convert

RUNS = 20
SHARD = "40KB"  # many small output files: many moments at which a kill could tear something

# linux_only: a forked child's liveness is read from /proc/PID/stat (a zombie still answers kill(pid, 0)).
pytestmark = [pytest.mark.usefixtures("small_blocks"), pytest.mark.linux_only]


def _snapshot(d: Path) -> dict[str, bytes] | None:
    if not d.exists():
        return None
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _args(src: Path, dst: Path) -> list[str]:
    return [str(src), str(dst), "--no-check", "--force", "--max-shard-size", SHARD, "--json"]


def _await_staging(pid: int, dst: Path, exited, timeout: float = 120.0) -> float | None:
    """Wait for the run's staging dir (the conversion proper has begun): its time, or None if the run ended first."""
    partial = dst.parent / f".{dst.name}.partial-{pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if partial.exists():
            return time.monotonic()
        if exited():
            return None
        time.sleep(0.001)
    raise AssertionError("conversion never started")


class _Forker:
    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("kill_server.py"))], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def run(self, args) -> int:
        return self._ask(op="run", args=args)["pid"]

    def wait(self, pid) -> dict:
        return self._ask(op="wait", pid=pid)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_sigkill_at_random_moments(tmp_path):
    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 2, n_layers=12)
    dst = tmp_path / "out"

    # an undisturbed fresh `python -m llamakit convert`: the expected bytes
    proc = subprocess.run([sys.executable, "-m", "llamakit", "convert", *_args(src, dst)], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    expected = _snapshot(dst)
    assert len([n for n in expected if n.endswith(".safetensors")]) > 3

    rng = random.Random(20240611)
    outcomes = []
    forker = _Forker()
    try:
        # undisturbed forked runs: the same bytes, and how long converting takes (kills land within that);
        # the fastest of three, so that a contention spike does not push most kills past the end
        windows = []
        for _ in range(3):
            shutil.rmtree(dst)
            pid = forker.run(_args(src, dst))
            started = _await_staging(pid, dst, lambda: not _alive(pid))
            assert forker.wait(pid) == {"exit": 0}
            windows.append(time.monotonic() - started)
            assert _snapshot(dst) == expected
        window = min(windows)
        for run in range(RUNS):
            if rng.random() < 0.5:  # half the runs replace a complete DST (--force), half write a fresh one
                convert(src, dst, force=True, check=False, max_shard_size=SHARD, show_progress=False)
            else:
                shutil.rmtree(dst, ignore_errors=True)
            pid = forker.run(_args(src, dst))
            if _await_staging(pid, dst, lambda: not _alive(pid)) is not None:
                time.sleep(rng.uniform(0, window * 1.2))
            os.kill(pid, signal.SIGKILL)
            status = forker.wait(pid)
            outcomes.append("finished" if status.get("exit") == 0 else "killed")

            state = _snapshot(dst)
            assert state is None or state == expected, f"run {run}: DST exists but is not the complete conversion"
            # the rerun sweeps what the dead run left and writes the same bytes
            convert(src, dst, force=True, check=False, max_shard_size=SHARD, show_progress=False)
            assert _snapshot(dst) == expected, f"run {run}: the rerun wrote different bytes"
            left = sorted(p.name for p in tmp_path.iterdir())
            assert left == ["meta", "out"], f"run {run}: leftovers {left}"
    finally:
        forker.close()
    print(f"killed {outcomes.count('killed')}/{RUNS} runs mid-conversion (window {window:.2f}s)")
    # enough kills must land inside the conversion, or the test would prove nothing
    assert outcomes.count("killed") >= RUNS // 4, f"windows {windows}, outcomes {outcomes}"
