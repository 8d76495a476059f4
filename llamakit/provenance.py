"""Where a result came from: git state, DVC lock hashes, release lock, packages, machine, timings.

Also the per-stage timer the pipeline wraps every stage command in:

    python -m llamakit.provenance time STAGE -- llamakit fetch ...

runs the command and, when it succeeds, writes `work/timings/STAGE.json` (wall and CPU seconds,
peak memory). Those files are deliberately *not* DVC outputs: a timing differs on every run, and
hashing it into a stage's outputs would make identical weights look changed. They are provenance,
read by `llamakit report` like `dvc.lock`, never inputs.

Nothing here imports torch: collecting provenance must not cost a second of startup.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import yaml

from llamakit import atomic, portable

TIMINGS_DIR = Path("work/timings")

# Files the pipeline itself rewrites while it runs; a change to them does not make the source
# tree "dirty" for provenance purposes (the report is written before anyone could commit them).
PIPELINE_WRITES = ("dvc.lock", "reports/")

PACKAGES = ("llamakit", "torch", "transformers", "tokenizers", "huggingface-hub", "safetensors", "gguf",
            "peft", "accelerate", "seqeval", "scikit-learn", "numpy", "dvc", "dvclive", "pydantic")


def _git(args: list[str], cwd: Path) -> Optional[str]:
    if shutil.which("git") is None:
        return None
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(root: str | Path = ".") -> dict[str, Any]:
    """Commit, and whether tracked sources differ from it (pipeline-written files excepted)."""
    root = Path(root)
    commit = _git(["rev-parse", "HEAD"], root)
    if commit is None:
        return {"commit": None, "dirty": None, "changed": [], "note": "not a git checkout (or no commits)"}
    status = _git(["status", "--porcelain=v1", "--untracked-files=no"], root) or ""
    changed = sorted({line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines() if len(line) > 3})
    source_changes = [p for p in changed if not any(p == w or p.startswith(w) for w in PIPELINE_WRITES)]
    return {
        "commit": commit.strip(),
        "dirty": bool(source_changes),
        "changed": source_changes[:50],
    }


def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpus() -> list[str]:
    """GPU names from nvidia-smi when present; no torch import (and no CUDA context) needed."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []


def machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, Optional[str]]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


LOCK_FILE = Path("requirements/lock.txt")


def installed_versions() -> dict[str, str]:
    """Every distribution installed in this environment, name -> version (names normalised)."""
    out = {}
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-").replace(".", "-")
        if name:
            out[name] = dist.version
    return dict(sorted(out.items()))


def environment(lock: str | Path = LOCK_FILE) -> dict[str, Any]:
    """What a rerun elsewhere must match to expect the same numbers: the dependency lock (by
    sha256), every installed version, and the CPU as far as numerics go (llamakit/numerics.py)."""
    from llamakit import numerics

    lock = Path(lock)
    return {
        "lock": {"path": str(lock), "sha256": atomic.sha256_file(lock) if lock.is_file() else None},
        "installed": installed_versions(),
        "cpu": numerics.describe(),
    }


def environment_differences(here: dict, there: dict) -> list[str]:
    """Human lines naming how two `environment()` records differ (CPU, lock, package versions)."""
    lines = []
    cpu_a, cpu_b = here.get("cpu") or {}, there.get("cpu") or {}
    for key, label in (("model", "CPU"), ("isa", "CPU ISA"), ("pins", "ISA pins")):
        if cpu_a.get(key) != cpu_b.get(key):
            lines.append(f"{label}: {_show(cpu_a.get(key))} here, {_show(cpu_b.get(key))} in the reference")
    lock_a, lock_b = (here.get("lock") or {}).get("sha256"), (there.get("lock") or {}).get("sha256")
    if lock_a != lock_b:
        lines.append(f"dependency lock sha256: {_show(lock_a, 12)} here, {_show(lock_b, 12)} in the reference")
    pk_a, pk_b = here.get("installed") or {}, there.get("installed") or {}
    if pk_a and pk_b:
        changed = [f"{n} {_show(pk_a.get(n))} (reference {_show(pk_b.get(n))})" for n in sorted(set(pk_a) | set(pk_b))
                   if pk_a.get(n) != pk_b.get(n)]
        if changed:
            more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            lines.append("packages: " + ", ".join(changed[:8]) + more)
    return lines


