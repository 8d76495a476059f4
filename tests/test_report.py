"""`llamakit report`: comparison, gate exit codes, the three report files, provenance, timings."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llamakit import provenance, report, results
from llamakit.errors import InputFileError, ReproductionFailed, UsageError

REPO = Path(__file__).resolve().parents[1]
SEED = "conll2003-smollm2-full"
LABELS = ["B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER", "O"]


def _seed_metrics(**token_changes) -> dict:
    """A metrics.json holding the seed's own values, with `token_changes` ({"I-MISC.f1": 0.7})."""
    entry = results.load_result(SEED)
    token = copy.deepcopy(entry.metrics["token"])
    for key, value in token_changes.items():
        row, stat = key.rsplit(".", 1)
        token[row.replace("_", " ")][stat] = value
    return {"split": "test", "n_sentences": 3453, "n_words": 46435, "token": token,
            "entity": copy.deepcopy(entry.metrics["entity"])}


def _write_eval(tmp_path: Path, metrics: dict, confusion: bool = True) -> Path:
    d = tmp_path / "eval"
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(json.dumps(metrics))
    if confusion:
        matrix = [[(500 if i == j else i + j) for j in range(len(LABELS))] for i in range(len(LABELS))]
        (d / "confusion.json").write_text(json.dumps({"labels": LABELS, "matrix": matrix}))
    return d / "metrics.json"


def _dvclive_run(tmp_path: Path) -> Path:
    """A run dir as finetune leaves it: a real dvclive loss curve and a train_summary.json."""
    from dvclive import Live

    run = tmp_path / "run"
    with Live(dir=str(run / "dvclive"), save_dvc_exp=False, dvcyaml=False, report=None, monitor_system=False) as live:
        for step in range(1, 6):
            live.step = step
            live.log_metric("train/loss", 2.0 / step)
    (run / "train_summary.json").write_text(json.dumps({
        "recipe": {"seed": 7, "threads": 2, "lr": 1e-4}, "seeds": {"python": 7, "numpy": 7, "torch": 7},
        "threads": 2, "device": "cpu", "steps": 5, "wall_s": 1.5, "tokens_per_s": 100.0, "final_loss": 0.4}))
    return run


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamakit", "report", *args], capture_output=True, text=True, cwd=cwd,
                          env={"COLUMNS": "120", "PATH": "/usr/bin:/bin", "LLAMAKIT_MANIFESTS": str(REPO / "manifests")})


def test_exact_values_pass(tmp_path):
    rep = report.build_report(_write_eval(tmp_path, _seed_metrics()), SEED, tmp_path / "out", dvc_lock=None)
    assert rep.passed and len(rep.rows) == 49
    assert all(r.delta == 0 for r in rep.rows)
    rep.raise_for_failures()  # no exception


def test_outside_tolerance_fails_naming_metrics(tmp_path):
    # I-MISC f1 0.809 -> 0.780 (Δ -0.029, more than 0.02 short); micro precision 0.973 -> 0.9685 (Δ -0.0045,
    # within 0.005: passes); micro f1 0.973 -> 0.9725 (issue 7's floor is 0.973 exactly: fails);
    # B-LOC support changed by one word: supports must match exactly.
    m = _seed_metrics(**{"I-MISC.f1": 0.780, "micro_avg.precision": 0.9685, "micro_avg.f1": 0.9725, "B-LOC.support": 1667})
    rep = report.build_report(_write_eval(tmp_path, m), SEED, tmp_path / "out", dvc_lock=None)
    assert {r.name for r in rep.failures} == {"token.I-MISC.f1", "token.micro avg.f1", "token.B-LOC.support"}
    with pytest.raises(ReproductionFailed) as err:
        rep.raise_for_failures()
    assert "token.I-MISC.f1" in err.value.message and err.value.exit_code == 1
    row = next(r for r in rep.rows if r.name == "token.micro avg.precision")
    assert row.passed and row.delta == pytest.approx(-0.0045)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| `token.B-LOC.support` | 1,668 | 1,667 | -1 | ±0 | **FAIL** |" in md
    assert "| `token.I-MISC.f1` | 0.8090 | 0.7800 | -0.0290 | ≥ −0.02 | **FAIL** |" in md


