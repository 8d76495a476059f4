"""The real dvc.yaml under real DVC: staleness after each kind of change, remote round trip,
metrics and plots, the report gate, and (slow tier) real reruns under `dvc exp run -S`."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.import_graph import imports, module_file
from tests.pipeline._dvcrepo import CI_REF, REPO, dvc, git, persisted_outs, run

STAGES = ["fetch", "verify", "convert", "prepare", "finetune", "evaluate", "report"]
# The run-to-run spread stages (`make seeds`): each repeats a main stage for params.yaml `seeds`.
SEEDS = yaml.safe_load((REPO / "params.yaml").read_text())["seeds"]
SEED_TWINS = {"finetune": {f"seed-finetune@{k}" for k in SEEDS}, "evaluate": {f"seed-evaluate@{k}" for k in SEEDS},
              "report": {"seeds-report"}}


def plus_seeds(stages: set[str]) -> set[str]:
    """The main stages and their seed twins, which share their code, params and inputs."""
    return set(stages).union(*(SEED_TWINS.get(s, set()) for s in stages))


def stale(root: Path) -> set[str]:
    """Stages DVC itself reports as changed (deps, params or outs)."""
    return set(json.loads(dvc(root, "status", "--json").stdout or "{}"))


def downstream(root: Path, stages: set[str]) -> set[str]:
    edges = re.findall(r'"([\w@.-]+)" -> "([\w@.-]+)"', dvc(root, "dag", "--dot").stdout)
    out, frontier = set(stages), set(stages)
    while frontier:
        frontier = {b for a, b in edges if a in frontier} - out
        out |= frontier
    return out


def set_param(root: Path, key: str, value) -> None:
    """What `dvc exp run -S key=value` does to params.yaml, without running anything."""
    path = root / "params.yaml"
    doc = yaml.safe_load(path.read_text())
    *parents, last = key.split(".")
    node = doc
    for k in parents:
        node = node[k]
    assert last in node, key
    node[last] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_up_to_date_after_a_run(pipeline_repo):
    assert stale(pipeline_repo) == set()
    out = dvc(pipeline_repo, "repro").stdout
    assert "Running stage" not in out
    assert all(f"Stage '{s}' didn't change" in out for s in STAGES)


# param -> new value -> the stages DVC must find stale; everything downstream of them reruns.
PARAM_CHANGES = {
    "finetune.lr": (3.0e-4, {"finetune"}),
    "finetune.lora": ({"r": 8, "alpha": 16, "dropout": 0.0}, {"finetune"}),
    "finetune.profiles.ci.limit_train": (500, {"finetune"}),
    "prepare.max_length": (300, {"prepare"}),
    "evaluate.split": ("valid", {"evaluate"}),
    "convert.dtype": ("bf16", {"convert"}),
    "fetch.source": ("hf", {"fetch"}),
}


@pytest.mark.parametrize("key", sorted(PARAM_CHANGES))
def test_param_change_reruns_exactly_downstream(pipeline_repo, key):
    value, expected = PARAM_CHANGES[key]
    set_param(pipeline_repo, key, value)
    assert stale(pipeline_repo) == plus_seeds(expected)
    # What reruns is the changed stage and everything after it; the stages before it do not.
    first = STAGES.index(min(expected, key=STAGES.index))
    assert downstream(pipeline_repo, plus_seeds(expected)) == plus_seeds(set(STAGES[first:]))


def test_finetune_change_reruns_finetune_evaluate_report_only(pipeline_repo):
    set_param(pipeline_repo, "finetune.seed", 1)
    changed = stale(pipeline_repo)
    assert changed == plus_seeds({"finetune"})  # the seed runs list finetune.seed too (they override it)
    assert downstream(pipeline_repo, changed) == plus_seeds({"finetune", "evaluate", "report"})


def test_editing_the_other_profile_changes_nothing(pipeline_repo):
    set_param(pipeline_repo, "finetune.profiles.full.epochs", 4)
    assert stale(pipeline_repo) == set()


def test_switching_profile(pipeline_repo):
    set_param(pipeline_repo, "profile", "full")
    # full writes its own report directory and is held against the seed's entry
    assert stale(pipeline_repo) == plus_seeds({"finetune", "evaluate", "report"})


def test_data_dir_param(pipeline_repo, tmp_path, conll_dir):
    copy = tmp_path / "my-conll"
    shutil.copytree(conll_dir, copy)
    params = pipeline_repo / "params.yaml"
    edit(params, f"conll_dir: {conll_dir}", f"conll_dir: {copy}")
    assert stale(pipeline_repo) == {"prepare"}  # same bytes, new place: prepare's params changed
    edit(params, f"conll_dir: {copy}", f"conll_dir: {conll_dir}")
    assert stale(pipeline_repo) == set()


CODE_CHANGES = {
    "llamakit/train/evaluate.py": {"evaluate"},
    "llamakit/train/metrics.py": {"evaluate"},
    "llamakit/train/recipe.py": {"finetune"},
    "llamakit/train/modeling.py": {"finetune", "evaluate"},
    "llamakit/data/conll.py": {"prepare", "evaluate"},
    "llamakit/data/prepared.py": {"prepare", "finetune", "evaluate"},  # the one reader of prepared data
    "llamakit/report_render.py": {"report"},
    "llamakit/results.py": {"report"},
    "llamakit/verify.py": {"verify"},  # fetch verifies inline (fetch/_engine.py), not through verify.py
    "llamakit/fetch/lockfile.py": {"fetch", "verify"},  # the lock both read
    "manifests/datasets/conll2003.yaml": {"prepare"},
    CI_REF: {"report"},
    # Registration, messages and the docs do not change a result.
    "llamakit/cli.py": set(),
    "llamakit/errors.py": set(),
}


@pytest.mark.parametrize("path", sorted(CODE_CHANGES))
def test_code_change_reruns_its_stages(pipeline_repo, path):
    with (pipeline_repo / path).open("a") as fh:
        fh.write("\n# edited\n")
    assert stale(pipeline_repo) == plus_seeds(CODE_CHANGES[path])


def test_bytecode_caches_are_not_changes(pipeline_repo):
    cache = pipeline_repo / "llamakit" / "data" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "conll.cpython-311.pyc").write_bytes(b"\0" * 16)
    assert stale(pipeline_repo) == set()


def test_every_finetune_key_is_tracked():
    """dvc.yaml lists finetune params key by key (so the other profile is not a dependency);
    a key added to params.yaml but not to dvc.yaml would silently not rerun the stage."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["finetune"]
    listed = set(stage["params"])
    assert {f"finetune.{k}" for k in params["finetune"] if k != "profiles"} | {"profile", "finetune.profiles.${profile}"} == listed
    assert set(params["finetune"]["profiles"]) == {"ci", "full"}


