"""CoNLL-2003 reader, validator and prepare: real files, real tokenizer, real outputs."""

from __future__ import annotations

import json
import sys

import pytest

from llamakit.data import conll, prepared
from llamakit.errors import CheckFailed, InputFileError, UsageError
from ner_fixtures import LABELS, conll_slice, prepared_slice, tiny_tokenizer  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def spec():
    return conll.load_spec()


# --- the real files ----------------------------------------------------------------


def test_real_splits_match_the_verified_counts(conll_dir, spec):
    for split in conll.SPLITS:
        path = conll_dir / spec.splits[split].file
        sentences, stats = conll.read_conll(path, spec)
        conll.check_split_counts(path, split, stats, spec)  # raises on any difference
        assert stats.sentences == len(sentences) == spec.splits[split].sentences
        assert sum(len(s.words) for s in sentences) == spec.splits[split].tokens
        docs = [s.doc for s in sentences]
        assert docs == sorted(docs) and docs[0] == 0 and docs[-1] == spec.splits[split].docs - 1
    assert spec.splits["test"].tokens == 46435 and spec.labels == LABELS


def test_counts_check_names_the_file_and_the_differences(conll_slice, spec):
    path = conll_slice / "test.txt"
    _, stats = conll.read_conll(path, spec)
    with pytest.raises(InputFileError) as err:
        conll.check_split_counts(path, "test", stats, spec)
    assert str(path) in err.value.one_line() and "sentences 40 != 3453" in err.value.message
    assert "--no-check-counts" in err.value.fix


# --- bad input: each error names file:line --------------------------------------------

GOOD = ["-DOCSTART- -X- -X- O", "", "Alice NNP B-NP B-PER", "Smith NNP I-NP I-PER", "visited VBD B-VP O", "Oslo NNP B-NP B-LOC", ""]

BAD_CASES = {
    # name: (lines, bad line number, words in the message)
    "three columns": (GOOD[:4] + ["visited VBD O"] + GOOD[5:], 5, "expected 4 columns"),
    "five columns": (GOOD[:3] + ["Alice NNP B-NP B-PER extra"] + GOOD[4:], 4, "found 5"),
    "unknown tag": (GOOD[:5] + ["Oslo NNP B-NP B-CITY"] + GOOD[6:], 6, "unknown tag 'B-CITY'"),
    "IOB1 I- at sentence start": (GOOD[:2] + ["Alice NNP B-NP I-PER"] + GOOD[3:], 3, "'I-PER' starts an entity"),
    "I- after O": (GOOD[:5] + ["Oslo NNP B-NP I-LOC"] + GOOD[6:], 6, "'I-LOC' starts an entity (after 'O')"),
    "I- after another type": (GOOD[:3] + ["Smith NNP I-NP I-ORG"] + GOOD[4:], 4, "after 'B-PER'"),
    "docstart inside a sentence": (GOOD[:4] + ["-DOCSTART- -X- -X- O"] + GOOD[4:], 5, "inside a sentence"),
    "only docstart": (["-DOCSTART- -X- -X- O", ""], 2, "no sentences"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_and_line(tmp_path, spec, case):
    lines, bad_line, words = BAD_CASES[case]
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError) as err:
        conll.read_conll(path, spec)
    assert err.value.line == bad_line
    assert err.value.one_line().startswith(f"{path}:{bad_line}: ")
    assert words in err.value.message
    assert err.value.exit_code == 2 and err.value.fix


def test_empty_file_and_bad_encoding(tmp_path, spec):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError, match="empty file") as err:
        conll.read_conll(empty, spec)
    assert err.value.one_line().startswith(f"{empty}:1: ")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"Alice NNP B-NP B-PER\nM\xfcller NNP I-NP I-PER\n")
    with pytest.raises(InputFileError, match="not UTF-8") as err:
        conll.read_conll(latin, spec)
    assert err.value.line == 2


def test_good_lines_parse(tmp_path, spec):
    path = tmp_path / "ok.txt"
    path.write_text("\n".join(GOOD + ["Bob NNP B-NP B-PER", "", "-DOCSTART- -X- -X- O", "", "Hi UH O O"]) + "\n")
    sentences, stats = conll.read_conll(path, spec)
    assert [(s.doc, s.line, s.words, s.tags) for s in sentences] == [
        (0, 3, ("Alice", "Smith", "visited", "Oslo"), ("B-PER", "I-PER", "O", "B-LOC")),
        (0, 8, ("Bob",), ("B-PER",)),
        (1, 12, ("Hi",), ("O",)),
    ]
    assert stats.docs == 2 and stats.tokens == 6 and stats.tags["B-PER"] == 2


