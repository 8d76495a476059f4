"""Throwaway git + DVC copies of this repo's real pipeline (dvc.yaml, params.yaml, .dvc/config, code).

What is under test is our dvc.yaml / params.yaml / DVC config as DVC itself reads them: which
stages are stale after a change, that outputs push and pull, that metrics and plots resolve.

- `pipeline_repo` (default tier): the state a finished run leaves, built in seconds. Each
  stage output exists (byte stand-ins where weights would be; a real-shaped metrics.json from
  the evaluate stage's own metric code) and `dvc commit` records them in dvc.lock.
- `trained_repo` (slow tier): fetch/verify/convert recorded with a tiny random Llama plus a
  real byte-level tokenizer standing in for the converted 135M model; then prepare, finetune
  (ci profile), evaluate and report really run under `dvc repro` on the real CoNLL-2003 files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.pipeline._dvcrepo import copy_repo, dvc, fill_outputs, git, record_ci_reference, stand_in_upstream


@pytest.fixture(scope="session")
def pipeline_template(tmp_path_factory, conll_dir) -> Path:
    root = tmp_path_factory.mktemp("pipeline") / "repo"
    copy_repo(root, conll_dir)
    fill_outputs(root)
    record_ci_reference(root)
    dvc(root, "commit", "-f", "-q")
    dvc(root, "repro", "--force", "--single-item", "report")  # the real report stage on those outputs
    return _committed(root)


@pytest.fixture
def pipeline_repo(pipeline_template, tmp_path) -> Path:
    return _copy(pipeline_template, tmp_path)


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory, conll_dir) -> Path:
    root = tmp_path_factory.mktemp("trained") / "repo"
    # The toy tokenizer splits words finer than SmolLM2's: its longest sentence has 270 pieces.
    copy_repo(root, conll_dir, max_length=512)
    upstream = ["fetch", "verify", "convert"]
    stand_in_upstream(root, upstream, conll_dir)
    dvc(root, "commit", "-f", "-q", *upstream)
    dvc(root, "repro", "evaluate")
    record_ci_reference(root)
    dvc(root, "repro")
    return _committed(root)


@pytest.fixture
def trained_repo(trained_template, tmp_path) -> Path:
    return _copy(trained_template, tmp_path)


def _committed(root: Path) -> Path:
    """The run's state committed to git, with DVC agreeing that nothing is stale."""
    git(root, "add", "-A")
    git(root, "commit", "-qm", "pipeline state after a run")
    assert "up to date" in dvc(root, "status").stdout
    return root


def _copy(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(template, root, symlinks=True)
    return root
