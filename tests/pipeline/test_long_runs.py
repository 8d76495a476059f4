"""An interrupted `dvc repro` resumes the fine-tune from its last checkpoint (issue: long runs under DVC).

DVC deletes a stage's outputs before it reruns the stage, so checkpoints inside `finetune.out`
never survived a rerun. The pipeline keeps them in `finetune.state`, a persisted, uncached
output. Here the real dvc.yaml's finetune and evaluate stages (their commands, params, outs and
metrics exactly as committed; only the deps are the tiny model and data instead of the code and
the upstream stages) run under real DVC on a tiny model: a `dvc repro` is killed (SIGKILL, and
SIGINT) after the first checkpoint, rerun, and must start past step 0 and end with metrics
byte-identical to an uninterrupted `dvc repro`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline._dvcrepo import DVC, REPO, git, run
from tests.train._fixtures import write_prepared, write_tiny_model

PROFILE = "tiny"
# The tiny run: long enough (8 epochs of ~10 batches) that a checkpoint lands well before the end.
# No lr here: the experiments test varies the recipe's own `finetune.lr`, which a profile's lr would shadow.
TINY = {"epochs": 8, "max_tokens_per_batch": 96, "checkpoint_every": 10, "eval_sentences": 0, "threads": 1,
        "limit_train": None, "ensemble": [], "cpu_isa": "native", "log_every": 5}


def _tiny_repo(root: Path, assets: tuple[Path, Path]) -> Path:
    model, data = assets
    root.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = PROFILE
    params["finetune"]["model"], params["finetune"]["data"] = str(model), str(data)
    params["finetune"]["profiles"] = {PROFILE: TINY}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    real = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stages = {}
    for name in ("finetune", "evaluate"):
        stage = dict(real[name])
        # the code and upstream stages are not here: depend on the tiny model and data instead
        stage["deps"] = ["${finetune.model}", "${finetune.data}"] + (["${finetune.out}/model"] if name == "evaluate" else [])
        stages[name] = stage
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (root / ".gitignore").write_text("/work/\n")
    git(root, "init", "-q")
    run(DVC + ["init", "-q"], root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "tiny pipeline")
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_assets")
    model = write_tiny_model(root / "model")
    return model, write_prepared(root / "data", model_dir=model)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, assets):
    root = _tiny_repo(tmp_path_factory.mktemp("whole") / "repo", assets)
    run(DVC + ["repro"], root)
    return root


def _outputs(root: Path) -> dict[str, bytes]:
    files = [f"reports/conll2003-smollm2-{PROFILE}/eval/metrics.json", f"reports/conll2003-smollm2-{PROFILE}/train/metrics.json",
             f"reports/conll2003-smollm2-{PROFILE}/eval/predictions.txt"]
    return {f: (root / f).read_bytes() for f in files}


def _start_repro(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # its own process group: the signal reaches dvc and the stage command it runs, as Ctrl-C or a
    # killed CI job would
    return subprocess.Popen(DVC + ["repro"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupted_dvc_repro_resumes_from_the_last_checkpoint(tmp_path, assets, uninterrupted, sig):
    root = _tiny_repo(tmp_path / "repo", assets)
    params = yaml.safe_load((root / "params.yaml").read_text())["finetune"]
    ckpts = root / params["state"] / "checkpoints"
    proc = _start_repro(root)
    deadline = time.monotonic() + 300
    while not any(ckpts.glob("step-*/meta.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, f"the run ended before it could be interrupted:\n{out}"
    assert not (root / params["out"] / "model").exists()
    kept = sorted(p.name for p in ckpts.glob("step-*"))
    assert kept, "no checkpoint survived the interruption"

    rerun = run(DVC + ["repro"], root)
    summary = json.loads((root / params["out"] / "train_summary.json").read_text())
    # DVC deleted finetune.out before rerunning the stage; the persisted state was still there
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] > 0, rerun.stdout
    assert summary["resumed_from_step"] >= int(kept[-1].removeprefix("step-"))
    assert _outputs(root) == _outputs(uninterrupted)
    # the loss curve is whole (every step once), though the run had two sessions
    ref = (uninterrupted / params["out"] / "dvclive/plots/metrics/train/loss.tsv").read_text()
    assert (root / params["out"] / "dvclive/plots/metrics/train/loss.tsv").read_text().count("\n") == ref.count("\n")

    # finished: the state is empty (a later rerun for changed code starts over), nothing of it cached
    assert not any(p.is_file() for p in (root / params["state"]).rglob("*"))
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["finetune"]
    state = next(o for o in lock["outs"] if o["path"] == params["state"])
    assert state["nfiles"] == 0
    cached = [p for p in (root / ".dvc/cache").rglob("*.dir")]
    listed = [e["relpath"] for p in cached for e in json.loads(p.read_text())]
    assert listed and not any("checkpoints" in rel or rel.endswith("state.pt") for rel in listed)
    assert run(DVC + ["status", "--quiet"], root, check=False).returncode == 0


def test_training_metrics_are_dvc_metrics(uninterrupted):
    shown = json.loads(run(DVC + ["metrics", "show", "--json"], uninterrupted).stdout)
    flat = json.dumps(shown)
    assert f"reports/conll2003-smollm2-{PROFILE}/train/metrics.json" in flat
    train = json.loads((uninterrupted / f"reports/conll2003-smollm2-{PROFILE}/train/metrics.json").read_text())
    summary = json.loads((uninterrupted / "work/finetune/train_summary.json").read_text())
    assert train["steps"] == summary["steps"] > 0 and train["final_loss"] == summary["final_loss"]
    assert "tokens_per_s" not in train  # differs between two runs of one recipe: kept out


def test_experiments_compare_and_queue(tmp_path, assets):
    """README's experiment recipes on the tiny pipeline: two variants queued with `dvc exp run
    --queue -S …`, run by `dvc queue start`, compared by `dvc exp show` with their training and
    test metrics beside their params."""
    root = _tiny_repo(tmp_path / "repo", assets)
    for lr in ("0.003", "0.0005"):
        run(DVC + ["exp", "run", "--queue", "-S", f"finetune.lr={lr}", "-n", f"lr-{lr}"], root)
    run(DVC + ["queue", "start", "-j", "1"], root)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(DVC + ["queue", "status"], root).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert "Failed" not in status, status + run(DVC + ["queue", "logs", "lr-0.003"], root, check=False).stdout
    shown = json.loads(run(DVC + ["exp", "show", "--json"], root).stdout)
    exps = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                exps[rev.get("name")] = data
    assert {"lr-0.003", "lr-0.0005"} <= set(exps), sorted(exps)
    train_file = f"reports/conll2003-smollm2-{PROFILE}/train/metrics.json"
    losses = {}
    for name in ("lr-0.003", "lr-0.0005"):
        metrics = exps[name]["metrics"]
        assert f"reports/conll2003-smollm2-{PROFILE}/eval/metrics.json" in metrics
        train = metrics[train_file]["data"]
        assert train["steps"] > 0
        losses[name] = train["final_loss"]
        assert exps[name]["params"]["params.yaml"]["data"]["finetune"]["lr"] == float(name.removeprefix("lr-"))
    assert losses["lr-0.003"] != losses["lr-0.0005"]  # two different runs, not one shown twice