def test_params_finetune_is_the_canonical_recipe():
    """params.yaml's finetune section is manifests/recipes/conll2003.yaml, key for key."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())["finetune"]
    assert params == yaml.safe_load((REPO / "manifests/recipes/conll2003.yaml").read_text())


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_push_pull_round_trip(pipeline_repo, tmp_path):
    work = _tree_digest(pipeline_repo / "work")
    dvc(pipeline_repo, "push")
    assert any((pipeline_repo / "dvc-remote").rglob("*")), "the default remote is the in-repo dvc-remote/"
    assert git(pipeline_repo, "status", "--porcelain", "--ignored", "dvc-remote").startswith("!!")  # ignored by git
    shutil.rmtree(pipeline_repo / ".dvc" / "cache")
    seed_runs = [str(p.relative_to(pipeline_repo)) for p in sorted((pipeline_repo / "work/seeds").glob("*/finetune"))]
    for out in ("work/fetch", "work/model-hf", "work/prepared", "work/finetune", "work/verify.json", *seed_runs):
        p = pipeline_repo / out
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert stale(pipeline_repo)  # outputs gone
    dvc(pipeline_repo, "pull")
    assert stale(pipeline_repo) == set()
    assert {k: v for k, v in _tree_digest(pipeline_repo / "work").items() if not k.startswith("timings")} == \
        {k: v for k, v in work.items() if not k.startswith("timings")}

    # A fresh clone elsewhere points its (per-clone) remote at the shared one without editing
    # tracked files: `dvc remote modify --local` (the README's recipe for S3/GCS/SSH too).
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(pipeline_repo), str(clone)], tmp_path)
    dvc(clone, "remote", "modify", "--local", "local", "url", str(pipeline_repo / "dvc-remote"))
    dvc(clone, "pull")
    # the persisted, uncached outputs (empty after a finished run) are not in git or the remote
    assert {o for s in json.loads(dvc(clone, "status", "--json").stdout).values() for c in s if isinstance(c, dict)
            for o in c.get("changed outs", {})} == set(persisted_outs(clone))
    run(["python", "scripts/persisted_dirs.py"], clone)  # what scripts/repro.sh does after the run
    assert stale(clone) == set()
    assert git(clone, "status", "--porcelain") == ""


def test_unfinished_work_is_persisted_and_uncached():
    """Checkpoints and partial downloads survive a rerun (DVC deletes other outputs first) and stay
    out of the cache and remote; the model and the fetched files do not."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

    def flags(stage: dict) -> dict[str, dict]:
        return {next(iter(o)) if isinstance(o, dict) else o: (next(iter(o.values())) if isinstance(o, dict) else {})
                for o in stage["outs"]}

    assert flags(stages["fetch"])["work/fetch-downloads"] == {"persist": True, "cache": False}
    assert "LLAMAKIT_DOWNLOADS_DIR=work/fetch-downloads " in stages["fetch"]["cmd"]
    assert flags(stages["finetune"])["${finetune.state}"] == {"persist": True, "cache": False}
    assert flags(stages["finetune"])["${finetune.out}"] == {}  # cached, pushed
    assert flags(stages["seed-finetune"]["do"])["work/seeds/${item}/state"] == {"persist": True, "cache": False}


