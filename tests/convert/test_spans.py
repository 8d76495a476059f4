"""Meta → HF moves concatenation-only tensors file to file (copy_file_range); the bytes must not change."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest
from convert_helpers import write_meta_checkpoint

from llamakit.convert import convert
from llamakit.convert.meta import MetaSource
from llamakit.convert.pth import file_offsets, load_pth, tensor_bytes

pytestmark = pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="needs os.copy_file_range (Linux)")


def _digests(d) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.safetensors"))}


def test_spans_cover_exactly_the_concatenated_tensors(tmp_path):
    src, _, shards = write_meta_checkpoint(tmp_path / "meta", "gqa", 2)
    source = MetaSource(src)
    with_spans = set()
    for e in source.entries():
        spans = source.spans(e.name)
        d = source.plan.split_dims[e.name]
        if d == 1:
            assert spans is None, e.name
            continue
        assert spans is not None, e.name
        with_spans.add(e.name.split(".")[-2])
        got = b""
        for s in spans:
            with open(s.path, "rb") as fh:
                fh.seek(s.offset)
                got += fh.read(s.nbytes)
        pieces = [sh[e.name] for sh in shards] if d == 0 else [shards[0][e.name]]
        assert got == b"".join(bytes(tensor_bytes(p)) for p in pieces), e.name
    assert {"wv", "w1", "w3", "output", "attention_norm", "ffn_norm", "wq", "wk"} <= with_spans


def test_file_offsets_refuses_tensors_that_are_not_views_of_the_file(tmp_path):
    src, _, shards = write_meta_checkpoint(tmp_path / "meta", "mha", 2)
    f = src / "consolidated.00.pth"
    assert file_offsets(f, load_pth(f)) is not None
    assert file_offsets(f, {k: v.clone() for k, v in shards[0].items()}) is None  # ordinary memory
    assert file_offsets(f, load_pth(src / "consolidated.01.pth")) is None  # another file's mapping


def test_kernel_copy_fallback_and_slow_path_write_identical_files(tmp_path, monkeypatch):
    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 2)
    calls = []
    real = os.copy_file_range

    def counting(*args, **kw):
        calls.append(args[2])
        return real(*args, **kw)

    monkeypatch.setattr(os, "copy_file_range", counting)
    fast = convert(src, tmp_path / "fast", check=False, show_progress=False)
    assert calls and sum(calls) >= 0.25 * fast.bytes_written  # wv, w1, w3, output and the norms went through the kernel

    def refused(*_a, **_kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refused)
    fallback = convert(src, tmp_path / "fallback", check=True, show_progress=False)  # pread/write, then the logit check
    assert fallback.check["max_abs"] <= fallback.check["tol"]

    monkeypatch.setattr("llamakit.convert.meta.file_offsets", lambda *_a: None)
    slow = convert(src, tmp_path / "slow", check=False, show_progress=False)
    assert _digests(tmp_path / "fast")
    assert _digests(tmp_path / "fast") == _digests(tmp_path / "fallback") == _digests(tmp_path / "slow")
