"""llamakit's import graph read from the source (ast, lazy imports inside functions included): one reader
for the tests that check import direction (tests/fetch/test_lockfile.py) and DVC code deps (tests/pipeline)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path | None:
    """The file of llamakit module `name` (a module or a package's __init__), or None."""
    base = REPO / Path(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def imports(path: Path, module: str) -> set[str]:
    """llamakit modules the file of `module` imports anywhere; `from pkg import submodule` counts the submodule."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] == "llamakit" and module_file(m)}
