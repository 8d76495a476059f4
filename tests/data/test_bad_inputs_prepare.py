"""`llamakit prepare conll2003` bad inputs, one row each (tests/bad_inputs.py: exit code, one line, nothing at --out)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bad_inputs import Row, run_row
from ner_fixtures import conll_slice, tiny_tokenizer  # noqa: F401


def _data(src: Path, *, bom: bool = False, file_at: str | None = None):
    def setup(tmp: Path) -> None:
        shutil.copytree(src, tmp / "data")
        if bom:  # what Notepad and some exporters write at the start of a UTF-8 file
            f = tmp / "data" / "train.txt"
            f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
        if file_at:
            (tmp / file_at).write_text("not a directory")
    return setup


IDS = ["bom-without-count-check", "bom-with-count-check", "out-under-a-file", "out-read-only", "disk-full",
       "counts-differ", "no-such-data-dir"]


def _rows(data: Path, model: Path) -> list[Row]:
    base = ["prepare", "conll2003", "--data-dir", "{tmp}/data", "--model", str(model), "--max-length", "1024"]
    return [
        # issue 18: a BOM turned -DOCSTART- into a training sentence (with --no-check-counts), or hid behind count diffs
        Row("bom-without-count-check", [*base, "--out", "{tmp}/out", "--no-check-counts"], 2,
            "train.txt:1: starts with a UTF-8 byte-order mark", "out", setup=_data(data, bom=True)),
        Row("bom-with-count-check", [*base, "--out", "{tmp}/out"], 2, "byte-order mark", "out", setup=_data(data, bom=True)),
        Row("out-under-a-file", [*base, "--out", "{tmp}/afile/out", "--no-check-counts"], 4, "afile/out: cannot write",
            "afile/out", setup=_data(data, file_at="afile")),
        Row("out-read-only", [*base, "--out", "{tmp}/ro/out", "--no-check-counts"], 4, "ro/out: cannot write or read here: permission denied",
            "ro/out", setup=_data(data), readonly="ro"),
        Row("disk-full", [*base, "--out", "{tmp}/out", "--no-check-counts"], 4, "out: file too large for the destination", "out",
            setup=_data(data), fsize=8_000),
        # the net, wider
        Row("counts-differ", [*base, "--out", "{tmp}/out"], 2, "counts differ from the verified counts", "out", setup=_data(data)),
        Row("no-such-data-dir", [*base, "--out", "{tmp}/out"], 2, "cannot read", "out"),
    ]


@pytest.mark.parametrize("rid", IDS)
def test_bad_input(rid, tmp_path, conll_slice, tiny_tokenizer):  # noqa: F811
    rows = {r.id: r for r in _rows(conll_slice, tiny_tokenizer)}
    assert sorted(rows) == sorted(IDS)
    run_row(rows[rid], tmp_path)
