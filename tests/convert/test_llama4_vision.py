"""Llama 4 with its vision encoder (Scout-like MP 1, Maverick-like MP 2) Meta ⇄ HF, proved against Meta's own code.

Meta's llama4 `Transformer` with `vision_args` writes a tiny multimodal checkpoint in the shipped layout
(meta_oracle_llama4.py: the vision encoder, adapter and projector under their module names, proven by a
strict load through Meta's hooks); a tokenizer.model trained here sits beside it, as in Meta's downloads.
Meta's code on those files and transformers' Llama4ForConditionalGeneration on llamakit's HF output give
the same logits for text-only batches and for a batch with one image; the HF → Meta round trip is the
original tensors bit for bit and Meta's code on it gives the same logits.

How the image reaches both models. Meta: chat_format.py turns a one-tile image into the tokens
<|image_start|> <|image|> <|patch|>×n <|image_end|> (n = patches per tile / pixel_shuffle_ratio⁻²) and
preprocess.py's transform into pixels (ToTensor: /255, then Normalize mean 0.5 std 0.5); generation.py
embeds them with `vision_embeddings` on the <|patch|> positions and Transformer.forward mixes them in
through `vision_projection`. HF: Llama4Processor._prompt_split_image writes the same token string for an
aspect ratio of (1, 1), Llama4ImageProcessor rescales by 1/255 and normalizes with mean = std = 0.5, and
the model scatters the projected features onto config.image_token_id. Both preprocessors need torchvision,
which this environment does not install, so the test applies their common arithmetic to an image that is
exactly one tile (16×16: both resize steps are then identities) and hands the same pixel tensor to both
models. The tokens come from Meta's tokenizer (its special ids) and must equal what llamakit's
tokenizer.json makes of HF's processor string.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("llama_models")
pytest.importorskip("fairscale")

import meta_oracle_llama4 as oracle  # noqa: E402
from llama_models.llama4.tokenizer import Tokenizer as MetaTokenizer  # noqa: E402
from tiktoken_ranks import write_rank_file  # noqa: E402
from transformers import AutoTokenizer, Llama4ForConditionalGeneration  # noqa: E402
from transformers.models.llama4.processing_llama4 import Llama4Processor  # noqa: E402

from llamakit.convert import convert, keymap  # noqa: E402

SPREAD = [0, 3, 9, 31, 400, 2047, 5000, 9000, 20000, 41000, 65000, 88000, 100000]
IMAGE_AT = 3  # where the image's tokens start in the image batch
V = oracle.VISION
# chat_format.py: patches per tile // round(pixel_shuffle_ratio⁻²)
PATCHES = (V["image_size"]["height"] // V["patch_size"]["height"]) ** 2 // round(V["pixel_shuffle_ratio"] ** -2)


def _pixels() -> torch.Tensor:
    """One tile of a seeded RGB image, as both preprocessors leave it: (uint8 / 255 - 0.5) / 0.5, [1, 3, H, W]."""
    g = torch.Generator().manual_seed(5)
    side = V["image_size"]["height"]
    rgb = torch.randint(0, 256, (side, side, 3), generator=g, dtype=torch.uint8)
    return ((rgb.permute(2, 0, 1).float() / 255 - 0.5) / 0.5)[None]


def _batches(path, meta_tok):
    g = torch.Generator().manual_seed(3)
    sp = meta_tok.special_tokens
    image = [sp["<|image_start|>"], sp["<|image|>"], *[sp["<|patch|>"]] * PATCHES, sp["<|image_end|>"]]
    text = torch.randint(0, oracle.N_RANKS, (12,), generator=g).tolist()
    with_image = torch.tensor([[meta_tok.bos_id, *text[:IMAGE_AT - 1], *image, *text[IMAGE_AT:IMAGE_AT + 3]]])
    n = with_image.shape[1]
    img = (_pixels(), sp["<|patch|>"])
    b = [(torch.randint(0, oracle.N_RANKS, (2, 11), generator=g), torch.arange(11)),  # text only
         (with_image, torch.arange(n), img),
         (with_image, torch.tensor(SPREAD[:n]), img)]
    torch.save(b, path)
    return b


def _transformers(d, batches):
    """Llama4ForConditionalGeneration.forward's own steps, called one by one: in transformers 5.24.0 the method
    itself fails after computing the logits (it reads `image_outputs` from the language model's output, which has
    none), so the test runs its body: embed, get_image_features, multi_modal_projector, get_placeholder_mask,
    masked_scatter, language_model."""
    model = Llama4ForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for t, p, *img in batches:
            embeds = model.get_input_embeddings()(t)
            if img:
                features = model.get_image_features(pixel_values=img[0][0], return_dict=True).last_hidden_state
                projected = model.multi_modal_projector(features.view(-1, features.size(-1)))
                mask = model.get_placeholder_mask(t, inputs_embeds=embeds, image_features=projected)
                embeds = embeds.masked_scatter(mask, projected)
            out.append(model.language_model(inputs_embeds=embeds, position_ids=p[None].expand(t.shape[0], -1)).logits)
    return out


def _close(a, b, rel=1e-4):
    return (a - b).abs().max().item() <= rel * max(1.0, a.abs().max().item())


@pytest.fixture(scope="module", params=[("scout_vision", 1), ("maverick_vision", 2)], ids=["scout-mp1", "maverick-mp2"])
def written(request, tmp_path_factory):
    shape, mp = request.param
    tmp = tmp_path_factory.mktemp(shape)
    ranks = write_rank_file(tmp / "tokenizer.model", oracle.N_RANKS)
    meta_tok = MetaTokenizer(ranks)
    batches = _batches(tmp / "batches.pt", meta_tok)
    oracle.launch("write", tmp / "meta", shape, tmp / "batches.pt", tmp / "meta.pt", nproc=mp)
    (tmp / "meta" / "tokenizer.model").write_bytes(ranks.read_bytes())
    return shape, mp, tmp, batches, torch.load(tmp / "meta.pt", weights_only=True), meta_tok


def test_meta_code_and_transformers_agree_with_an_image_both_ways(written):
    shape, mp, tmp, batches, meta_logits, meta_tok = written
    r = convert(tmp / "meta", tmp / "hf", show_progress=False)
    assert r.check["bit_identical"]
    assert r.generation.endswith(f"vision encoder ({V['n_layers']} layers, 16px tiles in 4px patches, {PATCHES} image "
                                 "tokens per tile)")
    cfg = json.loads((tmp / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["Llama4ForConditionalGeneration"]
    sp = meta_tok.special_tokens
    assert (cfg["image_token_index"], cfg["boi_token_index"], cfg["eoi_token_index"]) == \
        (sp["<|patch|>"], sp["<|image_start|>"], sp["<|image_end|>"])
    assert cfg["vision_config"]["num_hidden_layers"] == V["n_layers"] and cfg["text_config"]["bos_token_id"] == meta_tok.bos_id

    # HF's processor string for a one-tile image, through llamakit's tokenizer.json = Meta's token layout
    hf_tok = AutoTokenizer.from_pretrained(tmp / "hf")
    prompt = Llama4Processor._prompt_split_image(None, (1, 1), PATCHES)
    assert hf_tok.encode(prompt, add_special_tokens=False) == batches[1][0][0, IMAGE_AT:IMAGE_AT + PATCHES + 3].tolist()

    got = _transformers(tmp / "hf", batches)
    for g, w in zip(got, meta_logits):
        assert _close(g, w), (g - w).abs().max()
    assert not _close(meta_logits[1], meta_logits[2])  # the spread positions matter

    back = convert(tmp / "hf", tmp / "back", to="meta", mp=mp, show_progress=False)
    assert back.check["bit_identical"] and json.loads((tmp / "back" / "params.json").read_text())["vision_args"] == V
    for rank in range(mp):
        orig = oracle.load(tmp / "meta" / f"consolidated.{rank:02d}.pth")
        again = oracle.load(tmp / "back" / f"consolidated.{rank:02d}.pth")
        weights = {k: v for k, v in orig.items() if isinstance(v, torch.Tensor)}
        assert set(weights) == set(again) and all(torch.equal(weights[k], again[k]) for k in weights)
    assert (tmp / "back" / "tokenizer.model").read_bytes() == (tmp / "meta" / "tokenizer.model").read_bytes()
    oracle.launch("forward", tmp / "back", shape, tmp / "batches.pt", tmp / "back.pt", nproc=mp)
    for g, w in zip(torch.load(tmp / "back.pt", weights_only=True), meta_logits):
        assert torch.equal(g, w)


def _mutate(rules, which):
    def swap(r):
        if which == "q-k" and r.meta.endswith(("attn.wq.weight", "attn.wk.weight")):
            other = "k_proj" if "q_proj" in r.hf else "q_proj"
            return r.__class__(**{**r.__dict__, "hf": r.hf.replace("q_proj" if other == "k_proj" else "k_proj", other)})
        if which == "adapter-transposed" and r.meta.endswith("vision_adapter.mlp.c_proj.weight"):
            return r.__class__(**{**r.__dict__, "transpose": True})
        return r

    return tuple(swap(r) for r in rules)


@pytest.mark.parametrize("which", ["q-k", "adapter-transposed"])
def test_a_wrong_vision_mapping_is_caught(written, monkeypatch, tmp_path, which):
    """The vision encoder's q and k swapped, or the adapter's square c_proj transposed: self-consistent maps (the
    round trip stays bit-identical, the text-only logits agree) that only the image batch against Meta's code catches."""
    _shape, _mp, tmp, batches, meta_logits, _tok = written
    monkeypatch.setattr(keymap, "LLAMA4_RULES", _mutate(keymap.LLAMA4_RULES, which))
    r = convert(tmp / "meta", tmp_path / "hf", show_progress=False)
    assert r.check["bit_identical"]
    got = _transformers(tmp_path / "hf", batches)
    assert _close(got[0], meta_logits[0])
    assert not _close(got[1], meta_logits[1])


