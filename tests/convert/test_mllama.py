"""Llama 3.2 Vision (mllama): a checkpoint written by Meta's own multimodal code converts to HF and back.

Meta's CrossAttentionTransformer (tests/convert/meta_oracle_mllama.py, no llamakit on its path) writes a
tiny checkpoint and runs it; transformers' MllamaForConditionalGeneration runs llamakit's HF output on the
same tokens and the same image tiles; the logits must agree, text-only and with the image (the cross-
attention layers, the vision encoder's local/global transformers, tile/position tables, gates and the
projector all take part). HF → Meta must load strictly into Meta's code and give Meta's logits again.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llama_models")
pytest.importorskip("fairscale")

import meta_oracle_mllama as oracle  # noqa: E402

V = oracle.PARAMS["vocab_size"]
IMAGE_AT = 0
# position ids far apart (up to 8000: llama3 rope scaling moves the low frequencies visibly there)
SPREAD = torch.tensor([0, 1, 2, 3, 517, 518, 2048, 2049, 4100, 6000, 7999, 8000])
AR = (2, 1)  # two tiles high, one wide: a ratio whose tile order and id matter (1x2 is a different row)


def _inputs(path):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (2, oracle.SEQ), generator=g)
    # the image token first, as Llama 3.2 Vision prompts put it: Meta's learnable_embedding row 0, HF's embed_tokens
    # row V. (A text row before the image differs between the two codes whatever the weights: Meta's CrossAttention
    # zeroes the attention output of a row that sees no image, transformers 5.24 only its MLP output.)
    tokens[:, IMAGE_AT] = V
    tiles = torch.randn(AR[0] * AR[1], 3, 28, 28, generator=g)
    torch.save({"tokens": tokens, "tiles": tiles, "ar": list(AR), "image_at": IMAGE_AT, "spread": SPREAD}, path)
    return tokens, tiles


def _hf_logits(d, tokens, tiles, *, shift=True):
    """transformers on an HF directory: text only, then with the image (pixel_values padded to 4 tiles).

    `shift`: transformers 5.24's MllamaVisionEncoder collects each layer's OUTPUT as hidden_states[i] (no input
    embedding first), so `intermediate_layers_indices` i reads the features Meta's code (and transformers 4.x,
    whose convention the published configs' [3, 7, 15, 23, 30] follow) takes at i + 1: the same regression
    transformers#40083 fixed once. llamakit writes Meta's indices, as the HF release does; to judge the weights
    the test runs transformers with the indices moved down by one (`test_transformers_intermediate_off_by_one`
    keeps the difference visible)."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    from llamakit.convert.keymap import supported_aspect_ratios

    cfg = MllamaConfig.from_pretrained(d)
    if shift:
        cfg.vision_config.intermediate_layers_indices = [i - 1 for i in cfg.vision_config.intermediate_layers_indices]
    model = MllamaForConditionalGeneration.from_pretrained(d, config=cfg, dtype=torch.float32).eval()
    b, n = tokens.shape
    T = 4
    pixels = torch.zeros(b, 1, T, 3, 28, 28)
    pixels[:, 0, :len(tiles)] = tiles
    ar_ids = torch.full((b, 1), supported_aspect_ratios(T).index(AR) + 1)
    ar_mask = torch.zeros(b, 1, T, dtype=torch.long)
    ar_mask[:, 0, :len(tiles)] = 1
    xmask = torch.zeros(b, n, 1, T, dtype=torch.long)
    xmask[:, IMAGE_AT:, 0, :len(tiles)] = 1
    with torch.inference_mode():
        text = model(input_ids=tokens).logits.float()
        image = model(input_ids=tokens, pixel_values=pixels, aspect_ratio_ids=ar_ids, aspect_ratio_mask=ar_mask,
                      cross_attention_mask=xmask).logits.float()
        spread = model(input_ids=tokens, pixel_values=pixels, aspect_ratio_ids=ar_ids, aspect_ratio_mask=ar_mask,
                       cross_attention_mask=xmask, position_ids=SPREAD.expand(b, -1)).logits.float()
    return {"text": text, "image": image, "spread": spread}


def _close(a, b, rel=2e-4):
    return (a - b).abs().max().item() <= rel * b.abs().max().item()


_WRITTEN: dict = {}


def _written(factory, mp: int):
    """Meta's code writes the tiny checkpoint at model-parallel degree `mp` (fairscale splits it) and runs it."""
    if mp not in _WRITTEN:
        tmp = factory.mktemp(f"mllama-mp{mp}")
        tokens, tiles = _inputs(tmp / "inputs.pt")
        oracle.launch("write", tmp / "meta", tmp / "inputs.pt", tmp / "meta.pt", nproc=mp)
        _WRITTEN[mp] = (tmp, tokens, tiles, torch.load(tmp / "meta.pt", weights_only=True))
    return _WRITTEN[mp]


