"""`llamakit finetune` on tiny random Llamas: outputs, determinism, resume (incl. SIGKILL), LoRA, DDP."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llamakit.errors import CheckFailed, InputFileError, UsageError
from llamakit.train import finetune
from llamakit.train.checkpoint import list_checkpoints
from llamakit.train.data import read_train_split
from llamakit.train.modeling import load_token_classifier
from tests.train._fixtures import LABELS, read_weights, write_prepared, write_recipe, write_tiny_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft_assets")
    model = write_tiny_model(root / "model")
    data = write_prepared(root / "data", model_dir=model)
    return model, data


def make_recipe(tmp_path: Path, assets, out="out", **keys) -> Path:
    model, data = assets
    base = dict(
        model=str(model), data=str(data), out=str(tmp_path / out), threads=1, lr=1e-3, epochs=2,
        max_tokens_per_batch=128, checkpoint_every=3, eval_sentences=16, warmup_ratio=0.1,
    )
    base.update(keys)
    return write_recipe(tmp_path / f"recipe-{out}.yaml", **base)


def assert_same_weights(a: Path, b: Path, atol: float = 0.0):
    wa, wb = read_weights(a), read_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if atol == 0.0:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-4, msg=k)


def logged_steps(out: Path, metric="train/loss.tsv") -> list[tuple[int, float]]:
    with (out / "dvclive" / "plots" / "metrics" / metric).open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [(int(r["step"]), float(r[metric.split("/")[-1][: -len(".tsv")]])) for r in rows]


def dev_accuracy(model_dir: Path, data: Path) -> float:
    model = load_token_classifier(model_dir)
    split = read_train_split(data, "valid", n_labels=len(LABELS))
    return finetune.dev_eval(model, split, device=torch.device("cpu"), pad_id=0, max_tokens=128, max_sentences=64)["token_micro_f1"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_outputs_follow_the_contract(tmp_path, assets, method):
    model_src, data = assets
    res = finetune.run(make_recipe(tmp_path, assets, method=method))
    out = tmp_path / "out"
    assert not res.interrupted and res.step == res.total_steps > 0

    # model/: a plain HF token classifier (LoRA merged: no adapter files), id2label, bidirectional flag, tokenizer
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForTokenClassification"]
    assert [cfg["id2label"][str(i)] for i in range(len(LABELS))] == LABELS
    assert cfg["llamakit_bidirectional"] is True and cfg["is_causal"] is False
    assert not list((out / "model").glob("adapter_*"))
    assert (out / "model" / "tokenizer.json").read_bytes() == (model_src / "tokenizer.json").read_bytes()
    trained, base = read_weights(out / "model"), read_weights(model_src)
    moved = [k for k in trained if k.startswith("model.layers.") and not torch.equal(trained[k], base[k])]
    assert any("q_proj" in k for k in moved)  # LoRA deltas were merged into the base weights

    # train_summary.json: resolved recipe, seeds, threads, versions, timing, loss
    s = json.loads((out / "train_summary.json").read_text())
    assert s["recipe"]["method"] == method and s["seeds"]["torch"] == 0 and s["threads"] == 1
    assert s["deterministic"] is True and s["versions"]["torch"] == torch.__version__
    assert s["steps"] == res.step and s["tokens_per_s"] > 0 and s["wall_s"] > 0 and s["final_loss"] == res.final_loss
    assert [d["epoch"] for d in s["dev"]] == [1, 2]

    # dvclive: one loss row per step, and training lowered it
    loss = logged_steps(out)
    assert [st for st, _ in loss] == list(range(1, res.step + 1))
    first, last = [v for _, v in loss[:3]], [v for _, v in loss[-3:]]
    assert sum(last) < sum(first)
    assert json.loads((out / "dvclive" / "metrics.json").read_text())["train"]["loss"] == pytest.approx(res.final_loss)

    # the exported weights are exactly what was trained: reloading scores dev as the run did
    assert dev_accuracy(out / "model", data) == s["dev"][-1]["token_micro_f1"]


def test_two_runs_are_bit_identical(tmp_path, assets):
    a = finetune.run(make_recipe(tmp_path, assets, out="a", classifier_dropout=0.1))
    b = finetune.run(make_recipe(tmp_path, assets, out="b", classifier_dropout=0.1))
    assert_same_weights(tmp_path / "a" / "model", tmp_path / "b" / "model")
    assert (a.final_loss, a.dev) == (b.final_loss, b.dev)
    assert logged_steps(tmp_path / "a") == logged_steps(tmp_path / "b")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_interrupted_mid_epoch_then_resumed_is_bit_identical(tmp_path, assets, method):
    # dropout on, so the restored RNG state matters too
    extra = dict(method=method, classifier_dropout=0.1, lora={"r": 4, "alpha": 8, "dropout": 0.1})
    ref = finetune.run(make_recipe(tmp_path, assets, out="ref", **extra))
    steps_per_epoch = ref.total_steps // 2
    stop = steps_per_epoch + 2  # mid second epoch, two steps past a checkpoint (every 3) that the kill loses
    recipe = make_recipe(tmp_path, assets, out="cut", **extra)
    cut = finetune.run(recipe, overrides=[f"stop_after_steps={stop}"])
    assert cut.interrupted and cut.step == stop and not (tmp_path / "cut" / "model").exists()
    last_ckpt = (stop // 3) * 3
    assert list_checkpoints(tmp_path / "cut" / "checkpoints")[-1].name == f"step-{last_ckpt:08d}"

    resumed = finetune.run(recipe)
    assert resumed.resumed_from == last_ckpt and resumed.step == ref.step
    assert_same_weights(tmp_path / "ref" / "model", tmp_path / "cut" / "model")
    assert (resumed.final_loss, resumed.dev) == (ref.final_loss, ref.dev)
    assert logged_steps(tmp_path / "cut") == logged_steps(tmp_path / "ref")  # lost steps are not plotted twice


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "llamakit.cli", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, assets):
    keys = dict(epochs=8, checkpoint_every=10, eval_sentences=0, max_tokens_per_batch=96)
    recipe = make_recipe(tmp_path, assets, out="killed", **keys)
    proc = _cli("finetune", str(recipe))
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list_checkpoints(ckpts) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "model").exists()

    resumed = _cli("finetune", str(recipe))
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    summary = json.loads((tmp_path / "killed" / "train_summary.json").read_text())
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] % 10 == 0

    ref = finetune.run(make_recipe(tmp_path, assets, out="whole", **keys))
    assert summary["steps"] == ref.step
    assert_same_weights(tmp_path / "whole" / "model", tmp_path / "killed" / "model")
    assert summary["final_loss"] == ref.final_loss


def test_pinned_cpu_isa_runs_are_bit_identical_and_say_so(tmp_path, assets):
    """`cpu_isa: avx2` (the ci profile's) through the real command, twice: the pins reach torch
    before it starts, the summary records them, and the two runs agree byte for byte."""
    from llamakit import numerics

    if "avx2" not in numerics.describe()["flags"]:
        pytest.skip("this CPU has no AVX2")
    env = {k: v for k, v in os.environ.items() if k not in numerics.VARIABLES}
    for out in ("p1", "p2"):
        recipe = make_recipe(tmp_path, assets, out=out, cpu_isa="avx2", epochs=1, eval_sentences=0)
        proc = _cli("finetune", str(recipe), env=env)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    summary = json.loads((tmp_path / "p1" / "train_summary.json").read_text())
    assert summary["cpu"]["pins"] == numerics.PINS["avx2"] and summary["cpu"]["torch_capability"] == "AVX2"
    assert summary["recipe"]["cpu_isa"] == "avx2"
    assert_same_weights(tmp_path / "p1" / "model", tmp_path / "p2" / "model")
    assert summary["final_loss"] == json.loads((tmp_path / "p2" / "train_summary.json").read_text())["final_loss"]


def test_resume_refuses_another_recipe_and_never_starts_over(tmp_path, assets):
    recipe = make_recipe(tmp_path, assets)
    finetune.run(recipe, overrides=["stop_after_steps=4"])
    with pytest.raises(UsageError, match="different recipe"):
        finetune.run(recipe, overrides=["lr=5e-4"])
    fresh = finetune.run(recipe, overrides=["lr=5e-4", "resume=never", "epochs=1"])
    assert fresh.resumed_from is None and not fresh.interrupted


def test_causal_and_bidirectional_exports_differ_in_attention(tmp_path, assets):
    for flag in (True, False):
        finetune.run(make_recipe(tmp_path, assets, out=f"bi{flag}", bidirectional=flag, max_steps=2, eval_sentences=0))
        model = load_token_classifier(tmp_path / f"bi{flag}" / "model").eval()
        ids = torch.tensor([[5, 9, 17, 33, 65]])
        changed = ids.clone()
        changed[0, -1] = 66
        with torch.no_grad():
            a, b = model(input_ids=ids).logits[0, 0], model(input_ids=changed).logits[0, 0]
        assert (not torch.equal(a, b)) is flag  # only without the causal mask does token 0 see the last one


def test_document_packing_trains_on_rows_and_the_export_says_so(tmp_path, assets):
    runs = {}
    for budget in (0, 64):
        runs[budget] = finetune.run(make_recipe(tmp_path, assets, out=f"p{budget}", pack_documents=budget, epochs=1))
    cfg = json.loads((tmp_path / "p64" / "model" / "config.json").read_text())
    assert cfg["llamakit_pack_documents"] == 64  # evaluate packs the same way
    s = json.loads((tmp_path / "p64" / "train_summary.json").read_text())
    assert s["recipe"]["pack_documents"] == 64
    # rows of several sentences: fewer rows per epoch, every labelled word still trained on and scored once
    assert runs[64].dev[-1]["rows"] < runs[64].dev[-1]["sentences"] == runs[0].dev[-1]["sentences"] == 16
    assert "rows" not in runs[0].dev[-1]
    assert runs[64].dev[-1]["words"] == runs[0].dev[-1]["words"]
    assert runs[64].tokens == runs[0].tokens  # this data has no BOS: the same tokens, rearranged
    assert not torch.equal(read_weights(tmp_path / "p64" / "model")["score.weight"], read_weights(tmp_path / "p0" / "model")["score.weight"])


def test_bad_prepared_data_is_a_typed_error_naming_the_line(tmp_path, assets):
    model, data = assets
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    lines = (bad / "train.jsonl").read_text().splitlines()
    rec = json.loads(lines[6])
    rec["labels"][0] = len(LABELS)
    lines[6] = json.dumps(rec)
    (bad / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError) as exc:
        finetune.run(make_recipe(tmp_path, (model, bad)))
    assert exc.value.path.endswith("train.jsonl:7")

    rec["labels"][0], rec["input_ids"][0] = 0, 10_000
    lines[6] = json.dumps(rec)
    (bad / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match="vocabulary"):
        finetune.run(make_recipe(tmp_path, (model, bad)))

    # a well-formed but altered file: the manifest's sha256 catches it
    rec["input_ids"][0] = 11
    lines[6] = json.dumps(rec)
    (bad / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(CheckFailed, match="sha256"):
        finetune.run(make_recipe(tmp_path, (model, bad)))

    with pytest.raises(InputFileError, match="config.json"):
        finetune.run(make_recipe(tmp_path, (tmp_path, data)))


def test_cli_reports_bad_input_in_one_line_exit_2(tmp_path, assets):
    recipe = make_recipe(tmp_path, assets, lr_rate=1)
    proc = _cli("finetune", str(recipe))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and "unknown key 'lr_rate'" in err and "Traceback" not in err


def test_torchrun_two_processes_match_one(tmp_path, assets):
    # Tight token budget: some batches hold one sentence, so rank 1 sometimes has no rows at all.
    keys = dict(epochs=1, max_tokens_per_batch=40, eval_sentences=0, checkpoint_every=5)
    single = finetune.run(make_recipe(tmp_path, assets, out="single", **keys))
    recipe = make_recipe(tmp_path, assets, out="ddp", **keys)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "llamakit.cli", "finetune", str(recipe)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["steps"] == single.step
    assert summary["final_loss"] == pytest.approx(single.final_loss, rel=1e-4)
    assert_same_weights(tmp_path / "single" / "model", tmp_path / "ddp" / "model", atol=1e-5)
    # equal global batches: the per-step losses agree too
    for (s1, l1), (s2, l2) in zip(logged_steps(tmp_path / "single"), logged_steps(tmp_path / "ddp"), strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-4)