def test_seed_stages_repeat_the_main_ones():
    """The seed runs use finetune's code, params and inputs (YAML anchors: the same list), evaluate's
    code with their own model, and seeds-report takes one metrics file per seed, in order."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["seed-finetune"]["do"]["deps"] == stages["finetune"]["deps"]
    assert stages["seed-finetune"]["do"]["params"] == stages["finetune"]["params"]
    assert [d.replace("work/seeds/${item}/finetune", "${finetune.out}") for d in stages["seed-evaluate"]["do"]["deps"]] \
        == stages["evaluate"]["deps"]
    cmd = stages["seeds-report"]["cmd"]
    runs = re.findall(r"--metrics (\S+)", cmd)
    assert runs == ["reports/conll2003-smollm2-${profile}/eval/metrics.json"] + \
        [f"reports/conll2003-smollm2-${{profile}}-seeds/seed-{k}/eval/metrics.json" for k in SEEDS]
    assert [d for d in stages["seeds-report"]["deps"] if d.endswith("metrics.json")] == runs
    assert len(SEEDS) + 1 >= 3  # the spread of at least three runs
    # seeds-report runs the report's code: the same list plus spread.py's aggregation
    report_code = {d for d in stages["report"]["deps"] if d.startswith("llamakit/")}
    assert report_code == {d for d in stages["seeds-report"]["deps"] if d.startswith("llamakit/")}


def test_metrics_and_plots(pipeline_repo):
    shown = json.loads(dvc(pipeline_repo, "metrics", "show", "--json").stdout)
    (data,) = [v["data"] for v in shown.values()]
    (metrics,) = [v["data"] for k, v in data.items() if k == "reports/conll2003-smollm2-ci/eval/metrics.json"]
    assert any(k.endswith("ci/train/metrics.json") for k in data)  # training metrics: dvc metrics / exp show
    assert metrics["headline"]["token_micro_f1"] == pytest.approx(7 / 9)
    plots = json.loads(dvc(pipeline_repo, "plots", "show", "--json").stdout)
    ids = set(plots["data"])
    assert any(i.endswith("confusion.csv") for i in ids)
    assert any(i.endswith("per_tag_f1.csv") for i in ids)
    assert any(i.endswith("loss.tsv") for i in ids)
    assert not plots.get("errors")


def test_gate_leaves_everything_current(pipeline_repo):
    """scripts/repro.sh reruns the report stage's own command with --check; after it, DVC and git
    must both see nothing changed (the report is a pure function of its inputs)."""
    proc = run(["bash", "scripts/repro.sh", "ci"], pipeline_repo)
    assert "REPRODUCED" in proc.stdout
    assert stale(pipeline_repo) == set()
    assert git(pipeline_repo, "status", "--porcelain") == ""


def test_gate_fails_outside_tolerance(pipeline_repo):
    ref = pipeline_repo / CI_REF
    doc = yaml.safe_load(ref.read_text())
    doc["metrics"]["token"]["B-PER"]["f1"] += 0.01
    ref.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = run(["bash", "scripts/repro.sh", "ci"], pipeline_repo, check=False)
    assert proc.returncode == 1
    assert "token.B-PER.f1" in proc.stderr
    assert "NOT REPRODUCED" in proc.stdout
    # the report stage reran and recorded the failing report; the seeds report, which `make seeds`
    # (not the gate) reruns, holds the runs against the same entry, so it is stale now
    assert stale(pipeline_repo) == SEED_TWINS["report"]


# --- slow tier: real reruns -----------------------------------------------------


@pytest.mark.slow
def test_exp_run_override_reruns_only_downstream(trained_repo):
    before = json.loads((trained_repo / "reports/conll2003-smollm2-ci/eval/metrics.json").read_text())
    out = dvc(trained_repo, "exp", "run", "-S", "finetune.profiles.ci.lr=0.003").stdout  # ci sets its own lr
    for s in ("fetch", "verify", "convert", "prepare"):
        assert f"Stage '{s}' didn't change" in out
    for s in ("finetune", "evaluate", "report"):
        assert f"Running stage '{s}'" in out
    assert yaml.safe_load((trained_repo / "params.yaml").read_text())["finetune"]["profiles"]["ci"]["lr"] == 0.003
    summary = json.loads((trained_repo / "work/finetune/train_summary.json").read_text())
    assert summary["recipe"]["lr"] == 0.003
    after = json.loads((trained_repo / "reports/conll2003-smollm2-ci/eval/metrics.json").read_text())
    assert after["token"] != before["token"]
    assert stale(trained_repo) == set()


@pytest.mark.slow
def test_forced_rerun_is_bit_identical(trained_repo):
    """A second forced run of finetune → evaluate → report on the same machine: the same weights
    (evaluate's lock entry records their hash as its input), predictions and metrics, byte for
    byte. (The finetune directory as a whole differs: train_summary.json holds wall times.)"""
    def evaluate_entry() -> dict:
        return yaml.safe_load((trained_repo / "dvc.lock").read_text())["stages"]["evaluate"]

    before = evaluate_entry()
    weights = _tree_digest(trained_repo / "work/finetune/model")
    dvc(trained_repo, "repro", "--force", "--downstream", "finetune")
    assert _tree_digest(trained_repo / "work/finetune/model") == weights
    assert evaluate_entry() == before
    proc = run(["bash", "scripts/repro.sh", "ci"], trained_repo)
    assert "REPRODUCED" in proc.stdout


# --- each stage lists its own code ----------------------------------------------

# What each stage's command imports first (see the command bodies in llamakit/cli.py).
STAGE_ENTRY = {
    "fetch": ["llamakit.fetch"],
    "verify": ["llamakit.verify"],
    "convert": ["llamakit.convert"],
    "prepare": ["llamakit.data.conll"],
    "finetune": ["llamakit.train.finetune"],
    "evaluate": ["llamakit.train.evaluate"],
    "report": ["llamakit.report"],
}
# Registration, messages, the version string, `llamakit list` tables and the stage timer do not
# change what a stage computes; dvc.yaml leaves them out so editing them reruns nothing.
NOT_CODE_DEPS = {"llamakit/__init__.py", "llamakit/__main__.py", "llamakit/cli.py", "llamakit/errors.py",
                 "llamakit/catalog_view.py"}


def _closure(entries: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a/__init__, a/b/__init__
        todo += sorted(imports(module_file(mod), mod))
    return {str(module_file(m).relative_to(REPO)) for m in seen}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_code_deps_are_exactly_what_it_imports(stage):
    deps = [d for d in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"] if d.startswith("llamakit/")]
    code = _closure(STAGE_ENTRY[stage]) - NOT_CODE_DEPS
    if stage != "report":
        code.discard("llamakit/provenance.py")  # the timer around the command
    covered = {f for f in code if any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)}
    assert code - covered == set(), f"{stage} runs code dvc.yaml does not list"
    unused = [d for d in deps if not any(f == d or f.startswith(d.rstrip("/") + "/") for f in code)]
    assert unused == [], f"{stage} lists code it does not run"


def test_dvc_config_is_offline_with_an_in_repo_remote(pipeline_repo):
    settings = dict(line.split("=", 1) for line in dvc(pipeline_repo, "config", "--list", "--project").stdout.split())
    assert settings["core.analytics"] == "false" and settings["core.check_update"] == "false"
    assert settings["studio.offline"] == "true"
    assert settings["core.remote"] == "local"
    # relative to .dvc/, so every clone has its own git-ignored dvc-remote/ wherever it lives
    assert "url = ../dvc-remote" in (pipeline_repo / ".dvc" / "config").read_text()
    assert Path(settings["remote.local.url"]) == pipeline_repo / "dvc-remote"
    assert "/dvc-remote/" in (REPO / ".gitignore").read_text().splitlines()
