"""consolidated.NN.pth: torch.save-compatible streaming writes, and reads that refuse anything but tensors."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

from llamakit.convert.pth import PthWriter, load_pth, release
from llamakit.errors import InputFileError, UnsafeCheckpointError


def _sample():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(7, 5, generator=g).to(torch.bfloat16), "b": torch.arange(9, dtype=torch.float32),
            "c": torch.randn(3, 4, 2, generator=g).to(torch.float16), "scalar": torch.tensor(2.5)}


def _write(path, sd, *, rows=None):
    w = PthWriter(path, [(k, tuple(v.shape), v.dtype) for k, v in sd.items()])
    for k, v in sd.items():
        w.begin(k)
        for part in (v.split(rows) if rows and v.dim() else [v]):  # any dim-0 split streams the same bytes
            w.write(part)
        w.end()
    w.close()


def test_writer_matches_torch_save_and_reloads_mmapped(tmp_path):
    sd = _sample()
    torch.save(sd, tmp_path / "consolidated.00.pth")
    (tmp_path / "mine").mkdir()
    _write(tmp_path / "mine" / "consolidated.00.pth", sd)
    ours, theirs = zipfile.ZipFile(tmp_path / "mine" / "consolidated.00.pth"), zipfile.ZipFile(tmp_path / "consolidated.00.pth")
    assert ours.testzip() is None  # every CRC right
    assert ours.namelist() == theirs.namelist()
    for name in theirs.namelist():
        if not name.endswith("serialization_id"):  # torch.save draws that one at random; ours is a content hash
            assert ours.read(name) == theirs.read(name), name
    back = load_pth(tmp_path / "mine" / "consolidated.00.pth")
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k])


def test_writer_is_deterministic_and_aligned(tmp_path):
    sd = _sample()
    for d, rows in (("x", None), ("y", 2)):
        (tmp_path / d).mkdir()
        _write(tmp_path / d / "consolidated.00.pth", sd, rows=rows)
    assert (tmp_path / "x" / "consolidated.00.pth").read_bytes() == (tmp_path / "y" / "consolidated.00.pth").read_bytes()
    z = zipfile.ZipFile(tmp_path / "x" / "consolidated.00.pth")
    raw = (tmp_path / "x" / "consolidated.00.pth").read_bytes()
    for info in z.infolist():
        n, e = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
            int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
        assert (info.header_offset + 30 + n + e) % 64 == 0, info.filename


def test_release_keeps_the_values(tmp_path):
    sd = {"big": torch.randn(300, 1000)}
    torch.save(sd, tmp_path / "c.pth")
    t = load_pth(tmp_path / "c.pth")["big"]
    before = t.sum().item()
    release(t)  # the pages come back from the file on the next touch
    assert t.sum().item() == before and torch.equal(t, sd["big"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"layers.0.attention.wq.weight": torch.zeros(2), "x": _Evil()}, tmp_path / "consolidated.00.pth")
    with pytest.raises(UnsafeCheckpointError) as exc:
        load_pth(tmp_path / "consolidated.00.pth")
    assert not (tmp_path / "pwned-by-pickle").exists()
    assert "refusing to unpickle" in exc.value.one_line() and "consolidated.00.pth" in exc.value.one_line()


def test_truncated_and_non_tensor_files(tmp_path):
    torch.save(_sample(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="truncated or corrupt"):
        load_pth(tmp_path / "cut.pth")
    torch.save({"nested": {"w": torch.zeros(1)}}, tmp_path / "nested.pth")
    with pytest.raises(InputFileError, match="flat dict of tensors"):
        load_pth(tmp_path / "nested.pth")
