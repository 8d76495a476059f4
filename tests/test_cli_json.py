"""`--json` of prepare, finetune, evaluate and report, run for real on tiny fixtures, chained as the
pipeline chains them: each document parses, carries the fields its --help promises, and its values are
the ones on disk (counts of the CoNLL slice, the run's train_summary.json, evaluate's metrics.json)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
from pathlib import Path

import pytest

from ner_fixtures import SLICE_SIZES, conll_slice, tiny_classifier, tiny_tokenizer  # noqa: F401  (fixtures)


def llamakit(monkeypatch, capsys, *args: str) -> tuple[int, dict | list, str]:
    """Run the CLI in this process (torch is imported once for the whole module); (exit code, stdout JSON, stderr)."""
    from llamakit import cli

    monkeypatch.setattr(sys, "argv", ["llamakit", *args, "--json"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out, err = capsys.readouterr()
    return exc.value.code or 0, json.loads(out), err


def _words(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip() and not line.startswith("-DOCSTART-"))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return tmp_path_factory.mktemp("json_chain")


def test_prepare_json_is_the_manifest_it_wrote(conll_slice, tiny_classifier, chain, monkeypatch, capsys):  # noqa: F811
    out = chain / "prep"
    code, doc, _ = llamakit(monkeypatch, capsys, "prepare", "conll2003", "--data-dir", str(conll_slice), "--model",
                            str(tiny_classifier), "--out", str(out), "--max-length", "1024", "--no-check-counts")
    assert code == 0 and doc["out"] == str(out)
    assert {k: v["sentences"] for k, v in doc["splits"].items()} == SLICE_SIZES
    assert {k: v["words"] for k, v in doc["splits"].items()} == {s: _words(conll_slice / f"{s}.txt") for s in SLICE_SIZES}
    assert doc["files"] == {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in doc["files"]}
    assert {"train.jsonl", "valid.jsonl", "test.jsonl"} <= set(doc["files"])
    assert doc["tokenizer"]["sha256"] == hashlib.sha256((tiny_classifier / "tokenizer.json").read_bytes()).hexdigest()
    assert {k: v for k, v in doc.items() if k != "out"} == json.loads((out / "manifest.json").read_text())


def test_finetune_json_is_the_run_it_recorded(tiny_classifier, chain, monkeypatch, capsys):  # noqa: F811
    import yaml

    recipe = chain / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(tiny_classifier), "data": str(chain / "prep"), "out": str(chain / "run"),
                                      "threads": 1, "lr": 1e-3, "epochs": 1, "max_tokens_per_batch": 256,
                                      "checkpoint_every": 100, "eval_sentences": 10, "warmup_ratio": 0.1}))
    code, doc, _ = llamakit(monkeypatch, capsys, "finetune", str(recipe))
    assert code == 0 and doc["out"] == str(chain / "run")
    summary = json.loads((chain / "run" / "train_summary.json").read_text())
    assert doc["step"] == doc["total_steps"] == summary["steps"] > 0 and doc["interrupted"] is False
    assert doc["final_loss"] == summary["final_loss"] and math.isfinite(doc["final_loss"])
    assert doc["tokens_per_s"] > 0 and doc["wall_s"] > 0 and doc["tokens"] > 0 and doc["resumed_from"] is None
    assert doc["dev"] and 0.0 <= doc["dev"][-1]["token_micro_f1"] <= 1.0  # the dev scores the help promises
    assert (doc["rank"], doc["world"]) == (0, 1)


def test_evaluate_json_is_the_headline_of_metrics_json(conll_slice, chain, monkeypatch, capsys):  # noqa: F811
    out = chain / "eval"
    code, doc, _ = llamakit(monkeypatch, capsys, "evaluate", "--model", str(chain / "run" / "model"), "--data",
                            str(chain / "prep"), "--out", str(out), "--split", "valid")
    assert code == 0 and doc["metrics"] == str(out / "metrics.json") and doc["split"] == "valid"
    assert (doc["n_sentences"], doc["n_words"]) == (SLICE_SIZES["valid"], _words(conll_slice / "valid.txt"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert doc["headline"]["token_micro_f1"] == pytest.approx(metrics["token"]["micro avg"]["f1"])
    assert doc["headline"]["entity_f1"] == pytest.approx(metrics["entity"]["micro avg"]["f1"])
    assert "report_text" not in doc


def test_report_json_is_report_json(tmp_path, monkeypatch, capsys):
    from llamakit import results

    entry = results.load_result("conll2003-smollm2-full")
    metrics = {"split": "test", "n_sentences": 3453, "n_words": 46435, "token": copy.deepcopy(entry.metrics["token"]),
               "entity": copy.deepcopy(entry.metrics["entity"])}
    (tmp_path / "m.json").write_text(json.dumps(metrics))
    args = ["report", "--metrics", str(tmp_path / "m.json"), "--result", "conll2003-smollm2-full", "--dvc-lock", str(tmp_path / "none.lock")]
    code, doc, _ = llamakit(monkeypatch, capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 0 and doc == json.loads((tmp_path / "a" / "report.json").read_text())
    assert doc["passed"] is True and doc["n_failed"] == 0 and doc["n_metrics"] == len(doc["metrics"]) == len(entry.flat_metrics())
    assert doc["evaluation"]["n_sentences"] == 3453 and doc["result"]["name"] == "conll2003-smollm2-full"
    metrics["token"]["micro avg"]["f1"] -= 0.05  # one metric out of tolerance: the JSON says which
    (tmp_path / "m.json").write_text(json.dumps(metrics))
    code, doc, _ = llamakit(monkeypatch, capsys, *args, "--out", str(tmp_path / "b"), "--check")
    assert code == 1 and doc["passed"] is False and doc["failed"] == ["token.micro avg.f1"]
