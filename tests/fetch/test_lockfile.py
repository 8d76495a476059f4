"""The lock's schema and I/O are a leaf (`llamakit.fetch.lockfile`): the sources and `verify` import it,
it imports none of them, and no import cycle runs through fetch or verify (lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    # a module's own parent packages run first anyway: not an edge of a cycle
    return {m for m in found if m.split(".")[0] == "llamakit" and _module_file(m) and not module.startswith(m + ".") and m != module}


def _graph() -> dict[str, set[str]]:
    g = {}
    for p in (REPO / "llamakit").rglob("*.py"):
        rel = p.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        g[name] = _imports(p, name)
    return g


def _reaches(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(g[start])
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += g.get(m, ())
    return seen


def test_lockfile_is_a_leaf():
    g = _graph()
    assert _reaches(g, "llamakit.fetch.lockfile") <= {"llamakit.errors", "llamakit.atomic", "llamakit.fetch._files",
                                                       "llamakit.catalog", "llamakit.catalog_schema", "llamakit.catalog_view"}
    for user in ("llamakit.fetch.hf", "llamakit.fetch.pypi", "llamakit.fetch.mirror", "llamakit.fetch.meta_url", "llamakit.verify"):
        assert "llamakit.fetch.lockfile" in g[user] and "llamakit.fetch.lock" not in g[user], user


def test_no_import_cycle_through_fetch_or_verify():
    g = _graph()
    for m in g:
        if m.startswith("llamakit.fetch") or m == "llamakit.verify":
            assert m not in _reaches(g, m), f"{m} imports itself back"
    # the check can fail: the old shape (the lock command imported by a source) is a cycle
    g["llamakit.fetch.hf"] = g["llamakit.fetch.hf"] | {"llamakit.fetch.lock"}
    assert "llamakit.fetch.hf" in _reaches(g, "llamakit.fetch.hf")
