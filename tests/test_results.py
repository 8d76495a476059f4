"""The reported-score registry: schema validation, lookup, tolerances, recording a reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llamakit import results
from llamakit.errors import ManifestError
from tests.seed_table import SEED_TABLE  # the registry entry must say the same

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "manifests" / "results"



def _parse_table(text: str) -> dict[str, dict[str, float]]:
    rows = {}
    for line in text.strip().splitlines()[1:]:
        *name, p, r, f, s = line.split()
        rows[" ".join(name)] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": float(s)}
    return rows


def test_every_registry_entry_validates():
    entries = results.list_results(REGISTRY)
    assert {e.name for e in entries} >= {"conll2003-smollm2-full"}
    for e in entries:
        assert e.flat_metrics(), e.name


def test_seed_entry_is_the_seed_table_verbatim():
    entry = results.load_result("conll2003-smollm2-full", REGISTRY)
    assert entry.kind == "reported" and entry.dataset.split == "test" and entry.dataset.n_words == 46435
    assert entry.metrics["token"] == _parse_table(SEED_TABLE)
    assert len(entry.flat_metrics()) == 12 * 4 + 1  # + issue 7's entity-level floor
    assert entry.metrics["entity"] == {"micro avg": {"f1": 0.9}}
    assert list(entry.metrics["token"])[:3] == ["B-LOC", "I-LOC", "B-MISC"]  # the seed's row order


def test_tolerance_most_specific_wins():
    entry = results.load_result("conll2003-smollm2-full", REGISTRY)
    assert entry.tolerance_for("token.micro avg.precision") == 0.005  # per metric
    assert entry.tolerance_for("token.B-LOC.support") == 0.0  # per stat
    assert entry.tolerance_for("token.B-LOC.f1") == entry.tolerance.default
    assert entry.at_least("token.B-LOC.f1") and entry.at_least("entity.micro avg.f1")
    assert not entry.at_least("token.B-LOC.support")  # supports must match both ways


def test_definitions_cover_metrics():
    entry = results.load_result("conll2003-smollm2-full", REGISTRY)
    assert "first sub-token" in entry.definition_for("token.B-LOC.f1")
    assert entry.definition_for("token.micro avg.support") == "Total words in the split."


def test_lookup_and_flatten_paths():
    tree = {"token": {"micro avg": {"f1": 0.5}}, "n_words": 3}
    assert results.lookup(tree, "token.micro avg.f1") == 0.5
    assert results.lookup(tree, "token.macro avg.f1") is None
    assert results.flatten({"a": {"b": 1, "c": {"d": 2.5}}}) == {"a.b": 1.0, "a.c.d": 2.5}


def _good_doc(name: str = "toy") -> dict:
    return {
        "schema_version": 1,
        "name": name,
        "kind": "reported",
        "title": "toy",
        "citation": {"source": "a test"},
        "model": "m",
        "dataset": {"name": "conll2003", "split": "test"},
        "definitions": {"token": "word-level"},
        "metrics": {"token": {"O": {"f1": 0.9, "support": 10}}},
        "tolerance": {"default": 0.01, "stats": {"support": 0}},
    }


def _write(tmp_path: Path, doc, name: str = "toy") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def test_good_minimal_entry(tmp_path):
    entry = results.load_result_file(_write(tmp_path, _good_doc()))
    assert entry.flat_metrics() == {"token.O.f1": 0.9, "token.O.support": 10.0}


def _mutate(change):
    doc = _good_doc()
    change(doc)
    return doc


MALFORMED = {
    "missing citation": (_mutate(lambda d: d.pop("citation")), "citation"),
    "unknown key": (_mutate(lambda d: d.update(cittation={"source": "x"})), "unknown key"),
    "bad kind": (_mutate(lambda d: d.update(kind="paper")), "kind"),
    "negative tolerance": (_mutate(lambda d: d["tolerance"].update(default=-0.1)), "tolerance.default"),
    "negative per-stat tolerance": (_mutate(lambda d: d["tolerance"].update(stats={"support": -1})), ">= 0"),
    "string value": (_mutate(lambda d: d["metrics"]["token"]["O"].update(f1="high")), "token.O.f1"),
    "bool value": (_mutate(lambda d: d["metrics"]["token"]["O"].update(f1=True)), "token.O.f1"),
    "empty metrics": (_mutate(lambda d: d.update(metrics={})), "no values"),
    "undefined family": (_mutate(lambda d: d["metrics"].update(entity={"LOC": {"f1": 0.5}})), "entity"),
    "tolerance for unknown metric": (_mutate(lambda d: d["tolerance"].update(metrics={"token.X.f1": 0.1})), "token.X.f1"),
    "tolerance for unknown stat": (_mutate(lambda d: d["tolerance"].update(stats={"recall": 0.1})), "recall"),
    "at_least of unknown name": (_mutate(lambda d: d["tolerance"].update(at_least=["recal"])), "recal"),
    "reference without profile": (_mutate(lambda d: d.update(kind="reference")), "profile"),
    "dotted key": (_mutate(lambda d: d["metrics"]["token"].update({"a.b": {"f1": 0.1}})), "a.b"),
    "wrong schema version": (_mutate(lambda d: d.update(schema_version=2)), "schema_version"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_entry_names_the_file(tmp_path, case):
    doc, expect = MALFORMED[case]
    path = _write(tmp_path, doc)
    with pytest.raises(ManifestError) as err:
        results.load_result_file(path)
    assert err.value.path == str(path)
    assert expect in err.value.message
    assert err.value.exit_code == 2


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = _write(tmp_path, "schema_version: 1\nname: toy\nmetrics: {token: [\n")
    with pytest.raises(ManifestError) as err:
        results.load_result_file(path)
    assert err.value.path.startswith(str(path) + ":")


def test_not_a_mapping(tmp_path):
    with pytest.raises(ManifestError, match="mapping"):
        results.load_result_file(_write(tmp_path, "- just\n- a list\n"))


def test_name_must_match_file(tmp_path):
    with pytest.raises(ManifestError, match="differs from its file name"):
        results.load_result_file(_write(tmp_path, _good_doc("other"), name="toy"))


def test_unknown_name_suggests(tmp_path):
    _write(tmp_path, _good_doc("conll2003-smollm2-ci"), name="conll2003-smollm2-ci")
    with pytest.raises(ManifestError) as err:
        results.load_result("conll2003-smollm2-cj", tmp_path)
    assert "conll2003-smollm2-ci" in err.value.fix


def test_load_by_path(tmp_path):
    path = _write(tmp_path, _good_doc())
    assert results.load_result(str(path)).name == "toy"
    with pytest.raises(ManifestError, match="not found"):
        results.load_result(str(tmp_path / "missing.yaml"))


def _real_metrics() -> dict:
    """A metrics.json tree from the evaluate stage's own metric code on hand-made sentences."""
    from llamakit.train import metrics

    labels = ["B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER", "O"]
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-MISC"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-LOC"]]
    m = metrics.compute(gold, pred, labels, ["LOC", "MISC", "ORG", "PER"])
    return {"split": "test", "n_sentences": 2, "n_words": 9, **{k: m[k] for k in ("token", "entity", "headline")}}


