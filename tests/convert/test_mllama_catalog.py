"""Llama 3.2 Vision 11B / 90B at full size, shapes only: every Meta tensor (on the meta device) goes through the key
map's transforms to the HF name and shape that transformers' own MllamaForConditionalGeneration (built on the meta
device from llamakit's config.json) has, and back to Meta's shape; the detected layout is described."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["llama-3.2-11b-vision", "llama-3.2-90b-vision"])
def test_catalog_vision_models_plan_through_the_key_map(name):
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    from llamakit import catalog
    from llamakit.convert import keymap
    from llamakit.convert.mllama import hf_name, hf_shape, meta_name, meta_shape, rows_of, to_hf
    from llamakit.convert.mllama_arch import from_release

    rel = next(r for r in catalog.list_releases() if r.name == name)
    a = from_release(rel)
    cfg = a.to_hf_config("bfloat16")
    with torch.device("meta"):
        hf_model = MllamaForConditionalGeneration(MllamaConfig(**cfg))
    theirs = {keymap.mllama_hf_name(k): tuple(v.shape) for k, v in hf_model.state_dict().items()}
    ours: dict[str, tuple] = {}
    for rule, i in rows_of(a):
        t = torch.empty(meta_shape(rule, a), dtype=torch.bfloat16, device="meta")
        out = to_hf(rule, t, a)
        n = hf_name(rule, i, a)
        if rule.transform == "rows":  # embed_tokens: tok_embeddings rows, then the image-token rows
            ours[n] = (ours.get(n, (0, out.shape[1]))[0] + out.shape[0], out.shape[1])
        else:
            ours[n] = tuple(out.shape)
        assert ours[n] == hf_shape(rule, a) or rule.transform == "rows", meta_name(rule, i)
    assert ours == theirs
    if "11b" in name:  # the published meta-llama/Llama-3.2-11B-Vision config.json
        assert cfg["text_config"]["cross_attention_layers"] == [3, 8, 13, 18, 23, 28, 33, 38]
    total = 40 if "11b" in name else 100
    assert a.describe().startswith(f"Llama 3.2 Vision layout: {rel.meta.n_layers} text layers, cross-attention at "
                                   f"layers {cfg['text_config']['cross_attention_layers']} of {total}")
    from llamakit.convert.mllama import catalog_names

    assert name in catalog_names(a)
