"""Meta → HF moves every tensor that needs no cast file to file (copy_file_range) as row ranges: the merge and the
rotary permutation only move whole rows. The bytes must be exactly the tensor path's."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from llamakit.errors import LocalIOError
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


def test_gathered_kernel_fallback_and_slow_paths_write_identical_files(tmp_path, monkeypatch):
    from llamakit.convert import output

    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 2)
    moved = {"kernel": 0, "gathered": 0}
    real_copy, real_pwritev = os.copy_file_range, os.pwritev

    def counting_copy(*args, **kw):
        n = real_copy(*args, **kw)
        moved["kernel"] += n
        return n

    def counting_pwritev(fd, buffers, offset):
        n = real_pwritev(fd, buffers, offset)
        moved["gathered"] += n
        return n

    monkeypatch.setattr(os, "copy_file_range", counting_copy)
    monkeypatch.setattr(os, "pwritev", counting_pwritev)
    fast = convert(src, tmp_path / "fast", check=False, show_progress=False)
    # every tensor went file to file (not through tensors); these tiny rows are all gathered
    assert moved["gathered"] >= 0.95 * fast.bytes_written and moved["kernel"] == 0

    moved.update(kernel=0, gathered=0)
    monkeypatch.setattr(output, "_SMALL", 0)  # every span its own kernel copy, as large tensors go
    convert(src, tmp_path / "kernel", check=False, show_progress=False)
    assert moved["kernel"] >= 0.95 * fast.bytes_written and moved["gathered"] == 0
    monkeypatch.undo()

    def short_pwritev(fd, buffers, offset):  # a write that stops early must resume where it stopped
        flat = b"".join(bytes(b) for b in buffers)[:1000]
        return real_pwritev(fd, [flat], offset)

    monkeypatch.setattr(os, "pwritev", short_pwritev)
    convert(src, tmp_path / "short", check=False, show_progress=False)
    monkeypatch.undo()

    def refused(*_a, **_kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refused)
    monkeypatch.setattr(output, "_SMALL", 0)
    fallback = convert(src, tmp_path / "fallback", check=True, show_progress=False)  # pread/write, then the logit check
    assert fallback.check["max_abs"] <= fallback.check["tol"]

    monkeypatch.setattr(MetaSource, "spans", lambda *_a: None)  # as for a piece stored non-contiguously
    convert(src, tmp_path / "slow", check=False, show_progress=False)  # torch-free plan, tensors after all
    assert _digests(tmp_path / "fast")
    assert _digests(tmp_path / "fast") == _digests(tmp_path / "kernel") == _digests(tmp_path / "short") \
        == _digests(tmp_path / "fallback") == _digests(tmp_path / "slow")


def test_a_failing_kernel_copy_surfaces_and_leaves_no_destination(tmp_path, monkeypatch):
    """Copies run on a worker pool: an I/O error there must still stop the conversion, with DST never created."""
    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 2)

    def broken(*_a, **_kw):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "copy_file_range", broken)
    monkeypatch.setattr(os, "pwritev", broken)
    with pytest.raises(LocalIOError, match="input/output error"):  # typed at the convert edge (exit 4)
        convert(src, tmp_path / "out", check=False, show_progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("layout", ["permuted rows", "sparse rows", "two files interleaved", "large and small"])
def test_copy_all_writes_exactly_the_spans_bytes_in_order(tmp_path, layout):
    from llamakit.convert.output import FileSpan, SpanCopier

    rng = __import__("random").Random(0)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(bytes(rng.randrange(256) for _ in range(600_000)))
    b.write_bytes(bytes(rng.randrange(256) for _ in range(600_000)))
    row = 1000
    if layout == "permuted rows":  # dense: gathered in one read and one write
        spans = [FileSpan(a, r * row, row) for r in rng.sample(range(500), 500)]
    elif layout == "sparse rows":  # every third row: reading the gaps would cost more, copied span by span
        spans = [FileSpan(a, r * row, row) for r in range(0, 500, 3)]
    elif layout == "two files interleaved":  # a dim-1 merge
        spans = [FileSpan(f, r * row, row) for r in range(500) for f in (a, b)]
    else:
        spans = [FileSpan(a, 0, 300_000), FileSpan(b, 5, 77), FileSpan(b, 100_000, 400_000), FileSpan(a, 7, 3)]
    out = tmp_path / "out.bin"
    with open(out, "wb") as f, SpanCopier() as copier:
        f.write(b"head")
        copier.copy_all(spans, f.fileno(), 4)
    want = b"head" + b"".join(s.path.read_bytes()[s.offset:s.offset + s.nbytes] for s in spans)
    assert out.read_bytes() == want
