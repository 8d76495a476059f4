"""pth_index.read_index: a torch zip checkpoint's tensors located without torch, and a byte-copying Meta -> HF
conversion that never imports torch."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from convert_helpers import write_meta_checkpoint
from test_pth import _Evil  # the same payload torch.load's weights-only mode is tested against

from llamakit.convert import convert
from llamakit.convert.pth_index import read_index
from llamakit.errors import InputFileError, UnsafeCheckpointError


def _bytes_at(path, offset, n) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(n)


def test_records_match_torch_load_for_every_dtype_and_view(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    sd = {f"t.{dt}": torch.randn(3, 5, generator=g).to(dt) for dt in
          (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
           torch.uint8, torch.bool)}
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 4)
    sd["rows 2..4 of a shared storage"] = base[2:4]  # torch.save keeps the whole storage and an offset
    sd["transposed"] = base.t()  # not contiguous: its bytes are not one range in tensor order
    torch.save(sd, tmp_path / "c.pth")
    idx = read_index(tmp_path / "c.pth")
    assert list(idx) == list(sd)
    for name, t in sd.items():
        r = idx[name]
        assert (r.shape, str(r.dtype), r.dtype.itemsize) == (tuple(t.shape), str(t.dtype), t.element_size()), name
        assert r.nbytes == t.numel() * t.element_size() and r.contiguous == t.is_contiguous(), name
        if r.contiguous:
            assert _bytes_at(tmp_path / "c.pth", r.offset, r.nbytes) == t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), name


def test_anything_beyond_tensors_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.zeros(2), "x": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="GLOBAL posix.system is not allowed"):
        read_index(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned-by-pickle").exists()
    torch.save({"nested": {"w": torch.zeros(1)}}, tmp_path / "nested.pth")
    with pytest.raises(InputFileError, match="flat dict of tensors"):
        read_index(tmp_path / "nested.pth")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        with pytest.raises(InputFileError, match="truncated or corrupt"):
            read_index(tmp_path / "cut.pth")
    with pytest.raises(InputFileError, match="missing"):
        read_index(tmp_path / "absent.pth")


@pytest.mark.parametrize("shape", ["gqa", "mha"])  # mha MP 2: Llama 1/2's dim-split embedding, told apart from
def test_a_byte_copying_conversion_never_imports_torch(tmp_path, shape):  # output.weight by their first rows
    src, _, _ = write_meta_checkpoint(tmp_path / "meta", shape, 2)
    ref = convert(src, tmp_path / "checked", show_progress=False)  # torch path, logits checked
    code = ("import sys; from llamakit.convert import convert; "
            f"convert({str(src)!r}, {str(tmp_path / 'plain')!r}, check=False, show_progress=False); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "plain").iterdir())}
    assert digest == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "checked").iterdir())}
    assert any(n.endswith(".safetensors") for n in digest) and ref.check["max_abs"] <= ref.check["tol"]
