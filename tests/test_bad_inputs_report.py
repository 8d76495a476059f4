"""`llamakit report` bad inputs, one row each (tests/bad_inputs.py: exit code, one line, nothing at --out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from bad_inputs import Row, run_row

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "manifests" / "results" / "conll2003-smollm2-full.yaml"


def _inputs(tmp: Path, *, tolerance: dict | None = None, f1: float | None = None) -> None:
    """metrics.json with the seed's values (token micro avg f1 set to `f1`), and a copy of the seed's entry
    named `entry` (its tolerance replaced by `tolerance`)."""
    doc = yaml.safe_load(SEED.read_text())
    token, entity = json.loads(json.dumps(doc["metrics"]["token"])), doc["metrics"]["entity"]
    if f1 is not None:
        token["micro avg"]["f1"] = f1
    (tmp / "metrics.json").write_text(json.dumps({"split": "test", "n_sentences": 3453, "n_words": 46435,
                                                  "token": token, "entity": entity}))
    doc["name"] = "entry"
    if tolerance is not None:
        doc["tolerance"] = tolerance
    (tmp / "entry.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def _with(**files: str):
    def setup(tmp: Path) -> None:
        _inputs(tmp)
        for name, text in files.items():
            target = tmp / name.replace("_", ".")
            target.write_text(text)
    return setup


BASE = ["report", "--metrics", "{tmp}/metrics.json", "--result", "{tmp}/entry.yaml"]
ROWS = [
    # the cases issue 18 found
    Row("dvc-lock-is-a-yaml-list", [*BASE, "--out", "{tmp}/out", "--dvc-lock", "{tmp}/list.yaml"], 2,
        "list.yaml: not a dvc.lock (a YAML list)", "out", setup=_with(list_yaml="- a\n- b\n")),
    Row("dvc-lock-is-broken-yaml", [*BASE, "--out", "{tmp}/out", "--dvc-lock", "{tmp}/broken.lock"], 2,
        "broken.lock: dvc.lock is not readable YAML", "out", setup=_with(broken_lock="stages: [unclosed\n")),
    Row("release-lock-is-a-list", [*BASE, "--out", "{tmp}/out", "--release-lock", "{tmp}/rl.json"], 2,
        "rl.json: release lock must be a JSON object", "out", setup=_with(rl_json='["a", "b"]')),
    Row("release-lock-missing", [*BASE, "--out", "{tmp}/out", "--release-lock", "{tmp}/nope.json"], 2,
        "nope.json: release lock not found", "out", setup=_with()),
    Row("infinite-tolerance", [*BASE, "--out", "{tmp}/out", "--check", "--dvc-lock", "{tmp}/none.lock"], 2,
        "tolerances must be finite", "out",
        setup=lambda t: _inputs(t, tolerance={"default": float("inf")}, f1=0.1)),
    Row("infinite-metric-tolerance", [*BASE, "--out", "{tmp}/out", "--check", "--dvc-lock", "{tmp}/none.lock"], 2,
        "tolerances must be finite", "out",
        setup=lambda t: _inputs(t, tolerance={"default": 0.01, "metrics": {"token.micro avg.f1": float("inf")}}, f1=0.1)),
    Row("out-under-a-file", [*BASE, "--out", "{tmp}/afile/out", "--dvc-lock", "{tmp}/none.lock"], 4,
        "afile/out: cannot write", "afile/out", setup=_with(afile="x")),
    Row("out-read-only", [*BASE, "--out", "{tmp}/ro/out", "--dvc-lock", "{tmp}/none.lock"], 4,
        "ro/out: cannot write or read here: permission denied", "ro/out", setup=_with(), readonly="ro"),
    Row("disk-full", [*BASE, "--out", "{tmp}/out", "--dvc-lock", "{tmp}/none.lock"], 4,
        "out: file too large for the destination", "out", setup=_with(), fsize=4_000),
    # the net, wider
    Row("metrics-without-result", ["report", "--metrics", "{tmp}/metrics.json", "--out", "{tmp}/out"], 2,
        "--metrics and --result go together", "out", setup=_with()),
    Row("metrics-not-json", [*BASE, "--out", "{tmp}/out"], 2, "metrics.json is not readable JSON", "out",
        setup=lambda t: _inputs(t) or (t / "metrics.json").write_text("{")),
]


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input(row, tmp_path):
    run_row(row, tmp_path)
