"""The shipped GitHub workflow is valid and runs the same steps as .ci/run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "reproduce.yml"


def _make_steps(lines: list[str]) -> list[str]:
    return [" ".join(shlex.split(line)) for line in lines if re.match(r"^\s*make\b", line)]


def test_workflow_parses_and_has_the_job():
    doc = yaml.safe_load(WORKFLOW.read_text())
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "push" in triggers
    job = doc["jobs"]["reproduce"]
    assert job["runs-on"] and job["timeout-minutes"] <= 90
    for step in job["steps"]:
        assert ("uses" in step) != ("run" in step), step
    assert job["env"]["DVC_NO_ANALYTICS"] == "1"


def test_workflow_runs_the_same_steps_as_ci():
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["reproduce"]
    runs = [line for step in job["steps"] if "run" in step for line in step["run"].splitlines()]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _make_steps(runs) == _make_steps(ci) == ["make test", "make repro PROFILE=$PROFILE"]
    # Both default to the ci profile.
    assert "${{ inputs.profile || 'ci' }}" == job["env"]["PROFILE"]
    assert 'PROFILE="${PROFILE:-ci}"' in ci


def test_workflow_publishes_the_report_even_when_the_gate_fails():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["reproduce"]["steps"]
    summary = next(s for s in steps if "GITHUB_STEP_SUMMARY" in s.get("run", ""))
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert summary["if"] == upload["if"] == "always()"
    assert "report.md" in summary["run"] and "report.*" in upload["with"]["path"]
    order = [s.get("run", s.get("uses")) for s in steps]
    assert order.index("make repro PROFILE=$PROFILE") < order.index(summary["run"])


def test_readme_shows_the_workflow_and_gitlab_job():
    readme = (REPO / "README.md").read_text()
    assert ".github/workflows/reproduce.yml" in readme
    gitlab = re.search(r"```yaml\n(# \.gitlab-ci\.yml.*?)```", readme, re.S)
    assert gitlab, "README has a .gitlab-ci.yml example"
    job = yaml.safe_load(gitlab.group(1))
    (name,) = [k for k in job if not k.startswith(".") and isinstance(job[k], dict) and "script" in job[k]]
    assert _make_steps(job[name]["script"]) == ["make test", "make repro PROFILE=$PROFILE"]
    assert any("report.html" in p for p in job[name]["artifacts"]["paths"])