def test_beating_the_seed_passes_but_support_is_two_sided(tmp_path):
    m = _seed_metrics(**{"B-LOC.f1": 0.916 + 0.05, "I-MISC.precision": 0.95, "micro_avg.f1": 0.99, "O.support": 38324})
    m["entity"]["micro avg"]["f1"] = 0.93
    rep = report.build_report(_write_eval(tmp_path, m), SEED, tmp_path / "out", dvc_lock=None)
    assert {r.name for r in rep.failures} == {"token.O.support"}
    m["entity"]["micro avg"]["f1"] = 0.899
    rep = report.build_report(_write_eval(tmp_path, m), SEED, tmp_path / "out2", dvc_lock=None)
    assert {r.name for r in rep.failures} == {"token.O.support", "entity.micro avg.f1"}


def test_tolerance_boundary_is_inclusive(tmp_path):
    m = _seed_metrics(**{"B-LOC.f1": 0.916 - 0.02, "micro_avg.recall": 0.973 - 0.005})
    rep = report.build_report(_write_eval(tmp_path, m), SEED, tmp_path / "out", dvc_lock=None)
    assert rep.passed


def test_missing_metric_is_a_failure(tmp_path):
    m = _seed_metrics()
    del m["token"]["I-PER"]
    rep = report.build_report(_write_eval(tmp_path, m), SEED, tmp_path / "out", dvc_lock=None)
    assert {r.name for r in rep.failures} == {f"token.I-PER.{s}" for s in ("precision", "recall", "f1", "support")}
    assert all(r.reproduced is None for r in rep.failures)
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["n_failed"] == 4 and not doc["passed"]


def test_bad_inputs(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        report.build_report(tmp_path / "nope.json", SEED, tmp_path / "out", dvc_lock=None)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputFileError, match="not readable JSON"):
        report.build_report(bad, SEED, tmp_path / "out", dvc_lock=None)
    m = _seed_metrics()
    m["split"] = "valid"
    with pytest.raises(UsageError, match="split 'valid'"):
        report.build_report(_write_eval(tmp_path, m), SEED, tmp_path / "out", dvc_lock=None)


def test_files_written_and_self_contained(tmp_path):
    run = _dvclive_run(tmp_path)
    m = _seed_metrics(**{"I-MISC.f1": 0.5})
    out = tmp_path / "out"
    report.build_report(_write_eval(tmp_path, m), SEED, out, run_dir=run, dvc_lock=None)
    assert sorted(p.name for p in out.iterdir()) == ["loss.tsv", "per_tag_f1.csv", "report.html", "report.json", "report.md"]
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 3  # per-tag F1, loss curve, confusion matrix
    for external in ("http://", "https://", "<script", "<link", " src=", "@import", "url("):
        assert external not in page, external
    assert "NOT REPRODUCED" in page and "token.I-MISC.f1" in page
    md = (out / "report.md").read_text()
    assert "| `token.I-MISC.f1` | 0.8090 | 0.5000 | -0.3090 | ≥ −0.02 | **FAIL** |" in md
    assert (out / "loss.tsv").read_text().splitlines()[:2] == ["step\tloss", "1\t2.0"]
    csv_lines = (out / "per_tag_f1.csv").read_text().splitlines()
    assert csv_lines[0] == "tag,reported,reproduced" and csv_lines[4] == "I-MISC,0.809,0.5" and len(csv_lines) == 13
    doc = json.loads((out / "report.json").read_text())
    assert doc["provenance"]["seeds"] == {"python": 7, "numpy": 7, "torch": 7}
    assert doc["provenance"]["threads"] == 2
    assert doc["provenance"]["packages"]["dvc"] and doc["provenance"]["machine"]["logical_cpus"] >= 1


