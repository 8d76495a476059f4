"""llamakit.run_record: a fine-tune run directory read once for the report (curves written by real dvclive)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamakit import run_record
from llamakit.errors import InputFileError


def _curves(run: Path, train: list[float], dev: list[float]) -> None:
    from dvclive import Live

    with Live(dir=str(run / "dvclive"), save_dvc_exp=False, dvcyaml=False, report=None, monitor_system=False) as live:
        for step in range(1, max(len(train), len(dev)) + 1):
            live.step = step
            if step <= len(train):
                live.log_metric("train/loss", train[step - 1])
            if step <= len(dev):
                live.log_metric("dev/loss", dev[step - 1])


def test_no_run_dir_gives_an_empty_record():
    rec = run_record.read_run(None)
    assert rec.train == {} and rec.loss == []


def test_train_loss_is_preferred_over_dev_loss(tmp_path):
    run = tmp_path / "run"
    _curves(run, train=[3.0, 2.0, 1.0], dev=[9.0, 8.0])
    (run / run_record.SUMMARY).write_text(json.dumps({"recipe": {"seed": 3, "threads": 2}, "steps": 3, "wall_s": 1.0}))
    rec = run_record.read_run(run)
    assert rec.loss == [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]
    assert rec.train["seeds"] == {"seed": 3} and rec.train["threads"] == 2 and rec.train["steps"] == 3
    assert "members" not in rec.train


def test_an_interrupted_run_without_summary_keeps_its_curve(tmp_path):
    run = tmp_path / "run"
    _curves(run, train=[2.0, 1.5], dev=[])
    rec = run_record.read_run(run)
    assert rec.train["summary"] is None and "train_summary.json not found" in rec.train["note"]
    assert rec.loss == [(1.0, 2.0), (2.0, 1.5)]


@pytest.mark.parametrize("text, says", [("{half", "not readable JSON"), ("[1, 2]", "must be a JSON object")])
def test_a_broken_summary_names_the_file(tmp_path, text, says):
    run = tmp_path / "run"
    run.mkdir()
    (run / run_record.SUMMARY).write_text(text)
    with pytest.raises(InputFileError, match=says) as info:
        run_record.read_run(run)
    assert info.value.file == str(run / run_record.SUMMARY)