def test_cli_bad_file_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from llamakit import cli

    data = tmp_path / "data"
    data.mkdir()
    lines, bad_line, _ = BAD_CASES["IOB1 I- at sentence start"]
    (data / "train.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(sys, "argv", ["llamakit", "prepare", "conll2003", "--data-dir", str(data), "--model", str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data / 'train.txt'}:{bad_line}: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --- prepare -------------------------------------------------------------------------


def test_prepare_round_trips_labels_and_words(prepared_slice, conll_slice, tiny_tokenizer, spec):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer)
    labels = prepared.read_labels(prepared_slice)
    assert labels == LABELS
    for split in conll.SPLITS:
        gold, _ = conll.read_conll(conll_slice / f"{split}.txt", spec)
        records = prepared.read_prepared(prepared_slice, split).records
        assert [r["id"] for r in records] == list(range(len(gold)))
        for sent, rec in zip(gold, records):
            ids, lab = rec["input_ids"], rec["labels"]
            assert len(ids) == len(lab) and rec["doc"] == sent.doc and rec["n_words"] == len(sent.words)
            assert ids[0] == tok.bos_token_id and lab[0] == -100
            starts = [i for i, x in enumerate(lab) if x != -100]
            assert [labels[lab[i]] for i in starts] == list(sent.tags)  # first-sub-token labels = gold tags
            # each labelled position starts exactly one word: decoding its span gives the word back
            spans = zip(starts, [*starts[1:], len(ids)])
            assert [tok.decode(ids[a:b]).strip() for a, b in spans] == list(sent.words)


def test_manifest_records_hashes_counts_and_tokenizer(prepared_slice, tiny_tokenizer):
    import hashlib

    m = prepared.verify_files(prepared_slice)
    for name, sha in m["files"].items():
        assert hashlib.sha256((prepared_slice / name).read_bytes()).hexdigest() == sha
    assert set(m["files"]) == {"labels.json", "train.jsonl", "valid.jsonl", "test.jsonl"}
    assert m["tokenizer"]["sha256"] == hashlib.sha256((tiny_tokenizer / "tokenizer.json").read_bytes()).hexdigest()
    assert m["tokenizer"]["word_prefix"] == "space" and m["tokenizer"]["bos_token"] == "<|im_start|>"
    assert m["splits"]["test"]["sentences"] == 40 and m["max_length"] == 1024 and m["limit_train"] is None
    assert m["source"]["test"]["known"] is False  # a slice is not the verified file
    # no words stored: every record is exactly these integer fields
    for split in conll.SPLITS:
        for line in (prepared_slice / f"{split}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            assert list(rec) == ["id", "doc", "input_ids", "labels", "n_words"]
            assert all(type(x) is int for x in [rec["id"], rec["doc"], rec["n_words"], *rec["input_ids"], *rec["labels"]])


def test_prepare_is_deterministic_and_limit_train_keeps_the_first_sentences(conll_slice, tiny_tokenizer, prepared_slice, tmp_path):
    again = conll.prepare(conll_slice, tiny_tokenizer, tmp_path / "again", max_length=1024, check_counts=False, show_progress=False)
    for name in ["manifest.json", "train.jsonl", "test.jsonl"]:
        assert (tmp_path / "again" / name).read_bytes() == (prepared_slice / name).read_bytes()
    assert "60 sentences" in again.summary_line()
    conll.prepare(conll_slice, tiny_tokenizer, tmp_path / "lim", max_length=1024, limit_train=7, check_counts=False, show_progress=False)
    full = (prepared_slice / "train.jsonl").read_text().splitlines()
    assert (tmp_path / "lim" / "train.jsonl").read_text().splitlines() == full[:7]
    assert prepared.read_manifest(tmp_path / "lim")["limit_train"] == 7


def test_too_long_sentence_is_an_error_not_a_truncation(conll_slice, tiny_tokenizer, tmp_path):
    with pytest.raises(InputFileError, match="more than max_length 8") as err:
        conll.prepare(conll_slice, tiny_tokenizer, tmp_path / "out", max_length=8, check_counts=False, show_progress=False)
    assert err.value.file == str(conll_slice / "train.txt") and err.value.line > 0
    assert err.value.fix.startswith("pass --max-length ")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_prepare_with_check_counts_rejects_a_slice(conll_slice, tiny_tokenizer, tmp_path):
    with pytest.raises(InputFileError, match="train counts differ"):
        conll.prepare(conll_slice, tiny_tokenizer, tmp_path / "out", show_progress=False)


def test_out_dir_is_replaced_only_when_it_is_ours(conll_slice, tiny_tokenizer, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        conll.prepare(conll_slice, tiny_tokenizer, foreign, max_length=1024, check_counts=False, show_progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    ours = tmp_path / "ours"
    for limit in (5, 9):  # the second run replaces the first
        conll.prepare(conll_slice, tiny_tokenizer, ours, max_length=1024, limit_train=limit, check_counts=False, show_progress=False)
    assert len((ours / "train.jsonl").read_text().splitlines()) == 9
    before = {p.name: p.read_bytes() for p in ours.iterdir()}
    with pytest.raises(InputFileError):  # a failed run leaves the previous output as it was
        conll.prepare(conll_slice, tiny_tokenizer, ours, max_length=8, check_counts=False, show_progress=False)
    assert {p.name: p.read_bytes() for p in ours.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "ours"]  # no temp or old dirs left


def test_tampered_prepared_file_fails_the_check(prepared_slice, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared_slice, copy)
    lines = (copy / "test.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["labels"][1] = (rec["labels"][1] + 1) % len(LABELS)
    (copy / "test.jsonl").write_text("\n".join([json.dumps(rec, separators=(",", ":")), *lines[1:]]) + "\n")
    assert prepared.read_prepared(copy, "valid").records  # untouched splits still load
    with pytest.raises(CheckFailed, match="differs from manifest.json"):
        prepared.read_prepared(copy, "test").records
    with pytest.raises(InputFileError, match="no split 'dev'"):
        prepared.read_prepared(copy, "dev").records

