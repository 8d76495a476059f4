"""report -> report_render, never back: the renderer (and the number formatting it shares with the
terminal summary) imports nothing of ours, so the two modules cannot form an import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import llamakit

PKG = Path(llamakit.__file__).parent


def _llamakit_imports(path: Path) -> set[str]:
    """Every llamakit module `path` imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "llamakit":
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "llamakit")
    return out


def test_report_render_imports_nothing_of_ours():
    assert _llamakit_imports(PKG / "report_render.py") == set()


def test_report_uses_the_renderers_formatting():
    from llamakit import report, report_render

    assert "llamakit.report_render" in _llamakit_imports(PKG / "report.py")
    assert not hasattr(report, "fmt") and report_render.fmt(0.98765) == "0.9877" and report_render.fmt(1200.0) == "1,200"
