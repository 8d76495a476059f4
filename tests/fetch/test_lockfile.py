"""The lock's schema and I/O are a leaf (`llamakit.fetch.lockfile`): the sources and `verify` import it,
it imports none of them, and no import cycle runs through fetch or verify (lazy imports included)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: import_graph

from import_graph import REPO, imports  # noqa: E402


def _graph() -> dict[str, set[str]]:
    g = {}
    for p in (REPO / "llamakit").rglob("*.py"):
        rel = p.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        # a module's own parent packages run first anyway: not an edge of a cycle
        g[name] = {m for m in imports(p, name) if m != name and not name.startswith(m + ".")}
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
