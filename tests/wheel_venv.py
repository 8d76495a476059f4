"""Build llamakit's wheel and install it into a fresh virtualenv, offline and in seconds.

The venv is made with the standard `venv` module (no pip inside, no system site
packages); the wheel goes in through pip (`--no-deps --no-index`), which writes
the `llamakit` console script as any install would. Its dependencies are the
distributions this test environment already has, linked file by file into the
venv's site-packages (the same bytes pip put here): only the closure of what the
commands under test import (typer, rich, pydantic, pyyaml, filelock,
huggingface-hub), so the venv also proves that `list/info/verify/lock/fetch` need
neither torch nor transformers nor any file of the source checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# What the catalog, verify, lock and hub-fetch paths import (llamakit's own requirements, minus the heavy ones).
LIGHT_DEPS = ("typer", "rich", "pydantic", "pyyaml", "filelock", "huggingface-hub")


def build_wheel(dest: Path) -> Path:
    """`pip wheel` of a copy of the sources (the checkout itself is never written to)."""
    src = dest / "src"
    shutil.copytree(REPO / "llamakit", src / "llamakit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "manifests", src / "manifests")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    # No build isolation: it would fetch setuptools from an index; this environment's setuptools
    # satisfies [build-system] (the test checks that too).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(dest / "dist"), str(src)], check=True, capture_output=True, text=True, timeout=300)
    (whl,) = (dest / "dist").glob("llamakit-*.whl")
    return whl


def _closure(names) -> list[metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def make_venv(wheel: Path, dest: Path) -> Path:
    """A fresh venv at `dest` with only `wheel` installed (plus its light deps); returns its bin/."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True, timeout=120)
    py = dest / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    here = Path(sysconfig.get_paths()["purelib"])
    for dist in _closure(LIGHT_DEPS):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            if top.endswith(".pth") or top == "__pycache__" or (site / top).exists():
                continue
            src = Path(dist.locate_file(top))
            if src.exists() and src.resolve().is_relative_to(here.resolve()):
                os.symlink(src, site / top)
    return dest / "bin"


def venv_env(extra: dict | None = None) -> dict:
    """The environment for a command in that venv: nothing that points back at the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "LLAMAKIT_MANIFESTS", "VIRTUAL_ENV", "COLUMNS", "LLAMAKIT_DEBUG")}
    env.update(extra or {})
    return env


def run_in(bin_dir: Path, *args: str, env: dict | None = None, cwd: str | Path = "/", timeout: float = 120):
    """`llamakit ARGS` (or `python ARGS` when args[0] == "python") from the venv, run from `cwd`."""
    exe = [str(bin_dir / "python")] if args and args[0] == "python" else [str(bin_dir / "llamakit")]
    rest = args[1:] if args and args[0] == "python" else args
    return subprocess.run([*exe, *rest], capture_output=True, text=True, env=venv_env(env), cwd=cwd, timeout=timeout)