@pytest.fixture(scope="module", params=[1, pytest.param(2, marks=pytest.mark.slow)], ids=["mp1", "mp2"])
def written_mp(request, tmp_path_factory):
    return request.param, _written(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return _written(tmp_path_factory, 1)


def test_meta_code_and_transformers_agree_both_ways(written_mp):
    from llamakit.convert.api import convert

    mp, (tmp, tokens, tiles, meta) = written_mp
    assert not _close(meta["text"], meta["image"])  # the image changes the logits: the vision path is exercised
    assert not _close(meta["spread"], meta["image"])  # and the positions change them: rotary is exercised
    r = convert(tmp / "meta", tmp / "hf", to="hf", show_progress=False)
    assert r.mp_in == mp and r.check["bit_identical"] and "Llama 3.2 Vision layout: 4 text layers, cross-attention at layers [1, 4]" \
        in r.generation
    cfg = json.loads((tmp / "hf" / "config.json").read_text())
    assert cfg["text_config"]["rope_parameters"]["rope_type"] == "llama3"  # decided by decide.py (errata)
    hf = _hf_logits(tmp / "hf", tokens, tiles)
    for kind in ("text", "image", "spread"):
        assert _close(hf[kind], meta[kind]), (kind, (hf[kind] - meta[kind]).abs().max())

    back = convert(tmp / "hf", tmp / "back", to="meta", mp=mp, show_progress=False)
    assert back.check["bit_identical"] and back.mp_out == mp
    oracle.launch("forward", tmp / "back", tmp / "inputs.pt", tmp / "back.pt", nproc=mp)
    again = torch.load(tmp / "back.pt", weights_only=True)
    for kind in ("text", "image", "spread"):
        assert _close(again[kind], meta[kind]), kind
    # HF → Meta → HF is bit-identical: the same tensors, byte for byte
    convert(tmp / "back", tmp / "hf2", to="hf", show_progress=False)
    from safetensors.torch import load_file

    a, b = load_file(tmp / "hf" / "model.safetensors"), load_file(tmp / "hf2" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("wrong", ["cross_layers", "tile_order", "gate_swap", "rope_factor"])
def test_a_wrong_mapping_is_caught(written, monkeypatch, tmp_path, wrong):
    """Cross-attention layers placed one slot late, the tile grid read column-major, the two cross-attention gates
    swapped, or rope scaling factor 32 instead of the errata's 8: transformers' logits on the output no longer match
    Meta's, so the oracle comparison above can fail for each of these reasons."""
    from llamakit.convert import keymap
    from llamakit.convert.api import convert

    tmp, tokens, tiles, meta = written
    if wrong == "cross_layers":
        real = keymap.mllama_hf_layer
        monkeypatch.setattr(keymap, "mllama_hf_layer",
                            lambda kind, i, s: real(kind, i, s) + (1 if kind == "xattn" else 0) - (
                                1 if kind == "text" and real(kind, i, s) - 1 in [x + k for k, x in enumerate(s)] else 0))
        kind = "image"
    elif wrong == "tile_order":
        real = keymap.tiles_to_hf
        monkeypatch.setattr(keymap, "tiles_to_hf", lambda g: real(g.transpose(0, 1)))
        kind = "image"
    elif wrong == "gate_swap":
        swap = {"cross_attn_attn_gate": "cross_attn_mlp_gate", "cross_attn_mlp_gate": "cross_attn_attn_gate"}
        rules = tuple(r.__class__(r.meta, r.hf.rsplit(".", 1)[0] + "." + swap[r.hf.rsplit(".", 1)[1]], r.split, r.layers)
                      if r.hf.rsplit(".", 1)[1] in swap else r for r in keymap.MLLAMA_RULES)
        monkeypatch.setattr(keymap, "MLLAMA_RULES", rules)
        kind = "image"
    convert(tmp / "meta", tmp_path / "hf", to="hf", check=False, show_progress=False)
    monkeypatch.undo()
    if wrong == "rope_factor":
        cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
        assert cfg["text_config"]["rope_parameters"]["factor"] == 8.0
        cfg["text_config"]["rope_parameters"]["factor"] = 32.0
        (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
        kind = "spread"
    hf = _hf_logits(tmp_path / "hf", tokens, tiles)
    assert not _close(hf[kind], meta[kind])


def test_transformers_intermediate_off_by_one(written):
    """With the published (Meta's) indices transformers 5.24 differs on images only; when a transformers release
    fixes its vision encoder this fails, and the shift in `_hf_logits` goes."""
    from llamakit.convert.api import convert

    tmp, tokens, tiles, meta = written
    if not (tmp / "hf").is_dir():
        convert(tmp / "meta", tmp / "hf", to="hf", show_progress=False)
    hf = _hf_logits(tmp / "hf", tokens, tiles, shift=False)
    assert _close(hf["text"], meta["text"]) and not _close(hf["image"], meta["image"])


def test_cli_says_what_it_detected(written, monkeypatch, capsys, tmp_path):
    from llamakit.cli import main

    tmp = written[0]
    monkeypatch.setattr("sys.argv", ["llamakit", "convert", str(tmp / "meta"), str(tmp_path / "hf"), "--to", "hf"])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    assert exc.value.code in (0, None), out.err
    said = " ".join((out.out + out.err).split())  # the console wraps long lines
    assert ("Llama 3.2 Vision layout: 4 text layers, cross-attention at layers [1, 4] of 6, vision encoder 4+2 layers "
            "× 32") in said
    assert "llama3-rope-constants" in said  # the rope scaling came from the errata, via decide.py


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_inputs_are_refused_in_one_line(written, monkeypatch, capsys, tmp_path):
    from safetensors.torch import load_file, save_file

    from llamakit.convert.api import convert
    from tests.convert.test_errors import assert_refused, run_cli

    tmp = written[0]
    # params.json that does not belong to the shards
    bad = _copy(tmp / "meta", tmp_path / "badparams")
    p = json.loads((bad / "params.json").read_text())
    p["vision_num_cross_attention_layers"] = 3
    (bad / "params.json").write_text(json.dumps(p))
    code, err = run_cli(monkeypatch, capsys, bad, tmp_path / "out", "--to", "hf")
    assert_refused(tmp_path, code, err, mentions=("params.json", "cross-attention"))
    # an HF tile table that no Meta grid can be: two aspect ratios disagree on a shared tile
    if not (tmp / "hf").is_dir():
        convert(tmp / "meta", tmp / "hf", to="hf", show_progress=False)
    hf = _copy(tmp / "hf", tmp_path / "badtiles")
    sd = load_file(hf / "model.safetensors")
    k = "vision_model.pre_tile_positional_embedding.embedding.weight"
    sd[k] = sd[k].clone()
    sd[k][2, :8] += 1  # ratio 1x2's first tile, which ratio 1x1 also holds
    save_file(sd, hf / "model.safetensors", metadata={"format": "pt"})
    code, err = run_cli(monkeypatch, capsys, hf, tmp_path / "out", "--to", "meta")
    assert_refused(tmp_path, code, err, mentions=(k, "disagrees"))


def test_transformers_5_key_names_are_read(written, tmp_path):
    """MllamaForConditionalGeneration.state_dict() names (model.language_model..., lm_head) convert like the Hub's
    (and a stated context length, which Meta's files do not carry, does not fail the read-back check)."""
    from safetensors.torch import load_file, save_file

    from llamakit.convert.api import convert

    tmp = written[0]
    if not (tmp / "hf").is_dir():
        convert(tmp / "meta", tmp / "hf", to="hf", show_progress=False)
    hf = _copy(tmp / "hf", tmp_path / "hf5")
    sd = load_file(hf / "model.safetensors")
    renamed = {("model." + k.replace("language_model.model.", "language_model.", 1) if not k.startswith("language_model.lm_head")
                else k.replace("language_model.", "", 1)): v for k, v in sd.items()}
    assert "lm_head.weight" in renamed and "model.language_model.norm.weight" in renamed
    save_file(renamed, hf / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((hf / "config.json").read_text())  # a context Meta's params.json cannot record: not a weight
    cfg["text_config"]["max_position_embeddings"] = 4096
    (hf / "config.json").write_text(json.dumps(cfg))
    r = convert(hf, tmp_path / "meta", to="meta", show_progress=False)
    from llamakit.convert.pth import load_pth

    want, got = load_pth(tmp / "meta" / "consolidated.00.pth"), load_pth(tmp_path / "meta" / "consolidated.00.pth")
    assert r.check["bit_identical"] and want.keys() == got.keys()
    tiles = [k for k in want if k.endswith(("gated_positional_embedding", "tile_pos_embed.embedding"))]
    assert all(torch.equal(want[k], got[k]) for k in want if k not in tiles)


def test_the_hub_single_file_name_converts_the_same(written, tmp_path):
    """The HF repos' original/ folder of Llama 3.2 Vision holds the MP-1 weights as consolidated.pth, where Meta's
    download names them consolidated.00.pth (transformers#35049): either name is the same checkpoint, same bytes."""
    from llamakit.convert.api import convert

    tmp = written[0]
    if not (tmp / "hf").is_dir():
        convert(tmp / "meta", tmp / "hf", to="hf", show_progress=False)
    hub = tmp_path / "original"
    hub.mkdir()
    for f in (tmp / "meta").iterdir():
        (hub / ("consolidated.pth" if f.name == "consolidated.00.pth" else f.name)).write_bytes(f.read_bytes())
    r = convert(hub, tmp_path / "hf", to="hf", show_progress=False)
    assert r.mp_in == 1 and r.check["bit_identical"]
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == (tmp / "hf" / "model.safetensors").read_bytes()


def test_info_local_describes_both_layouts(written):
    from llamakit.convert.api import convert
    from llamakit.describe import describe_local

    tmp = written[0]
    if not (tmp / "hf").is_dir():
        convert(tmp / "meta", tmp / "hf", to="hf", show_progress=False)
    for d in ("meta", "hf"):
        assert describe_local(tmp / d)["generation"].startswith("Llama 3.2 Vision layout: 4 text layers")
