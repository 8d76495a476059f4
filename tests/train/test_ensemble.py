"""Ensembles: member recipes, training members into one published model, and evaluate's averaging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llamakit import run_record
from llamakit.data import prepared
from llamakit.errors import InputFileError, ManifestError, UsageError
from llamakit.train import decode, ensemble, evaluate, finetune
from llamakit.train.modeling import load_token_classifier
from llamakit.train.recipe import load_recipe
from ner_fixtures import (  # noqa: F401
    conll_slice,
    prepared_slice,
    tiny_classifier,
    tiny_tokenizer,
)
from tests.train._fixtures import read_weights, write_recipe

MEMBERS = [{}, {"pack_documents": 64, "seed": 1}]


def _recipe(tmp: Path, model: Path, data: Path, name: str, **keys) -> Path:
    base = dict(model=str(model), data=str(data), out=str(tmp / name), threads=1, lr=1e-3, epochs=1,
                max_tokens_per_batch=256, checkpoint_every=50, eval_sentences=8, warmup_ratio=0.1)
    base.update(keys)
    return write_recipe(tmp / f"{name}.yaml", **base)


def test_members_are_the_recipe_with_their_keys_on_top(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model="m", data="d", out="o", lr=1e-4, lora={"r": 8},
                        ensemble=[{}, {"pack_documents": 256, "lora": {"alpha": 4}}])
    recipe = load_recipe(path)
    one, two = recipe.members()
    assert (one.out, two.out) == (str(Path("o/members/1")), str(Path("o/members/2")))
    assert (one.pack_documents, two.pack_documents, two.lr, two.lora.r, two.lora.alpha) == (0, 256, 1e-4, 8, 4)
    assert one.ensemble == two.ensemble == []
    # a member is an ordinary run: its checkpoints are those of the same recipe trained alone
    alone = load_recipe(write_recipe(tmp_path / "a.yaml", model="m", data="d", out="x", lr=1e-4, lora={"r": 8, "alpha": 4},
                                     pack_documents=256))
    assert two.schedule_fingerprint() == alone.schedule_fingerprint() != one.schedule_fingerprint()


@pytest.mark.parametrize("member, error, words", [
    ({"out": "elsewhere"}, UsageError, "member 1 sets out"),
    ({"lrr": 1e-4}, ManifestError, "ensemble member 1: unknown key 'lrr'"),
    ({"epochs": 0}, ManifestError, "ensemble member 1: 'epochs'"),
])
def test_a_bad_member_fails_at_load_naming_the_member_and_the_file(tmp_path, member, error, words):
    path = write_recipe(tmp_path / "r.yaml", model="m", data="d", out="o", ensemble=[member])
    with pytest.raises(error) as info:
        load_recipe(path)
    assert words in info.value.one_line() and info.value.path == str(path)
    if "lrr" in member:
        assert info.value.fix == "did you mean 'lr'?"


@pytest.fixture(scope="module")
def trained(tiny_classifier, prepared_slice, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ens")
    res = finetune.run(_recipe(tmp, tiny_classifier, prepared_slice, "ens", ensemble=MEMBERS))
    return tmp, res


def test_members_train_in_turn_and_publish_one_self_contained_model(trained, tiny_classifier, prepared_slice):
    tmp, res = trained
    out = tmp / "ens"
    doc = json.loads((out / "model" / ensemble.MANIFEST).read_text())
    assert [m["dir"] for m in doc["members"]] == ["1", "2"]
    assert [m["pack_documents"] for m in doc["members"]] == [0, 64]
    assert not (out / "model" / "config.json").exists()
    for k in ("1", "2"):
        member_files = sorted(p.name for p in (out / "members" / k / "model").iterdir())
        assert sorted(p.name for p in (out / "model" / k).iterdir()) == member_files
        # the published copy is the member's export itself (hard links), not a second 0.5 GB per member
        assert all(os.path.samefile(out / "model" / k / f, out / "members" / k / "model" / f) for f in member_files)
    summaries = [json.loads((out / "members" / k / "train_summary.json").read_text()) for k in ("1", "2")]
    top = json.loads((out / "train_summary.json").read_text())
    assert top["ensemble"] == 2 and top["members"] == summaries
    assert top["steps"] == res.step == sum(s["steps"] for s in summaries) > 0
    assert top["tokens"] == sum(s["tokens"] for s in summaries)
    assert top["recipe"]["ensemble"] == MEMBERS
    # member 2 is the recipe with its keys on top, trained alone: the same weights, bit for bit
    alone = finetune.run(_recipe(tmp, tiny_classifier, prepared_slice, "alone", pack_documents=64, seed=1))
    wa, wb = read_weights(out / "model" / "2"), read_weights(alone.out / "model")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(read_weights(out / "model" / "1")["score.weight"], wa["score.weight"])


def test_evaluate_decodes_the_mean_of_the_members_probabilities(trained, prepared_slice, tmp_path):
    tmp, _ = trained
    model_dir = tmp / "ens" / "model"
    result = evaluate.run(model_dir, prepared_slice, tmp_path / "eval", split="test", decode="viterbi", show_progress=False)
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    ens = m["provenance"]["ensemble"]
    assert [x["dir"] for x in ens["members"]] == ["1", "2"]
    assert [x["context"] for x in ens["members"]] == ["one sentence per row", "document runs packed into rows of <= 64 sub-tokens"]

    # independently: each member's per-word distribution in its own context, averaged, decoded
    records = prepared.read_prepared(prepared_slice, "test").records
    labels = prepared.read_labels(prepared_slice)
    tok = prepared.read_manifest(prepared_slice)["tokenizer"]
    probs = []
    for k, pack in (("1", 0), ("2", 64)):
        model = load_token_classifier(model_dir / k).eval()
        assert [model.config.id2label[i] for i in range(len(labels))] == labels
        lp = evaluate.word_logprobs(model, records, pad_id=tok["pad_token_id"], pack_documents=pack, bos_id=tok["bos_token_id"])
        probs.append([np.exp(x.astype(np.float64)) for x in lp])
    start_ok, follows_ok = decode.iob2_constraints(labels)
    want = [[labels[i] for i in decode.viterbi(np.log((a + b) / 2), start_ok, follows_ok)] for a, b in zip(*probs)]
    got = [block.split("\n") for block in (tmp_path / "eval" / "predictions.txt").read_text()[:-2].split("\n\n")]
    assert got == want
    assert result.n_words == sum(len(s) for s in want)


def test_report_lays_the_members_loss_curves_end_to_end(trained):
    tmp, _ = trained
    run = tmp / "ens"
    curve = run_record.read_run(run).loss
    first = run_record.dvclive_loss(run / "members" / "1")
    second = run_record.dvclive_loss(run / "members" / "2")
    assert len(curve) == len(first) + len(second) and len(first) > 1 and len(second) > 1
    steps = [s for s, _ in curve]
    assert steps == sorted(set(steps))  # one x axis, strictly increasing
    assert curve[len(first)] == (first[-1][0] + second[0][0], second[0][1])


def test_an_ensemble_manifest_pointing_outside_is_refused(tmp_path, tiny_classifier):
    d = tmp_path / "ens"
    d.mkdir()
    (d / ensemble.MANIFEST).write_text(json.dumps({"members": [{"dir": str(Path("..") / tiny_classifier.name)}]}))
    with pytest.raises(InputFileError, match="not a model directory inside the ensemble"):
        ensemble.member_dirs(d)
    (d / ensemble.MANIFEST).write_text("{not json")
    with pytest.raises(InputFileError, match="not a readable ensemble manifest"):
        ensemble.member_dirs(d)


def test_report_provenance_names_each_member(trained):
    tmp, _ = trained
    train = run_record.read_run(tmp / "ens").train
    assert train["ensemble"] == 2
    assert [(m["member"], m["overrides"]) for m in train["members"]] == [(1, MEMBERS[0]), (2, MEMBERS[1])]
    assert train["steps"] == sum(m["steps"] for m in train["members"])
    assert all(m["train_s"] > 0 and m["fingerprint"] for m in train["members"])


def test_several_models_given_at_once_score_as_the_published_ensemble(trained, prepared_slice, tiny_classifier, tmp_path):
    """Members picked on dev from separate runs (`--model A --model B`) give what the recipe's ensemble gives."""
    tmp, _ = trained
    members = tmp / "ens" / "members"
    published = evaluate.run(tmp / "ens" / "model", prepared_slice, tmp_path / "pub", split="test", decode="viterbi", show_progress=False)
    adhoc = evaluate.run([members / "1" / "model", members / "2" / "model"], prepared_slice, tmp_path / "adhoc", split="test",
                         decode="viterbi", show_progress=False)
    assert (tmp_path / "adhoc" / "predictions.txt").read_bytes() == (tmp_path / "pub" / "predictions.txt").read_bytes()
    assert adhoc.headline == published.headline
    prov = json.loads((tmp_path / "adhoc" / "metrics.json").read_text())["provenance"]
    assert prov["model_config_sha256"] is None
    assert [x["dir"] for x in prov["ensemble"]["members"]] == [str(members / "1" / "model"), str(members / "2" / "model")]
    # an ensemble directory given beside a plain model contributes each of its members
    mixed = evaluate.run([tmp / "ens" / "model", tiny_classifier], prepared_slice, tmp_path / "mixed", split="test",
                         show_progress=False)
    assert len(json.loads((tmp_path / "mixed" / "metrics.json").read_text())["provenance"]["ensemble"]["members"]) == 3
    assert mixed.n_words == published.n_words


def test_the_same_model_twice_is_refused(trained, prepared_slice, tmp_path):
    tmp, _ = trained
    one = tmp / "ens" / "members" / "1" / "model"
    with pytest.raises(UsageError, match="given twice"):
        evaluate.run([one, one], prepared_slice, tmp_path / "e", show_progress=False)
    # the published ensemble already holds member 1 (hard links to the same files)
    with pytest.raises(UsageError, match="given twice"):
        evaluate.run([tmp / "ens" / "model", one], prepared_slice, tmp_path / "e", show_progress=False)
    assert not (tmp_path / "e").exists()
    # at the CLI edge: one line, exit 2 (bad usage), nothing written
    proc = subprocess.run([sys.executable, "-m", "llamakit", "evaluate", "--model", str(one), "--model", str(one),
                           "--data", str(prepared_slice), "--out", str(tmp_path / "e")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "given twice" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2 and not (tmp_path / "e").exists()
