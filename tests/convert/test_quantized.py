"""Meta's quantized releases are refused in one line naming the release and its bf16 counterpart.

The INT4 params.json files come from Meta's own model registry (llama-models `sku_list`: the `arch_args` its
loader reads from params.json), matched to llamakit's catalog by Hugging Face repo, so the catalog and the
detection are checked against Meta's data, not against themselves.
"""

from __future__ import annotations

import json

import pytest
from convert_helpers import hf_dir, write_meta_checkpoint
from test_errors import assert_refused, run_cli

from llamakit import catalog
from llamakit.convert import convert
from llamakit.convert.quantized import refuse_quantized, releases_and_alternatives
from llamakit.errors import ConversionError


def _int4_releases():
    return [r for r in catalog.list_releases() if r.quantization and r.quantization.startswith("int4")]


def test_the_catalog_lists_meta_s_int4_releases():
    assert len(_int4_releases()) == 4  # 1B and 3B Instruct, QLoRA and SpinQuant


@pytest.mark.parametrize("release", _int4_releases(), ids=lambda r: r.name)
def test_an_int4_release_is_refused_naming_it_and_its_bf16_release(tmp_path, monkeypatch, capsys, release):
    sku_list = pytest.importorskip("llama_models.sku_list")
    sku = [m for m in sku_list.all_registered_models() if m.huggingface_repo == release.sources.hf.repo]
    assert len(sku) == 1, release.sources.hf.repo  # the catalog's repo is one of Meta's registered models
    src = tmp_path / "int4"
    src.mkdir()
    (src / "params.json").write_text(json.dumps(sku[0].arch_args))  # the params.json Meta's loader reads
    (src / "consolidated.00.pth").write_bytes(b"not read: refused from params.json first")
    bf16 = release.name.split("-qlora-")[0].split("-spinquant-")[0]
    code, err = run_cli(monkeypatch, capsys, src, tmp_path / "out")
    assert_refused(tmp_path, code, err, mentions=(release.name, "quantization_args", f"bf16 release {bf16}"))
    assert ("lora_args" in err) == ("qlora" in release.name)  # QLoRA's adaptors named; SpinQuant has none


def test_every_quantized_catalog_release_has_a_bf16_counterpart():
    for r in catalog.list_releases():
        if not r.quantization or not r.meta:
            continue
        params = {"dim": r.meta.dim, "n_layers": r.meta.n_layers,
                  "moe_args": {"num_experts": r.moe.num_experts} if r.moe else None}
        kind = r.quantization.split("-eo8")[0].replace("-mixed", "")
        names, alt = releases_and_alternatives(params, kind)
        assert r.name in names and alt, (r.name, kind, names, alt)


def test_a_plain_checkpoint_with_the_same_shapes_is_not_refused(tmp_path):
    """The negative side: without quantization_args the same directory converts (a tiny 3.2-1B-shaped one)."""
    src, params, _ = write_meta_checkpoint(tmp_path / "meta", "tied", 1)
    refuse_quantized(src, params)  # no raise
    quantized = dict(params, quantization_args={"group_size": 256})
    with pytest.raises(ConversionError, match="INT4 quantized checkpoint"):
        refuse_quantized(src, quantized)
    (src / "params.json").write_text(json.dumps(quantized))
    with pytest.raises(ConversionError, match="quantization_args says int4 weights in groups of 256"):
        convert(src, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_an_hf_int8_release_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    """Llama Guard 3 8B INT8 is bitsandbytes int8 in HF format: its config.json says so. The weights are never read,
    so a tiny model's files under the 8B's config.json stand in for them."""
    src = hf_dir(tmp_path, "gqa")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(dict(cfg, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                                     num_key_value_heads=8, intermediate_size=14336, head_dim=128,
                                                     quantization_config={"quant_method": "bitsandbytes",
                                                                          "load_in_8bit": True})))
    code, err = run_cli(monkeypatch, capsys, src, tmp_path / "out")
    assert_refused(tmp_path, code, err, mentions=("llama-guard-3-8b-int8", "bitsandbytes int8", "bf16 release llama-guard-3-8b"))
    (src / "config.json").write_text(json.dumps(cfg))  # the same files without quantization_config convert
    assert convert(src, tmp_path / "out", show_progress=False).check is not None