def _show(value: Any, width: int | None = None) -> str:
    if value is None or value == {} or value == []:
        return "none"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    text = str(value)
    return text[:width] if width else text


def dvc_lock_outputs(path: str | Path = "dvc.lock") -> dict[str, list[dict]]:
    """Stage -> its outputs as dvc.lock records them (path, md5, size, nfiles)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}
    stages = doc.get("stages") or {}
    out: dict[str, list[dict]] = {}
    for stage, body in stages.items():
        outs = []
        for o in (body or {}).get("outs") or []:
            rec = {"path": o.get("path"), "md5": o.get("md5") or o.get("etag") or o.get("checksum")}
            for k in ("size", "nfiles"):
                if k in o:
                    rec[k] = o[k]
            outs.append(rec)
        out[stage] = outs
    return out


def release_lock(path: str | Path) -> dict[str, Any]:
    """The pinned release: its identity and each file's sha256 and size."""
    path = Path(path)
    if not path.is_file():
        return {"path": str(path), "missing": True}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return {"path": str(path), "error": str(exc)}
    files = doc.get("files") or []
    if isinstance(files, dict):
        files = [{"path": k, **(v if isinstance(v, dict) else {"sha256": v})} for k, v in files.items()]
    ident = {k: doc[k] for k in ("name", "format", "revision", "source") if k in doc}
    return {
        "path": str(path),
        **ident,
        "files": [{"path": f.get("path") or f.get("name"), "sha256": f.get("sha256"), "size": f.get("size")}
                  for f in files if isinstance(f, dict)],
    }


def read_timings(directory: str | Path = TIMINGS_DIR) -> dict[str, dict]:
    directory = Path(directory)
    out: dict[str, dict] = {}
    if not directory.is_dir():
        return out
    for p in sorted(directory.glob("*.json")):
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict):
            out[rec.get("stage", p.stem)] = rec
    # pipeline order: when each stage started (ISO timestamps sort as strings)
    return dict(sorted(out.items(), key=lambda kv: (str(kv[1].get("started", "")), kv[0])))


def _utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def time_command(stage: str, cmd: list[str], directory: str | Path = TIMINGS_DIR, *, stdout: str | Path | None = None) -> int:
    """Run `cmd`; on success record its wall/CPU time and peak RSS as DIRECTORY/STAGE.json.

    With `stdout`, the command's standard output is captured and published to that file only when
    the command succeeds (a stage output is never half-written)."""
    import resource

    if not cmd:
        sys.stderr.write("error: nothing to run (usage: python -m llamakit.provenance time STAGE -- CMD ...)\n")
        return 2
    start, wall0 = time.time(), time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        if stdout is None:
            code, captured = subprocess.call(cmd), None
        else:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE)
            code, captured = proc.returncode, proc.stdout
    except FileNotFoundError:
        sys.stderr.write(f"error: command not found: {cmd[0]}\n")
        return 127
    except KeyboardInterrupt:
        return 130
    wall = time.perf_counter() - wall0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code == 0 and captured is not None:
        atomic.write_bytes(stdout, captured)
    if code == 0:
        rec = {
            "stage": stage,
            "cmd": cmd,
            "started": _utc(start),
            "finished": _utc(time.time()),
            "wall_s": round(wall, 3),
            "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3),
            # ru_maxrss is the largest child so far (KiB on Linux, bytes on macOS: portable knows which).
            "peak_rss_mib": portable.peak_rss_mib(after),
        }
        atomic.write_json(Path(directory) / f"{stage}.json", rec)
    return code


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "time":
        sys.stderr.write("usage: python -m llamakit.provenance time STAGE [--dir DIR] [--stdout FILE] -- CMD ...\n")
        return 2
    stage, rest = argv[1], argv[2:]
    directory: str | Path = os.environ.get("LLAMAKIT_TIMINGS_DIR", TIMINGS_DIR)
    stdout = None
    while rest[:1] in (["--dir"], ["--stdout"]) and len(rest) >= 2:
        if rest[0] == "--dir":
            directory = rest[1]
        else:
            stdout = rest[1]
        rest = rest[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return time_command(stage, rest, directory, stdout=stdout)


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