def _with_params(tmp, dst, edit):
    dst.mkdir()
    for p in (tmp / "meta").iterdir():
        if p.name != "params.json":
            (dst / p.name).symlink_to(p)
    params = json.loads((tmp / "meta" / "params.json").read_text())
    edit(params)
    (dst / "params.json").write_text(json.dumps(params))
    return dst


@pytest.mark.parametrize("edit, match", [
    (lambda p: p.pop("vision_args"), "unexpected vision_embeddings"),
    (lambda p: p["vision_args"].update(n_layers=3), "missing vision_embeddings.vision_encoder.transformer.resblocks.2"),
    (lambda p: p["vision_args"].update(output_dim=64), "has shape"),
])
def test_a_params_json_that_does_not_describe_the_encoder_is_refused(written, tmp_path, edit, match):
    from llamakit.errors import ConversionError

    _shape, _mp, tmp, _b, _l, _t = written
    src = _with_params(tmp, tmp_path / "meta", edit)
    with pytest.raises(ConversionError, match=match):
        convert(src, tmp_path / "hf", show_progress=False)
    assert not (tmp_path / "hf").exists()


def test_info_local_describes_both_layouts(written):
    from llamakit.describe import describe_local

    _shape, _mp, tmp, _b, _l, _t = written
    if not (tmp / "hf").is_dir():
        convert(tmp / "meta", tmp / "hf", show_progress=False)
    for d in ("meta", "hf"):
        info = describe_local(tmp / d)
        assert info["generation"].startswith("Llama 4 ") and "vision encoder (2 layers" in info["generation"]
        assert info["vision"]["n_layers"] == V["n_layers"] and info["architecture"]["num_experts"] > 0
