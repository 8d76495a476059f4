"""`llamakit fetch` bad inputs, one row each (tests/bad_inputs.py: exit code, one line, nothing at --out).

Rows run with the default retry settings (no fast_env): an unreachable host must fail in seconds
because it is not retried, not because the test shortened the backoff."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: bad_inputs

from _release import meta_files  # noqa: E402
from _servers import MetaRelease  # noqa: E402
from bad_inputs import Row, run_row  # noqa: E402

from llamakit.errors import NetworkError  # noqa: E402

REMOTE = NetworkError.exit_code  # README: 3, remote/network failure (retry later)


def _file(tmp: Path) -> None:
    (tmp / "afile").write_text("not a directory")


ROWS = [
    # the cases issue 18 found
    Row("connection-refused", ["fetch", "tiny-llama", "--meta-url", "http://127.0.0.1:9/*?Policy=a", "--out", "{tmp}/o"],
        REMOTE, "connection refused by 127.0.0.1:9", "o", timeout=60),
    Row("host-does-not-resolve", ["fetch", "tiny-llama", "--meta-url", "http://llamakit-test.invalid/*?Policy=a", "--out", "{tmp}/o"],
        REMOTE, "host llamakit-test.invalid does not resolve", "o", timeout=60),
    Row("meta-url-not-http", ["fetch", "tiny-llama", "--meta-url", "ftp://example.com/*", "--out", "{tmp}/o"],
        2, "must be an http(s) URL", "o"),
    Row("meta-url-without-star", ["fetch", "tiny-llama", "--meta-url", "https://example.com/x?Policy=a", "--out", "{tmp}/o"],
        2, "exactly one '*'", "o"),
    Row("meta-url-missing", ["fetch", "tiny-llama", "--source", "meta-url", "--out", "{tmp}/o"],
        2, "needs its presigned URL", "o"),
    Row("out-under-a-file", ["fetch", "tiny-llama", "--meta-url", "META_URL", "--out", "{tmp}/afile/o"],
        4, "afile/o: cannot write or read here", "afile/o", setup=_file),
    Row("out-read-only", ["fetch", "tiny-llama", "--meta-url", "META_URL", "--out", "{tmp}/ro/o"],
        4, "permission denied", "ro/o", readonly="ro"),
    # the net, wider
    Row("unknown-model", ["fetch", "tiny-lama", "--out", "{tmp}/o"], 2, "did you mean tiny-llama", "o"),
    Row("format-the-source-lacks", ["fetch", "tiny-llama", "--meta-url", "META_URL", "--format", "hf", "--out", "{tmp}/o"],
        2, "serve the meta format", "o"),
]


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input(row, tmp_path, manifests, meta_server):
    meta_server.add("r", MetaRelease(meta_files(1)))
    run_row(replace(row, argv=[meta_server.url("r") if a == "META_URL" else a for a in row.argv]), tmp_path)


def test_a_404_from_meta_names_the_file_not_a_class(tmp_path, manifests, meta_server):
    files = meta_files(1)
    del files["tiny-llama/checklist.chk"]  # the server has no such key, and says so (not CloudFront's usual 403)
    meta_server.add("r", MetaRelease(files, missing_status=404))
    run_row(Row("meta-404", ["fetch", "tiny-llama", "--meta-url", meta_server.url("r"), "--out", "{tmp}/o"],
                REMOTE, "the server has no tiny-llama/checklist.chk (HTTP 404)", "o"), tmp_path)
