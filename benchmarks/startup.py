"""Startup cost of the `llamakit` CLI against the import it must avoid.

Median wall time of `llamakit --help` (and of `llamakit list --json`, which loads
and validates the whole catalog) over N runs, next to `python -c "import
transformers"` measured in the same run, interleaved so machine load hits both
alike. The goal is a median <= 0.5 s for `--help`.

    .venv/bin/python benchmarks/startup.py [--runs 15] [--peer-runs 5] [--check]

--check exits 1 when the `--help` median misses the goal.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_S = 0.5
BIN = Path(sys.executable).parent


def wall(cmd: list[str]) -> float:
    env = {**os.environ, "COLUMNS": "200"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="runs of each llamakit command")
    ap.add_argument("--peer-runs", type=int, default=5, help="runs of `import transformers` (slow)")
    ap.add_argument("--check", action="store_true", help=f"exit 1 if the --help median exceeds {GOAL_S} s")
    args = ap.parse_args()

    llamakit = str(BIN / "llamakit")
    cases = {
        "llamakit --help": [llamakit, "--help"],
        "llamakit list --json": [llamakit, "list", "--json"],
        'python -c "import transformers"': [sys.executable, "-c", "import transformers"],
    }
    runs = {name: (args.peer_runs if "transformers" in name else args.runs) for name in cases}
    for cmd in cases.values():  # warm the page cache once; not timed
        wall(cmd)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(max(runs.values())):
        for name, cmd in cases.items():
            if i < runs[name]:
                times[name].append(wall(cmd))

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; median of N runs, seconds")
    print(f"{'command':34} {'N':>3} {'median':>8} {'min':>8} {'max':>8}")
    med = {}
    for name, ts in times.items():
        med[name] = statistics.median(ts)
        print(f"{name:34} {len(ts):>3} {med[name]:8.3f} {min(ts):8.3f} {max(ts):8.3f}")
    peer = med['python -c "import transformers"']
    help_s = med["llamakit --help"]
    print(f"ratio llamakit --help / import transformers = {help_s / peer:.3f}")
    print(f"ratio llamakit list --json / import transformers = {med['llamakit list --json'] / peer:.3f}")
    ok = help_s <= GOAL_S
    print(f"goal: --help median <= {GOAL_S} s: {'met' if ok else 'MISSED'} ({help_s:.3f} s)")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
