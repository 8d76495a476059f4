"""evaluate.run on a tiny random classifier over a prepared slice of the real data."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import pytest

from llamakit.data import conll, prepared
from llamakit.errors import InputFileError
from llamakit.train import evaluate, metrics
from ner_fixtures import (  # noqa: F401
    LABELS,
    build_classifier,
    build_tokenizer,
    conll_slice,
    prepared_slice,
    tiny_classifier,
    tiny_tokenizer,
    words_of,
)

OUTPUTS = {"metrics.json", "predictions.txt", "confusion.json", "confusion.csv"}


def _sentences(text: str) -> list[list[str]]:
    """predictions.txt → tags per sentence (a blank line ends each sentence)."""
    assert text.endswith("\n\n")
    return [block.split("\n") for block in text[:-2].split("\n\n")]


@pytest.fixture(scope="module")
def evaluated(tiny_classifier, prepared_slice, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "test"
    result = evaluate.run(tiny_classifier, prepared_slice, out, split="test", show_progress=False)
    return result, out


def test_writes_all_outputs_with_one_tag_per_word(evaluated, prepared_slice, conll_slice):
    result, out = evaluated
    assert {p.name for p in out.iterdir()} == OUTPUTS
    gold_sents, _ = conll.read_conll(conll_slice / "test.txt", conll.load_spec())
    preds = _sentences((out / "predictions.txt").read_text())
    assert [len(p) for p in preds] == [len(s.words) for s in gold_sents]  # one tag per word, every sentence
    assert {t for p in preds for t in p} <= set(LABELS)  # tags only: no words, nothing else
    assert len({t for p in preds for t in p}) > 1  # the scaled random head is not constant
    m = json.loads((out / "metrics.json").read_text())
    n_words = sum(len(s.words) for s in gold_sents)
    assert (m["split"], m["n_sentences"], m["n_words"]) == ("test", 40, n_words) == (result.split, result.n_sentences, result.n_words)
    assert list(m["token"]) == LABELS + list(metrics.AVERAGES)
    assert list(m["entity"]) == ["LOC", "MISC", "ORG", "PER", *metrics.AVERAGES]
    assert all(set(v) == {"precision", "recall", "f1", "support"} for v in [*m["token"].values(), *m["entity"].values()])
    assert set(m["headline"]) == {"token_micro_f1", "token_macro_f1", "token_weighted_f1", "entity_f1"}
    assert result.report_text.splitlines()[0].split() == ["precision", "recall", "f1-score", "support"]


def test_outputs_agree_with_each_other_and_with_independent_scoring(evaluated, conll_slice):
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2
    from sklearn.metrics import classification_report, confusion_matrix

    _, out = evaluated
    gold = [list(s.tags) for s in conll.read_conll(conll_slice / "test.txt", conll.load_spec())[0]]
    pred = _sentences((out / "predictions.txt").read_text())
    flat_g, flat_p = [t for s in gold for t in s], [t for s in pred for t in s]
    m = json.loads((out / "metrics.json").read_text())
    ref = classification_report(flat_g, flat_p, labels=LABELS, output_dict=True, zero_division=0)
    for tag in LABELS:
        assert m["token"][tag]["f1"] == pytest.approx(ref[tag]["f1-score"]) and m["token"][tag]["support"] == ref[tag]["support"]
    assert m["headline"]["token_micro_f1"] == pytest.approx(ref["accuracy"])
    assert m["headline"]["entity_f1"] == pytest.approx(f1_score(gold, pred, mode="strict", scheme=IOB2))
    cm = json.loads((out / "confusion.json").read_text())
    assert cm["labels"] == LABELS and cm["matrix"] == confusion_matrix(flat_g, flat_p, labels=LABELS).tolist()
    with open(out / "confusion.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["actual", "predicted"] and rows[1:] == [list(x) for x in zip(flat_g, flat_p)]


def test_batching_does_not_change_predictions_and_reruns_are_identical(evaluated, tiny_classifier, prepared_slice, tmp_path):
    _, out = evaluated
    evaluate.run(tiny_classifier, prepared_slice, tmp_path / "one", batch_tokens=1, show_progress=False)  # one sentence per batch
    for name in OUTPUTS:
        assert (tmp_path / "one" / name).read_bytes() == (out / name).read_bytes(), name


def test_bidirectional_checkpoint_and_label_order(tiny_tokenizer, prepared_slice, tmp_path):
    """A bidirectional model is evaluated as one (padding-proof); a checkpoint whose head lists the labels in another
    order (same weights, rows permuted) gives the same predictions."""
    import torch
    from transformers import AutoModelForTokenClassification

    from llamakit.train.modeling import load_token_classifier

    bi = build_classifier(tiny_tokenizer, tmp_path / "bi", bidirectional=True, seed=1)
    r = evaluate.run(bi, prepared_slice, tmp_path / "out_bi", show_progress=False)
    assert json.loads((tmp_path / "out_bi" / "metrics.json").read_text())["provenance"]["bidirectional"] is True
    assert r.n_words > 0
    # padding is masked on both sides: one sentence per batch gives the same predictions
    evaluate.run(bi, prepared_slice, tmp_path / "out_bi1", batch_tokens=1, show_progress=False)
    assert (tmp_path / "out_bi1" / "predictions.txt").read_bytes() == (tmp_path / "out_bi" / "predictions.txt").read_bytes()

    perm = list(reversed(range(len(LABELS))))
    model = AutoModelForTokenClassification.from_pretrained(bi)
    with torch.no_grad():
        model.score.weight.copy_(model.score.weight[perm])
    model.config.id2label = {i: LABELS[j] for i, j in enumerate(perm)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(tmp_path / "perm")
    for f in tiny_tokenizer.iterdir():
        shutil.copy(f, tmp_path / "perm" / f.name)
    assert load_token_classifier(tmp_path / "perm").config.llamakit_bidirectional is True
    evaluate.run(tmp_path / "perm", prepared_slice, tmp_path / "out_perm", show_progress=False)
    assert (tmp_path / "out_perm" / "predictions.txt").read_text() == (tmp_path / "out_bi" / "predictions.txt").read_text()


def test_packed_document_context_keeps_each_sentence_its_own(tiny_classifier, prepared_slice):
    """Under causal attention the first sentence of a packed row sees exactly what it sees alone, so its
    predictions cannot change; the later ones see their document's earlier sentences, and somewhere do."""
    from llamakit.train import packing
    from llamakit.train.modeling import load_token_classifier

    records = prepared.read_prepared(prepared_slice, "test").records
    tok = prepared.read_manifest(prepared_slice)["tokenizer"]
    model = load_token_classifier(tiny_classifier).eval()
    assert model.config.llamakit_bidirectional is False
    alone = evaluate.predict(model, records, pad_id=tok["pad_token_id"])
    packed = evaluate.predict(model, records, pad_id=tok["pad_token_id"], pack_documents=64, bos_id=tok["bos_token_id"])
    rows = packing.plan_rows([r["doc"] for r in records], [r["input_ids"] for r in records], budget=64, bos_id=tok["bos_token_id"])
    firsts, later = [r[0] for r in rows], [i for r in rows for i in r[1:]]
    assert later and len({r["doc"] for r in records}) > 1
    assert [len(p) for p in packed] == [r["n_words"] for r in records]
    assert all(packed[i] == alone[i] for i in firsts)
    assert any(packed[i] != alone[i] for i in later)
    # viterbi decodes each sentence of a row on its own: its output is valid IOB2 per sentence
    vit = evaluate.predict(model, records, pad_id=tok["pad_token_id"], decode="viterbi", pack_documents=64, bos_id=tok["bos_token_id"])
    for sent in vit:
        tags = [LABELS[i] for i in sent]
        assert all(not t.startswith("I-") or (p != "O" and p[2:] == t[2:]) for p, t in zip(["O"] + tags, tags))


