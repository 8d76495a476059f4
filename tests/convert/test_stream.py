"""Row-block streaming (stream.py): every kind of `Rows` multiplies and gathers exactly as the whole tensor does, and
the equivalence check's memory is bounded by a block, not by a layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llamakit.convert import check, convert, stream
from llamakit.convert.detect import open_source
from llamakit.convert.pth import load_pth

pytestmark = pytest.mark.usefixtures("small_blocks")


class _Parts:
    """A source whose parts() yields the tensor in the blocks asked for (as GGUF/HF sources do)."""

    def __init__(self, t):
        self.t = t

    def parts(self, name, rows):
        for a in range(0, self.t.shape[0], rows):
            yield self.t[a:a + rows]


def _kinds(tmp_path: Path, w: torch.Tensor) -> dict[str, stream.Rows]:
    save_file({"w": w.contiguous()}, tmp_path / "w.safetensors")
    torch.save({"w": w}, tmp_path / "w.pth")
    return {"tensor": stream.TensorRows(w), "mapped": stream.MappedRows(load_pth(tmp_path / "w.pth")["w"]),
            "safetensors": stream.SafetensorsRows(tmp_path / "w.safetensors", "w"),
            "parts": stream.PartsRows(_Parts(w), "w", tuple(w.shape))}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_kind_of_rows_multiplies_and_gathers_like_the_whole_tensor(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1003, 96, generator=g).to(dtype)  # 1024-byte blocks: 2-3 rows each, a ragged last block
    x = torch.randn(3, 5, 96, generator=g)
    idx = torch.tensor([[0, 1002, 17], [17, 500, 3]])
    for name, rows in _kinds(tmp_path, w).items():
        assert len(list(rows.blocks())) > 300, name  # really streamed
        assert torch.allclose(stream.linear(x, rows), x @ w.float().T, rtol=1e-5, atol=1e-5), name
        assert torch.equal(rows.take(idx), w.float()[idx]), name
    vec = torch.randn(96, generator=g).to(dtype)
    assert torch.equal(stream.TensorRows(vec).full(), vec.float())


def _peak_rss_delta(fn) -> int:
    """Bytes the resident set grew to above where it stood, while `fn` ran (Linux: VmHWM reset via clear_refs)."""

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    base = status("VmRSS")
    fn()
    return status("VmHWM") - base


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_the_check_holds_a_block_not_a_layer(tmp_path, monkeypatch):
    """One layer of 64 MB in float32 (four 4 MB attention matrices, three 16 MB FFN ones), blocks of 256 KiB: both
    sides of the check together stay far below one FFN matrix, where the old check held a whole layer in float32."""
    from llamakit.convert import entries

    monkeypatch.setattr(entries, "PART_BYTES", 256 << 10)
    D, F, K, V = 1024, 4096, 256, 160
    src = tmp_path / "meta"
    src.mkdir()
    params = dict(dim=D, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=V, multiple_of=4096, norm_eps=1e-5,
                  rope_theta=500000.0)
    (src / "params.json").write_text(json.dumps(params))
    shapes = {"tok_embeddings.weight": (V, D), "output.weight": (V, D), "norm.weight": (D,),
              "layers.0.attention.wq.weight": (D, D), "layers.0.attention.wk.weight": (K, D),
              "layers.0.attention.wv.weight": (K, D), "layers.0.attention.wo.weight": (D, D),
              "layers.0.feed_forward.w1.weight": (F, D), "layers.0.feed_forward.w3.weight": (F, D),
              "layers.0.feed_forward.w2.weight": (D, F), "layers.0.attention_norm.weight": (D,),
              "layers.0.ffn_norm.weight": (D,)}
    g = torch.Generator().manual_seed(0)
    torch.save({k: (1 + 0.1 * torch.randn(s, generator=g) if len(s) == 1 else 0.03 * torch.randn(s, generator=g))
                .to(torch.bfloat16) for k, s in shapes.items()}, src / "consolidated.00.pth")
    convert(src, tmp_path / "hf", check=False, show_progress=False)
    source = open_source(src)
    check.compare(source, tmp_path / "hf", "hf")  # imports and first-use allocations happen here, not below
    ffn_fp32 = F * D * 4
    grew = _peak_rss_delta(lambda: check.compare(source, tmp_path / "hf", "hf"))
    assert grew < ffn_fp32 // 4, f"the check grew the resident set by {grew / 2**20:.1f} MiB"