def test_record_reference_roundtrip(tmp_path):
    m = _real_metrics()
    mpath = tmp_path / "metrics.json"
    mpath.write_text(json.dumps(m))
    out = tmp_path / "toy-ci.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "llamakit.results", "record", str(mpath), "--name", "toy-ci", "--profile", "ci",
         "--model", "tiny", "--tolerance", "0.0005", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    entry = results.load_result_file(out)
    assert entry.kind == "reference" and entry.profile == "ci"
    assert entry.tolerance_for("token.O.f1") == 0.0005 and entry.tolerance_for("entity.PER.support") == 0
    for name, value in entry.flat_metrics().items():
        assert results.lookup(m, name) == value
    assert {"token", "entity", "headline"} <= set(entry.metrics)
    assert entry.recorded["metrics_file"] == str(mpath)


def _metrics_for(pred: list[list[str]]) -> dict:
    from llamakit.train import metrics

    labels = ["B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER", "O"]
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-MISC"]]
    m = metrics.compute(gold, pred, labels, ["LOC", "MISC", "ORG", "PER"])
    return {"split": "test", "n_sentences": 2, "n_words": 9, **{k: m[k] for k in ("token", "entity", "headline")}}


def test_spread_tolerances_follow_the_runs():
    import statistics

    ref = {"a": {"f1": 0.80, "support": 10.0}, "b": {"f1": 0.5, "support": 4.0}}
    runs = [{"a": {"f1": 0.82, "support": 10.0}, "b": {"f1": 0.5, "support": 4.0}},
            {"a": {"f1": 0.77, "support": 10.0}, "b": {"f1": 0.5, "support": 4.0}}]
    tol = results.spread_tolerances(ref, runs, k=3, floor=0.001)
    sd = statistics.stdev([0.80, 0.82, 0.77])
    assert tol["a.f1"] == pytest.approx(3 * sd, abs=1e-4) and tol["a.f1"] >= 3 * sd  # rounded up, never down
    assert tol["b.f1"] == 0.001  # no spread: the floor
    assert "a.support" not in tol  # counts stay exact
    # at least the widest deviation seen, whatever k says
    assert results.spread_tolerances(ref, runs, k=0.1, floor=0.0)["a.f1"] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="lacks metric"):
        results.spread_tolerances(ref, [{"a": {"f1": 0.8}}], k=3, floor=0.0)