def test_evaluate_packs_as_the_model_was_fine_tuned(tiny_classifier, prepared_slice, tmp_path, evaluated):
    _, unpacked = evaluated
    model = tmp_path / "packed-model"
    shutil.copytree(tiny_classifier, model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "llamakit_pack_documents": 64}))
    evaluate.run(model, prepared_slice, tmp_path / "p", show_progress=False)
    m = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert m["provenance"]["context"] == "document runs packed into rows of <= 64 sub-tokens"
    assert (tmp_path / "p" / "predictions.txt").read_text() != (unpacked / "predictions.txt").read_text()
    evaluate.run(model, prepared_slice, tmp_path / "u", pack_documents=0, show_progress=False)  # --pack-documents 0
    assert (tmp_path / "u" / "predictions.txt").read_text() == (unpacked / "predictions.txt").read_text()
    assert json.loads((tmp_path / "u" / "metrics.json").read_text())["provenance"]["context"] == "one sentence per row"


def test_refuses_a_model_with_another_tokenizer_or_label_set(conll_slice, tiny_tokenizer, prepared_slice, tmp_path):
    other_tok = build_tokenizer(words_of(conll_slice), tmp_path / "tok2", vocab_size=380)
    other = build_classifier(other_tok, tmp_path / "other")
    with pytest.raises(InputFileError, match="not the tokenizer the data was prepared with") as err:
        evaluate.run(other, prepared_slice, tmp_path / "o1", show_progress=False)
    assert err.value.file == str(other / "tokenizer.json")

    wrong = build_classifier(tiny_tokenizer, tmp_path / "wrong", labels=["O", "B-X", "I-X"])
    with pytest.raises(InputFileError, match="are not the prepared data's labels"):
        evaluate.run(wrong, prepared_slice, tmp_path / "o2", show_progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_cli_evaluate(tiny_classifier, prepared_slice, tmp_path, monkeypatch, capsys):
    from llamakit import cli

    argv = ["llamakit", "evaluate", "--model", str(tiny_classifier), "--data", str(prepared_slice), "--out", str(tmp_path / "e"), "--split", "valid"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "valid: 25 sentences" in out and "micro avg" in out
    monkeypatch.setattr(sys, "argv", argv[:-1] + ["dev"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2 and "no split 'dev'" in capsys.readouterr().err


@pytest.mark.slow
def test_full_test_split_gets_one_prediction_per_word(conll_dir, tiny_tokenizer, tiny_classifier, tmp_path):
    """The whole pipeline on the real files: counts checked, 3,453 sentences, 46,435 predictions."""
    manifest = conll.prepare(conll_dir, tiny_tokenizer, tmp_path / "prep", max_length=4096, show_progress=False).to_json()
    assert all(src["known"] for src in manifest["source"].values())  # the verified files, by sha256
    result = evaluate.run(tiny_classifier, tmp_path / "prep", tmp_path / "eval", batch_tokens=16384, show_progress=False)
    assert (result.n_sentences, result.n_words) == (3453, 46435)
    preds = _sentences((tmp_path / "eval" / "predictions.txt").read_text())
    assert len(preds) == 3453 and sum(map(len, preds)) == 46435
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["token"]["micro avg"]["support"] == 46435 and m["token"]["O"]["support"] == 38323
