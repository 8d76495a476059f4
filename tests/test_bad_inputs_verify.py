"""`llamakit verify` bad inputs, one row each (tests/bad_inputs.py: exit code, one line, the directory untouched)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs import Row, run_row


def _release(checklist: bytes):
    def setup(tmp: Path) -> None:
        d = tmp / "rel"
        d.mkdir()
        (d / "params.json").write_text('{"dim": 64}')
        (d / "checklist.chk").write_bytes(checklist)
    return setup


ROWS = [
    # issue 18: a checklist that is not one is named with what it holds, not called absent
    Row("checklist-is-an-html-page", ["verify", "{tmp}/rel"], 2, "checklist.chk: not an md5 checklist: line 1 is an HTML page", "rel",
        setup=_release(b"<html><head><title>403 Forbidden</title></head><body>AccessDenied</body></html>\n")),
    Row("checklist-is-empty", ["verify", "{tmp}/rel"], 2, "checklist.chk: not an md5 checklist: it is empty", "rel",
        setup=_release(b"")),
    Row("checklist-is-binary", ["verify", "{tmp}/rel"], 2, "binary content", "rel", setup=_release(b"\xff\xfe\x00\x01" * 8)),
    # the net, wider
    Row("no-lock-no-checklist", ["verify", "{tmp}/rel"], 2, "nothing to verify against", "rel",
        setup=lambda t: (t / "rel").mkdir() or (t / "rel" / "params.json").write_text("{}")),
    Row("not-a-directory", ["verify", "{tmp}/nope"], 2, "not a directory", "nope"),
    Row("lock-file-is-not-json", ["verify", "{tmp}/rel", "--lock", "{tmp}/rel/params.json.lock.json"], 2, "lock.json", "rel",
        setup=lambda t: _release(b"")(t) or (t / "rel" / "params.json.lock.json").write_text("[1, 2")),
]


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input(row, tmp_path):
    run_row(row, tmp_path)
