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


def _one_layer_checkpoint(root: Path, ffn: int) -> Path:
    D, K, V = 1024, 256, 160
    src = root / f"meta-{ffn}"
    src.mkdir()
    params = dict(dim=D, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=V, multiple_of=ffn, norm_eps=1e-5,
                  rope_theta=500000.0)
    (src / "params.json").write_text(json.dumps(params))
    shapes = {"tok_embeddings.weight": (V, D), "output.weight": (V, D), "norm.weight": (D,),
              "layers.0.attention.wq.weight": (D, D), "layers.0.attention.wk.weight": (K, D),
              "layers.0.attention.wv.weight": (K, D), "layers.0.attention.wo.weight": (D, D),
              "layers.0.feed_forward.w1.weight": (ffn, D), "layers.0.feed_forward.w3.weight": (ffn, D),
              "layers.0.feed_forward.w2.weight": (D, ffn), "layers.0.attention_norm.weight": (D,),
              "layers.0.ffn_norm.weight": (D,)}
    g = torch.Generator().manual_seed(0)
    torch.save({k: (1 + 0.1 * torch.randn(s, generator=g) if len(s) == 1 else 0.03 * torch.randn(s, generator=g))
                .to(torch.bfloat16) for k, s in shapes.items()}, src / "consolidated.00.pth")
    convert(src, root / f"hf-{ffn}", check=False, show_progress=False)
    return src


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_the_check_holds_a_block_not_a_layer(tmp_path, monkeypatch):
    """One layer whose FFN matrices are 16 MB in float32, then the same layer with them 4x as big (a layer of
    208 MB in float32), blocks of 256 KiB: the check's peak growth must not follow the layer (the old check held a
    whole layer in float32), and stays well below one FFN matrix of the small layer."""
    from llamakit.convert import entries

    monkeypatch.setattr(entries, "PART_BYTES", 256 << 10)
    grew = {}
    for ffn in (4096, 16384):
        source = open_source(_one_layer_checkpoint(tmp_path, ffn))
        check.compare(source, tmp_path / f"hf-{ffn}", "hf")  # imports and first-use allocations happen here, not below
        grew[ffn] = _peak_rss_delta(lambda: check.compare(source, tmp_path / f"hf-{ffn}", "hf"))
    mib = {k: round(v / 2**20, 1) for k, v in grew.items()}
    # The bigger layer holds 3 x 48 MiB more float32 weights; the check may only grow by its wider activations
    # ([tokens, ffn] float32, a few of them: ~2 MiB here), far below one more FFN matrix (64 MiB).
    assert grew[16384] - grew[4096] < (16384 * 1024 * 4) // 16, f"the check's peak grew with the layer: {mib} MiB"
    assert grew[4096] < (4096 * 1024 * 4) // 2, f"the check grew the resident set by {mib} MiB"
