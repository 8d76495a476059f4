"""The macOS workflow: a macOS runner, the install of the lock less torch, and the selection that
leaves out exactly the tests needing CoNLL-2003 or a Linux-only interface."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from test_container import _make_setup

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "macos.yml"


def _job() -> dict:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert "push" in doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    return doc["jobs"]["tests-macos"]


def _lines(job: dict) -> list[str]:
    return [" ".join(shlex.split(line)) for step in job["steps"] if "run" in step
            for line in step["run"].splitlines() if line.strip()]


def test_runs_on_macos_with_the_locks_python():
    job = _job()
    assert job["runs-on"].startswith("macos-") and job["timeout-minutes"] <= 90
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["python-version"] == "3.11"


def test_installs_the_lock_less_torch_as_make_setup_does():
    lines = _lines(_job())
    lock_step = ".venv/bin/pip install -q --require-hashes --no-deps -r requirements/lock.txt"
    for cmd in _make_setup()[1:-1]:  # the venv is made by the runner's python; no stamp (make is not used)
        if cmd != lock_step:
            assert cmd in lines, cmd
    assert '.venv/bin/pip install -q --require-hashes --no-deps -r $RUNNER_TEMP/lock-without-torch.txt' in lines
    torch = next(line for line in lines if "torch==" in line)
    assert "-c $RUNNER_TEMP/pins.txt" in torch and "index-url" not in torch  # PyPI's macOS wheel


def test_selection_leaves_out_conll_and_linux_only_tests(pytestconfig):
    pytest_line = next(line for line in _lines(_job()) if "pytest" in line)
    expr = pytest_line.split(" -m ")[-1]  # "python -m pytest -q -m EXPR"
    assert expr == "not slow and not gpu and not linux_only and not conll"
    registered = {m.split(":", 1)[0] for m in pytestconfig.getini("markers")}
    assert {"slow", "gpu", "linux_only", "conll"} <= registered


def test_conll_marker_reaches_the_tests_that_read_the_copy():
    """tests/conftest.py marks by fixture: a test taking conll_dir is selected by `-m conll`, its
    neighbours that do not are left for `-m "not conll"`."""
    import subprocess
    import sys

    def collected(expr: str) -> set[str]:
        p = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", expr, "tests/data/test_conll.py"],
                           cwd=REPO, capture_output=True, text=True)
        return {line.split("::")[1].split("[")[0] for line in p.stdout.splitlines() if "::" in line}

    marked, unmarked = collected("conll"), collected("not conll")
    assert "test_real_splits_match_the_verified_counts" in marked
    assert unmarked and not marked & unmarked
