"""Meta → HF moves every tensor that needs no cast file to file (copy_file_range) as row ranges: the merge and the
rotary permutation only move whole rows. The bytes must be exactly the tensor path's."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest
from convert_helpers import write_meta_checkpoint

from llamakit.convert import convert
from llamakit.convert.meta import MetaSource
from llamakit.convert.pth import tensor_bytes

pytestmark = pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="needs os.copy_file_range (Linux)")


def _digests(d) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.safetensors"))}


@pytest.mark.parametrize("torch_free", [False, True])
@pytest.mark.parametrize("shape,mp", [("gqa", 2), ("mha", 4), ("tied", 2), ("mha", 1)])
def test_spans_hold_exactly_the_hf_layout_bytes(tmp_path, shape, mp, torch_free):
    import torch

    from llamakit.convert import keymap

    src, _, shards = write_meta_checkpoint(tmp_path / "meta", shape, mp)
    source = MetaSource(src, torch_free=torch_free)
    for e in source.entries():
        rule, _ = keymap.lookup(e.name, "meta")
        order = keymap.hf_row_order(rule, e.shape[0], source.arch.head_dim) if rule.rope else None
        spans = source.spans(e.name, order)
        assert spans is not None, e.name
        got = b""
        for s in spans:
            with open(s.path, "rb") as fh:
                fh.seek(s.offset)
                got += fh.read(s.nbytes)
        d = source.plan.split_dims[e.name]
        merged = shards[0][e.name] if d is None else torch.cat([sh[e.name] for sh in shards], dim=d)
        assert got == bytes(tensor_bytes(keymap.to_hf_layout(rule, merged, source.arch.head_dim))), e.name
        # ranges that sit in order are one copy: a concatenation costs one range per shard
        if d in (None, 0) and not rule.rope:
            assert len(spans) == (1 if d is None else mp), e.name
        elif d == 1:
            assert len(spans) == (1 if mp == 1 else e.shape[0] * mp), e.name  # one shard: rows in order


def test_kernel_copy_fallback_and_slow_path_write_identical_files(tmp_path, monkeypatch):
    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 2)
    calls = []
    real = os.copy_file_range

    def counting(*args, **kw):
        calls.append(args[2])
        return real(*args, **kw)

    monkeypatch.setattr(os, "copy_file_range", counting)
    fast = convert(src, tmp_path / "fast", check=False, show_progress=False)
    assert calls and sum(calls) >= 0.95 * fast.bytes_written  # every tensor went through the kernel (not the tokenizer)

    def refused(*_a, **_kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refused)
    fallback = convert(src, tmp_path / "fallback", check=True, show_progress=False)  # pread/write, then the logit check
    assert fallback.check["max_abs"] <= fallback.check["tol"]

    monkeypatch.setattr(MetaSource, "spans", lambda *_a: None)  # as for a piece stored non-contiguously
    slow = convert(src, tmp_path / "slow", check=False, show_progress=False)  # torch-free plan, tensors after all
    assert _digests(tmp_path / "fast")
    assert _digests(tmp_path / "fast") == _digests(tmp_path / "fallback") == _digests(tmp_path / "slow")


def test_a_failing_kernel_copy_surfaces_and_leaves_no_destination(tmp_path, monkeypatch):
    """Copies run on a worker pool: an I/O error there must still stop the conversion, with DST never created."""
    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 2)

    def broken(*_a, **_kw):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "copy_file_range", broken)
    with pytest.raises(OSError, match="Input/output error"):
        convert(src, tmp_path / "out", check=False, show_progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