def test_rerun_is_byte_identical(tmp_path):
    """Same inputs, same bytes: rerunning the gate after `dvc repro` must leave `dvc status` clean."""
    mpath = _write_eval(tmp_path, _seed_metrics())
    run = _dvclive_run(tmp_path)
    first = report.build_report(mpath, SEED, tmp_path / "out", run_dir=run, dvc_lock=None)
    snap = {p.name: p.read_bytes() for p in first.written}
    report.build_report(mpath, SEED, tmp_path / "out", run_dir=run, dvc_lock=None)
    assert {p.name: p.read_bytes() for p in first.written} == snap
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_check_exit_codes(tmp_path):
    good = _write_eval(tmp_path / "a", _seed_metrics())
    bad = _write_eval(tmp_path / "b", _seed_metrics(**{"O.f1": 0.9}))
    ok = _cli("--metrics", str(good), "--result", SEED, "--out", str(tmp_path / "oa"), "--check", "--dvc-lock", str(tmp_path / "none"))
    assert ok.returncode == 0, ok.stderr
    assert "REPRODUCED — all 49 metrics within tolerance" in ok.stdout
    fail = _cli("--metrics", str(bad), "--result", SEED, "--out", str(tmp_path / "ob"), "--check")
    assert fail.returncode == 1
    assert "token.O.f1" in fail.stderr and "Traceback" not in fail.stderr
    assert (tmp_path / "ob" / "report.html").is_file()  # the report is written even when the gate fails
    no_gate = _cli("--metrics", str(bad), "--result", SEED, "--out", str(tmp_path / "oc"))
    assert no_gate.returncode == 0
    missing = _cli("--metrics", str(tmp_path / "missing.json"), "--result", SEED, "--out", str(tmp_path / "od"))
    assert missing.returncode == 2 and "missing.json" in missing.stderr
    unknown = _cli("--metrics", str(good), "--result", "conll2003-smollm2-fulll", "--out", str(tmp_path / "oe"))
    assert unknown.returncode == 2 and "did you mean conll2003-smollm2-full" in unknown.stderr


def test_summary_fits_one_screen(tmp_path):
    from rich.console import Console

    m = _seed_metrics(**{f"{t}.recall": 0.1 for t in LABELS})  # 9 failures among non-F1 rows
    rep = report.build_report(_write_eval(tmp_path, m), SEED, tmp_path / "out", dvc_lock=None)
    console = Console(width=100, record=True, file=open("/dev/null", "w"))
    console.print(report.summary(rep))
    text = console.export_text()
    assert len(text.splitlines()) <= 40
    assert "NOT REPRODUCED — 9 of 49" in text
    for tag in LABELS:
        assert f"token.{tag}.recall" in text  # every failure is on screen


# --- provenance -----------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_git_state_dirty_ignores_pipeline_writes(tmp_path):
    assert provenance.git_state(tmp_path)["commit"] is None
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "r.md").write_text("x\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "init")
    head = _git(tmp_path, "rev-parse", "HEAD").strip()
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": False, "changed": []}
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (tmp_path / "reports" / "r.md").write_text("y\n")
    assert provenance.git_state(tmp_path)["dirty"] is False  # the pipeline wrote these itself
    (tmp_path / "params.yaml").write_text("a: 2\n")
    state = provenance.git_state(tmp_path)
    assert state["dirty"] is True and state["changed"] == ["params.yaml"]


def test_timer_records_and_propagates_exit_code(tmp_path):
    timings = tmp_path / "timings"
    ok = subprocess.run([sys.executable, "-m", "llamakit.provenance", "time", "s1", "--dir", str(timings), "--",
                         sys.executable, "-c", "import time; time.sleep(0.2)"])
    assert ok.returncode == 0
    rec = json.loads((timings / "s1.json").read_text())
    assert rec["stage"] == "s1" and rec["wall_s"] >= 0.2 and re.match(r"\d{4}-\d\d-\d\dT", rec["finished"])
    bad = subprocess.run([sys.executable, "-m", "llamakit.provenance", "time", "s2", "--dir", str(timings), "--",
                          sys.executable, "-c", "import sys; print('partial'); sys.exit(3)"], capture_output=True)
    assert bad.returncode == 3 and not (timings / "s2.json").exists()
    assert set(provenance.read_timings(timings)) == {"s1"}


def test_timer_stdout_capture_is_all_or_nothing(tmp_path):
    out = tmp_path / "v" / "verify.json"
    cmd = [sys.executable, "-m", "llamakit.provenance", "time", "v", "--dir", str(tmp_path / "t"), "--stdout", str(out), "--"]
    assert subprocess.run(cmd + [sys.executable, "-c", "print('{\"ok\": true}')"]).returncode == 0
    assert json.loads(out.read_text()) == {"ok": True}
    out.unlink()
    failed = subprocess.run(cmd + [sys.executable, "-c", "import sys; print('{\"ok\"'); sys.exit(1)"])
    assert failed.returncode == 1 and not out.exists()


def test_provenance_reads_dvc_lock_and_release_lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "convert": {"cmd": "c", "outs": [{"path": "work/model-hf", "hash": "md5", "md5": "ab.dir", "size": 10, "nfiles": 3}]},
        "report": {"cmd": "r", "outs": [{"path": "out/report.json", "hash": "md5", "md5": "cd", "size": 1}]},
    }}))
    rel = tmp_path / "rel.json"
    rel.write_text(json.dumps({"lock_version": 1, "name": "m", "format": "gguf", "source": {"kind": "pypi"}, "revision": None,
                               "files": [{"path": "m.gguf", "size": 5, "sha256": "0" * 64}]}))
    rep = report.build_report(_write_eval(tmp_path, _seed_metrics()), SEED, tmp_path / "out", dvc_lock=lock, release_lock=rel)
    prov = rep.provenance
    # The report's own stage is left out: its entry describes the previous report.
    assert prov["dvc_lock"]["outs"] == {"convert": [{"path": "work/model-hf", "md5": "ab.dir", "size": 10, "nfiles": 3}]}
    assert prov["release_lock"]["files"] == [{"path": "m.gguf", "sha256": "0" * 64, "size": 5}]
    assert "ab.dir" in (tmp_path / "out" / "report.md").read_text()