def test_record_with_spread_measures_each_tolerance_and_says_how(tmp_path):
    ref = _metrics_for([["B-PER", "O", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-LOC"]])
    other = _metrics_for([["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "O", "O", "B-MISC"]])
    paths = []
    for i, m in enumerate((ref, other)):
        paths.append(tmp_path / f"m{i}.json")
        paths[-1].write_text(json.dumps(m))
    out = tmp_path / "toy-ci.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "llamakit.results", "record", str(paths[0]), "--name", "toy-ci", "--profile", "ci",
         "--model", "tiny", "--tolerance", "0.002", "--spread", f"seed 1={paths[1]}", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    entry = results.load_result_file(out)
    derived = entry.tolerance.derived
    assert derived is not None and derived.k == 3.0 and derived.floor == 0.002
    assert [r.label for r in derived.runs] == ["seed 1"] and derived.runs[0].headline == other["headline"]
    # the tolerance of a metric the two runs disagree on covers the disagreement; one they agree on gets the floor
    gap = abs(ref["token"]["I-PER"]["f1"] - other["token"]["I-PER"]["f1"])
    assert gap > 0 and entry.tolerance_for("token.I-PER.f1") >= gap
    assert ref["token"]["B-PER"]["f1"] == other["token"]["B-PER"]["f1"]
    assert entry.tolerance_for("token.B-PER.f1") == 0.002
    assert entry.tolerance_for("token.B-PER.support") == 0
    assert "run-to-run spread" in out.read_text().splitlines()[1]
    # the other run now passes the gate; a run outside the measured spread does not
    from llamakit import report

    assert all(r.passed for r in report.compare(other, entry))
    worse = _metrics_for([["O", "O", "O", "O"], ["O", "O", "O", "O", "O"]])
    assert not all(r.passed for r in report.compare(worse, entry))


def test_checked_adds_the_gated_runs_cpu_and_verdict(tmp_path):
    from llamakit import atomic, report

    m = _metrics_for([["B-PER", "O", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-LOC"]])
    mpath = tmp_path / "eval" / "metrics.json"
    mpath.parent.mkdir()
    mpath.write_text(json.dumps(m))
    entry_path = tmp_path / "toy-ci.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "llamakit.results", "record", str(mpath), "--name", "toy-ci", "--profile", "ci",
         "--model", "tiny", "--out", str(entry_path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert results.load_result_file(entry_path).recorded["metrics_sha256"] == atomic.sha256_file(mpath)

    def checked(out):
        proc = subprocess.run([sys.executable, "-m", "llamakit.results", "checked", str(out)],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        return results.load_result_file(entry_path).recorded["checked_on"][-1]

    report.build_report(mpath, entry_path, tmp_path / "same", dvc_lock=None)
    row = checked(tmp_path / "same")
    assert row["verdict"] == "byte-identical metrics" and row["cpu"] == report.provenance.machine()["cpu"]
    assert open(entry_path).readline().startswith("# Recorded from a real pipeline run")  # header kept

    moved = json.loads(mpath.read_text())
    moved["token"]["O"]["f1"] += 0.0005  # inside the default 0.001
    other = tmp_path / "other" / "metrics.json"
    other.parent.mkdir()
    other.write_text(json.dumps(moved))
    report.build_report(other, entry_path, tmp_path / "near", dvc_lock=None)
    assert checked(tmp_path / "near")["verdict"] == "within tolerance"
    moved["token"]["O"]["f1"] += 0.01
    other.write_text(json.dumps(moved))
    report.build_report(other, entry_path, tmp_path / "far", dvc_lock=None)
    assert checked(tmp_path / "far")["verdict"].startswith("NOT REPRODUCED (1 metrics")
    assert len(results.load_result_file(entry_path).recorded["checked_on"]) == 3

    # re-recording the same run keeps where it was checked; recording another run starts afresh
    def record(metrics_file):
        proc = subprocess.run(
            [sys.executable, "-m", "llamakit.results", "record", str(metrics_file), "--name", "toy-ci", "--profile", "ci",
             "--model", "tiny", "--out", str(entry_path)], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        return results.load_result_file(entry_path).recorded["checked_on"]

    assert len(record(mpath)) == 3
    assert record(other) == []


def test_ci_reference_tolerances_are_measured_and_cover_their_runs():
    """The committed `ci` gate is not hand-set: its tolerances come from recorded spread runs, every
    one of which lies within them, and the reference names where it was recorded."""
    entry = results.load_result("conll2003-smollm2-ci", REGISTRY)
    derived = entry.tolerance.derived
    assert derived is not None and len(derived.runs) >= 3 and derived.method == results.SPREAD_METHOD
    assert any("native" in r.label for r in derived.runs)  # another ISA: the stand-in for another CPU
    for run in derived.runs:
        for stat, value in run.headline.items():
            name = f"headline.{stat}"
            assert abs(value - entry.flat_metrics()[name]) <= entry.tolerance_for(name), (run.label, name)
    assert all(v >= derived.floor for v in entry.tolerance.metrics.values())
    assert entry.recorded["environment"]["cpu"]["pins"] == {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                                                            "ONEDNN_MAX_CPU_ISA": "AVX2"}
