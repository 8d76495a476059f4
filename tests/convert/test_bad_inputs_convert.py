"""`llamakit convert` bad inputs, one row each (tests/bad_inputs.py: exit code, one line, nothing at DST)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from bad_inputs import Row, run_row
from convert_helpers import write_meta_checkpoint


def _meta(tmp: Path) -> None:
    write_meta_checkpoint(tmp / "meta", "gqa", 2)


def _gguf(tmp: Path, *, alignment: int) -> None:
    """A GGUF v3 header: no tensors, one key, general.alignment (uint32)."""
    key = b"general.alignment"
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<II", 4, alignment)
    (tmp / "m.gguf").write_bytes(data)


def _bigger_params(tmp: Path) -> None:
    _meta(tmp)
    p = json.loads((tmp / "meta" / "params.json").read_text())
    p.update(dim=2 * p["dim"], n_heads=2 * p["n_heads"])  # a bigger model's params.json beside these shards
    (tmp / "meta" / "params.json").write_text(json.dumps(p))


def _truncate(tmp: Path) -> None:
    _meta(tmp)
    f = tmp / "meta" / "consolidated.01.pth"
    f.write_bytes(f.read_bytes()[:2000])


def _file(tmp: Path) -> None:
    _meta(tmp)
    (tmp / "afile").write_text("not a directory")


ROWS = [
    # the cases issue 18 found
    Row("gguf-alignment-zero", ["convert", "{tmp}/m.gguf", "{tmp}/out"], 2, "general.alignment 0", "out",
        setup=lambda t: _gguf(t, alignment=0)),
    Row("gguf-alignment-not-power-of-two", ["convert", "{tmp}/m.gguf", "{tmp}/out"], 2, "not a positive power of two", "out",
        setup=lambda t: _gguf(t, alignment=24)),
    Row("params-json-of-a-bigger-model", ["convert", "{tmp}/meta", "{tmp}/out", "--no-check"], 2,
        "shapes disagree with params.json: 'norm.weight'", "out", setup=_bigger_params),
    Row("interrupt-while-importing", ["convert", "{tmp}/meta", "{tmp}/out"], 130, "interrupted; nothing written", "out",
        setup=_meta, interrupt_on="transformers.models.llama.configuration_llama"),
    Row("interrupt-after-writing-weights", ["convert", "{tmp}/meta", "{tmp}/out"], 130, "interrupted; nothing written", "out",
        setup=_meta, interrupt_on="llamakit.convert.check"),
    Row("dst-under-a-file", ["convert", "{tmp}/meta", "{tmp}/afile/out", "--no-check"], 4, "afile/out: cannot write",
        "afile/out", setup=_file),
    Row("dst-read-only", ["convert", "{tmp}/meta", "{tmp}/ro/out", "--no-check"], 4, "ro/out: cannot write or read here: permission denied",
        "ro/out", setup=_meta, readonly="ro"),
    Row("disk-full", ["convert", "{tmp}/meta", "{tmp}/out", "--no-check"], 4, "out: file too large for the destination", "out",
        setup=_meta, fsize=20_000),
    # the net, wider: inputs that were already refused stay refused
    Row("truncated-shard", ["convert", "{tmp}/meta", "{tmp}/out", "--no-check"], 2, "consolidated.01.pth", "out", setup=_truncate),
    Row("not-a-checkpoint", ["convert", "{tmp}/afile", "{tmp}/out"], 2, "afile", "out", setup=_file),
    Row("unknown-dtype", ["convert", "{tmp}/meta", "{tmp}/out", "--dtype", "fp8"], 2, "--dtype", "out", setup=_meta),
]


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input(row, tmp_path):
    run_row(row, tmp_path)