def test_gate_an_existing_report_without_rebuilding(tmp_path):
    """`llamakit report --out DIR --check` gates the report a pipeline run wrote, byte-for-byte
    untouched (its provenance must stay that of the run), and refuses a stale one."""
    mpath = _write_eval(tmp_path / "a", _seed_metrics(**{"O.f1": 0.9}))
    out = tmp_path / "out"
    report.build_report(mpath, SEED, out, dvc_lock=None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    gate = _cli("--out", str(out), "--check")
    assert gate.returncode == 1 and "token.O.f1" in gate.stderr and "NOT REPRODUCED" in gate.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert report.load_report(out).failures[0].name == "token.O.f1"

    mpath.write_text(json.dumps(_seed_metrics()))  # metrics changed after the report was written
    stale = _cli("--out", str(out), "--check")
    assert stale.returncode == 2 and "stale" in stale.stderr
    half = _cli("--out", str(out), "--metrics", str(mpath))
    assert half.returncode == 2 and "--metrics and --result go together" in half.stderr


def _reference_entry(tmp_path: Path, metrics: dict, environment: dict) -> Path:
    doc = results.reference_from_metrics(metrics, name="toy-ci", profile="ci", model="tiny", tolerance=0.0,
                                         recorded={"environment": environment}, source="test")
    path = tmp_path / "toy-ci.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_gate_names_how_the_environment_differs_from_the_references(tmp_path):
    """A red reference gate explains itself: CPU, ISA pins, lock and package versions that differ."""
    from rich.console import Console

    m = _seed_metrics()
    run = _dvclive_run(tmp_path)
    summary = json.loads((run / "train_summary.json").read_text())
    cpu = {"vendor": "AuthenticAMD", "model": "AMD EPYC", "isa": "avx2", "flags": ["avx2"], "pins": {"MKL_CBWR": "AVX2"}}
    (run / "train_summary.json").write_text(json.dumps({**summary, "cpu": cpu}))
    here = provenance.environment()
    theirs = {"lock": {"path": "requirements/lock.txt", "sha256": "ab" * 32},
              "installed": {**here["installed"], "torch": "2.99.0"},
              "cpu": {"vendor": "GenuineIntel", "model": "Intel(R) Xeon(R) Processor", "isa": "avx512", "pins": {}}}
    entry = _reference_entry(tmp_path, m, theirs)
    out = tmp_path / "out"
    rep = report.build_report(_write_eval(tmp_path, m), entry, out, run_dir=run, dvc_lock=None)
    assert rep.provenance["environment"]["cpu"] == cpu  # the fine-tune's view, pins included
    lines = report.environment_differences(rep)
    assert any(l.startswith("CPU: AMD EPYC here, Intel(R) Xeon(R) Processor in the reference") for l in lines)
    assert any(l.startswith("CPU ISA: avx2 here, avx512 in the reference") for l in lines)
    assert any(l.startswith("ISA pins: MKL_CBWR=AVX2 here, none in the reference") for l in lines)
    assert any(l.startswith("dependency lock sha256:") and "abababababab in the reference" in l for l in lines)
    assert any(l.startswith("packages: ") and "torch" in l and "(reference 2.99.0)" in l for l in lines)
    console = Console(width=120, record=True, file=open("/dev/null", "w"))
    console.print(report.summary(rep))
    text = console.export_text()
    assert text.index("differs from the reference's") < text.index("metric ")  # above the table

    same = _reference_entry(tmp_path / "same", m, rep.provenance["environment"])
    rep2 = report.build_report(_write_eval(tmp_path / "b", m), same, tmp_path / "out2", run_dir=run, dvc_lock=None)
    assert report.environment_differences(rep2) == []
