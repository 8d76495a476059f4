"""Llama 4's vision encoder hyperparameters (convert/llama4_vision.py): Meta's vision_args ⇄ transformers'
Llama4VisionConfig, the tensor shapes against transformers' own module, the image token ids, the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamakit import catalog
from llamakit.convert import keymap
from llamakit.convert.llama4 import hf_shape
from llamakit.convert.llama4_vision import VisionArch, image_token_ids
from llamakit.errors import ConversionError

# The vision_config of meta-llama/Llama-4-Scout-17B-16E's config.json (Maverick's is the same), as published
PUBLISHED = {"attention_dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1408, "image_size": 336,
             "initializer_range": 0.02, "intermediate_size": 5632, "model_type": "llama4_vision_model",
             "multi_modal_projector_bias": False, "norm_eps": 1e-05, "num_attention_heads": 16, "num_channels": 3,
             "num_hidden_layers": 34, "patch_size": 14, "pixel_shuffle_ratio": 0.5, "projector_dropout": 0.0,
             "projector_input_dim": 4096, "projector_output_dim": 4096, "rope_theta": 10000,
             "vision_feature_layer": -1, "vision_feature_select_strategy": "default", "vision_output_dim": 4096}
P = Path("config.json")


class _Dim:
    """All of the text model the vision shapes read: its width (the projector's output)."""

    def __init__(self, dim):
        self.dim = dim


def test_the_catalogs_vision_args_give_the_published_hf_vision_config():
    for name in ("llama-4-scout-17b-16e", "llama-4-maverick-17b-128e-instruct"):
        enc = catalog.release_info(name)["vision"]["encoder"]
        v = VisionArch.from_params({**enc, "image_size": {"height": enc["image_size"], "width": enc["image_size"]},
                                    "patch_size": {"height": enc["patch_size"], "width": enc["patch_size"]}}, path=P)
        ours = v.to_hf_config()
        assert {k: ours[k] for k in ours if k in PUBLISHED} == {k: PUBLISHED[k] for k in ours if k in PUBLISHED}
        assert ours["rope_parameters"]["rope_theta"] == PUBLISHED["rope_theta"]
        assert VisionArch.from_hf_config(PUBLISHED, path=P) == v
        assert v.describe() == "vision encoder (34 layers, 336px tiles in 14px patches, 144 image tokens per tile)"


def test_image_token_ids_are_transformers_defaults_for_metas_vocabulary():
    from transformers import Llama4Config

    c = Llama4Config()
    assert image_token_ids(202048) == {"boi_token_index": c.boi_token_index, "eoi_token_index": c.eoi_token_index,
                                       "image_token_index": c.image_token_index}
    assert image_token_ids(202048, n_ranks=200000) == image_token_ids(202048)
    assert image_token_ids(160) == {}  # a vocabulary without Meta's specials states none


def test_vision_shapes_are_transformers_own():
    """Every vision rule's shape, as llamakit computes it, against the parameters of transformers' modules built
    from the config llamakit writes (a tiny encoder)."""
    import torch
    from transformers import Llama4Config, Llama4ForConditionalGeneration

    v = VisionArch(image_size=16, patch_size=4, dim=32, n_layers=2, n_heads=2, mlp_ratio=4.0, output_dim=48,
                   pixel_shuffle_ratio=0.5)
    text = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "vocab_size": 2348, "intermediate_size": 32, "intermediate_size_mlp": 64}
    with torch.device("meta"):
        model = Llama4ForConditionalGeneration(Llama4Config(text_config=text, vision_config=v.to_hf_config()))
    got = {k: tuple(p.shape) for k, p in model.state_dict().items() if not k.startswith("language_model.")}
    rules = [r for r in keymap.LLAMA4_RULES if r.part == "vision"]
    text_arch = _Dim(64)
    want = {r.hf.format(i=i): hf_shape(r, text_arch, v) for r in rules
            for i in (range(v.n_layers) if "{i}" in r.hf else [None])}
    assert got == want


@pytest.mark.parametrize("change, why", [
    ({"mlp_ratio": 2.0}, "one intermediate_size"),
    ({"image_size": {"height": 336, "width": 448}}, "non-square"),
])
def test_vision_args_transformers_cannot_express_are_refused(change, why):
    args = {"image_size": {"height": 336, "width": 336}, "patch_size": {"height": 14, "width": 14}, "dim": 1408,
            "n_layers": 34, "n_heads": 16, "mlp_ratio": 4.0, "output_dim": 4096, "pixel_shuffle_ratio": 0.5}
    with pytest.raises(ConversionError, match=why):
        VisionArch.from_params({**args, **change}, path=P)


@pytest.mark.parametrize("change, why", [
    ({"vision_output_dim": 7680}, "Meta has one output_dim"),
    ({"rope_theta": 500000}, "rope_theta"),
    ({"intermediate_size": 4096}, "intermediate_size"),
    ({"multi_modal_projector_bias": True}, "projector bias"),
])
def test_hf_vision_configs_metas_code_cannot_express_are_refused(change, why):
    with pytest.raises(ConversionError, match=why):
        VisionArch.from_hf_config({**PUBLISHED, **change}, path=P)


def test_an_mp_that_does_not_divide_the_encoder_is_a_usage_error():
    from llamakit.errors import UsageError

    v = VisionArch(image_size=336, patch_size=14, dim=1408, n_layers=34, n_heads=16, mlp_ratio=4.0, output_dim=4096,
                   pixel_shuffle_ratio=0.5)
    v.check_mp(8)
    with pytest.raises(UsageError, match="vision heads"):
        v.check_mp(3)
