"""Re-shard and cast within a format, and the staging directory's recovery of a killed run's leftovers."""

from __future__ import annotations

import json
import os

import pytest
import torch
from convert_helpers import hf_dir, write_meta_checkpoint
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from llamakit.convert import convert, output
from llamakit.convert.pth import load_pth

pytestmark = pytest.mark.usefixtures("small_blocks")


def test_hf_reshard_and_cast(tmp_path):
    src = hf_dir(tmp_path, "rope_scaled")
    r = convert(src, tmp_path / "out", max_shard_size="20KB", dtype="bf16", show_progress=False)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    got = {}
    for f in files:
        assert (tmp_path / "out" / f).stat().st_size <= 20_000 or len(load_file(tmp_path / "out" / f)) == 1
        got.update(load_file(tmp_path / "out" / f))
    want = load_file(src / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["rope_parameters"] == json.loads((src / "config.json").read_text())["rope_parameters"]
    assert r.check["max_abs"] <= r.check["tol"]
    LlamaForCausalLM.from_pretrained(tmp_path / "out")  # transformers reads the index and every shard


def test_meta_mp2_to_mp4(tmp_path):
    src, _, shards = write_meta_checkpoint(tmp_path / "meta", "gqa", 4)
    convert(src, tmp_path / "mp2", to="meta", mp=2, show_progress=False)
    convert(tmp_path / "mp2", tmp_path / "mp4", to="meta", mp=4, show_progress=False)
    for r in range(4):
        back = load_pth(tmp_path / "mp4" / f"consolidated.{r:02d}.pth")
        assert all(torch.equal(back[k], shards[r][k]) for k in shards[r])
    lines = (tmp_path / "mp4" / "checklist.chk").read_text().splitlines()
    assert [ln.split()[1] for ln in lines] == [f"consolidated.{r:02d}.pth" for r in range(4)] + ["params.json"]


def test_sweep_restores_a_replaced_dst_and_drops_partials(tmp_path):
    dst = tmp_path / "out"
    dead = 2**22 + 12345  # above the default pid_max: no process has it
    (tmp_path / f".out.old-{dead}").mkdir()
    (tmp_path / f".out.old-{dead}" / "config.json").write_text("{}")
    (tmp_path / f".out.partial-{dead}").mkdir()
    output.sweep(dst)
    assert (dst / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    mine = tmp_path / f".out.partial-{os.getpid()}"
    mine.mkdir()
    output.sweep(dst)  # a live run's staging dir is left alone
    assert mine.exists()
