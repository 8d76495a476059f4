"""Llama 3.2 Vision (mllama) hyperparameters: params.json + the shapes ⇄ transformers' MllamaConfig.

The text model is a Llama 3.1-style `Arch` (its rope scaling decided by decide.py, as for any Llama 3
text model) plus the number of cross-attention layers; the vision encoder is described by `VisionArch`.
Meta's params.json states the text model, `vision_chunk_size` (the tile resolution) and the number of
cross-attention layers; llama-models 0.3.0 hard-codes the rest of the vision encoder in
CrossAttentionTransformerVision (`VISION_CONSTANTS`). Widths and depths are read from the tensors; the
two facts shapes cannot show (attention heads, which layers feed the projector) are Meta's constants unless
params.json carries llamakit's `vision_*` keys, which llamakit writes only for models that depart from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from llamakit.convert import keymap
from llamakit.convert.arch import Arch
from llamakit.errors import ConversionError, InputFileError

# llama-models 0.3.0 llama3/multimodal/model.py CrossAttentionTransformerVision + VisionEncoder defaults
VISION_CONSTANTS = {"heads": 16, "intermediate": (3, 7, 15, 23, 30), "patch": 14, "max_tiles": 4, "width": 1280,
                    "layers": 32, "global_layers": 8}
PARAMS_VISION_KEYS = {"heads": "vision_heads", "intermediate": "vision_intermediate_layers"}


@dataclass(frozen=True)
class VisionArch:
    width: int
    layers: int
    global_layers: int
    heads: int
    hidden: int  # MLP hidden size (Meta: mlp_ratio 4 × width)
    patch: int
    image_size: int  # one tile's resolution (params.json vision_chunk_size)
    max_tiles: int
    intermediate: tuple[int, ...]  # local-transformer layers whose inputs join the projector's input

    @property
    def num_patches(self) -> int:  # per tile, with the class token
        return (self.image_size // self.patch) ** 2 + 1

    @property
    def out_dim(self) -> int:
        return (len(self.intermediate) + 1) * self.width


@dataclass(frozen=True)
class MllamaArch:
    text: Arch  # n_layers: Meta's self-attention layers
    n_cross: int
    vision: VisionArch
    new_tokens: int = 8  # learnable_embedding rows (image tokens), appended to HF's embed_tokens

    @property
    def schedule(self) -> list[int]:
        return keymap.fusion_schedule(self.text.n_layers, self.n_cross)

    @property
    def cross_hf(self) -> list[int]:
        return keymap.cross_attention_hf_layers(self.schedule)

    def with_(self, **changes) -> "MllamaArch":
        return replace(self, **changes)

    def describe(self) -> str:
        v = self.vision
        return (f"Llama 3.2 Vision layout: {self.text.n_layers} text layers, cross-attention at layers "
                f"{self.cross_hf} of {self.text.n_layers + self.n_cross}, vision encoder {v.layers}+{v.global_layers} "
                f"layers × {v.width} ({v.max_tiles} tiles of {v.image_size}px, patch {v.patch}), projector "
                f"{v.out_dim}→{self.text.dim}")

    def to_json(self) -> dict:
        return {"text": self.text.to_json(), "n_cross": self.n_cross, "vision": self.vision.__dict__ | {},
                "new_tokens": self.new_tokens}

    def check_mp(self, mp: int, *, path=None) -> None:
        self.text.check_mp(mp, path=path)
        v = self.vision
        if v.width % mp or v.hidden % mp or v.heads % mp or self.new_tokens % mp or v.out_dim % mp:
            from llamakit.errors import UsageError

            raise UsageError(f"--mp {mp} does not divide the vision encoder's widths", path=path, fix="choose --mp 1")

    # -- Meta params.json --------------------------------------------------------------------------------

    def to_params(self) -> dict:
        from llamakit.convert.decide import params_json

        p = params_json(self.text)
        p["vision_chunk_size"] = self.vision.image_size
        p["vision_max_num_chunks"] = self.vision.max_tiles
        p["vision_num_cross_attention_layers"] = self.n_cross
        if self.vision.heads != VISION_CONSTANTS["heads"]:
            p["vision_heads"] = self.vision.heads
        if self.vision.intermediate != VISION_CONSTANTS["intermediate"]:
            p["vision_intermediate_layers"] = list(self.vision.intermediate)
        return p

    # -- transformers config.json ------------------------------------------------------------------------

    def to_hf_config(self, dtype: str) -> dict:
        t, v = self.text, self.vision
        # token ids Meta's files do not state are left to MllamaTextConfig's defaults (Llama 3's 128000/128001/128004)
        drop = ("architectures", "model_type", "head_dim", "attention_bias", "mlp_bias")
        text = {k: val for k, val in t.to_hf_config(dtype).items() if k not in drop and val is not None}
        if t.pad_token_id is None and t.vocab_size <= 128004:  # a vocabulary without Llama 3's pad id: none
            text["pad_token_id"] = None
        text.update(model_type="mllama_text_model", num_hidden_layers=t.n_layers + self.n_cross,
                    cross_attention_layers=self.cross_hf, tie_word_embeddings=False)
        vision = {"model_type": "mllama_vision_model", "hidden_size": v.width, "num_hidden_layers": v.layers,
                  "num_global_layers": v.global_layers, "attention_heads": v.heads, "intermediate_size": v.hidden,
                  "vision_output_dim": v.out_dim, "image_size": v.image_size, "patch_size": v.patch,
                  "max_num_tiles": v.max_tiles, "intermediate_layers_indices": list(v.intermediate),
                  "supported_aspect_ratios": [list(r) for r in keymap.supported_aspect_ratios(v.max_tiles)],
                  "num_channels": 3, "norm_eps": 1e-5, "hidden_act": "gelu", "dtype": dtype}
        return {"architectures": ["MllamaForConditionalGeneration"], "model_type": "mllama", "dtype": dtype,
                "image_token_index": t.vocab_size, "text_config": text, "vision_config": vision,
                "tie_word_embeddings": False}

    @classmethod
    def from_hf_config(cls, path: Path) -> "MllamaArch":
        try:
            raw = json.loads(Path(path).read_text())
            text, vision = raw["text_config"], raw["vision_config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputFileError(f"not an Mllama config.json ({exc})", path=path) from None
        rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
        theta = float(rope.get("rope_theta", text.get("rope_theta", 500000.0)))
        scaling = None
        if rope.get("rope_type", "default") == "llama3":
            scaling = {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                            "original_max_position_embeddings")}
        elif rope.get("rope_type", "default") != "default":
            raise ConversionError(f"rope_type {rope.get('rope_type')!r} has no Meta equivalent", path=path)
        cross = list(text["cross_attention_layers"])
        n_text = text["num_hidden_layers"] - len(cross)
        schedule = [c - k for k, c in enumerate(cross)]
        if schedule != keymap.fusion_schedule(n_text, len(cross)):
            raise ConversionError(f"cross_attention_layers {cross} are not where Meta's code puts {len(cross)} layers "
                                  f"among {n_text} ({keymap.cross_attention_hf_layers(keymap.fusion_schedule(n_text, len(cross)))})",
                                  path=path, fix="Meta's CrossAttentionTransformer cannot express this model")
        heads = text["num_attention_heads"]
        arch = Arch(dim=text["hidden_size"], n_layers=n_text, n_heads=heads,
                    n_kv_heads=text.get("num_key_value_heads") or heads, vocab_size=text["vocab_size"],
                    hidden_dim=text["intermediate_size"], norm_eps=float(text.get("rms_norm_eps", 1e-5)),
                    rope_theta=theta, rope_scaling=scaling, tied=False,
                    max_position_embeddings=text.get("max_position_embeddings", 131072),
                    bos_token_id=text.get("bos_token_id"), eos_token_id=text.get("eos_token_id"),
                    pad_token_id=text.get("pad_token_id"))
        ratios = [tuple(r) for r in vision.get("supported_aspect_ratios") or []]
        tiles = vision.get("max_num_tiles", 4)
        if ratios and ratios != keymap.supported_aspect_ratios(tiles):
            raise ConversionError(f"supported_aspect_ratios {ratios} differ from every ratio of up to {tiles} tiles",
                                  path=path, fix="Meta's tile grid holds exactly those")
        v = VisionArch(width=vision["hidden_size"], layers=vision["num_hidden_layers"],
                       global_layers=vision["num_global_layers"], heads=vision["attention_heads"],
                       hidden=vision["intermediate_size"], patch=vision["patch_size"], image_size=vision["image_size"],
                       max_tiles=tiles, intermediate=tuple(vision["intermediate_layers_indices"]))
        if v.out_dim != vision.get("vision_output_dim", v.out_dim):
            raise ConversionError(f"vision_output_dim {vision['vision_output_dim']} is not (len(intermediate) + 1) × "
                                  f"hidden_size = {v.out_dim}", path=path)
        return cls(arch, len(cross), v)


def from_params(params: dict, shapes: dict[str, tuple[int, ...]], *, path: Path, mp: int) -> MllamaArch:
    """What params.json states plus what the (merged) tensor shapes show; text rope not yet decided."""
    from llamakit.convert.arch import meta_ffn_dim

    def shape(key):
        if key not in shapes:
            raise ConversionError(f"no '{key}': not a Llama 3.2 Vision checkpoint", path=path)
        return shapes[key]

    V, D = shape("text_model.tok_embeddings.weight")
    F = shape("text_model.layers.0.feed_forward.w1.weight")[0]
    expected = meta_ffn_dim(params["dim"], params.get("multiple_of", 256), params.get("ffn_dim_multiplier"))
    if expected != F or D != params["dim"]:
        raise ConversionError(f"params.json gives dim {params['dim']} / FFN {expected} but the weights have {D} / {F}",
                              path=path, fix="the params.json does not belong to these shards")
    n_text = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("text_model.layers."))
    n_cross = len({k.split(".")[2] for k in shapes if k.startswith("text_model.cross_attention_layers.")})
    if n_text != params["n_layers"] or n_cross != params.get("vision_num_cross_attention_layers", n_cross):
        raise ConversionError(f"params.json says {params['n_layers']} text / "
                              f"{params.get('vision_num_cross_attention_layers')} cross-attention layers, the shards "
                              f"hold {n_text} / {n_cross}", path=path, fix="the params.json does not belong to these shards")
    enc = "vision_model.vision_encoder."
    W = shape(enc + "class_embedding")[0]
    T, _, P, _ = shape(enc + "gated_positional_embedding")
    patch = int(round((shape(enc + "conv1._linear.weight")[1] // 3) ** 0.5))
    image = params.get("vision_chunk_size", -1)
    grid = int(round((P - 1) ** 0.5))
    if image // patch != grid:
        raise ConversionError(f"params.json vision_chunk_size {image} with patch {patch} gives a {image // patch}² grid, "
                              f"the position embeddings have {grid}²", path=path)
    count = lambda p: len({k.split(".")[4] for k in shapes if k.startswith(enc + p + ".resblocks.")})  # noqa: E731
    inter = params.get(PARAMS_VISION_KEYS["intermediate"], VISION_CONSTANTS["intermediate"])
    vis = VisionArch(width=W, layers=count("transformer"), global_layers=count("global_transformer"),
                     heads=params.get(PARAMS_VISION_KEYS["heads"], VISION_CONSTANTS["heads"]),
                     hidden=shape(enc + "transformer.resblocks.0.mlp.c_fc.weight")[0], patch=patch, image_size=image,
                     max_tiles=T, intermediate=tuple(inter))
    proj_in = shape("vision_model.vision_projection.weight")[1]
    if proj_in != vis.out_dim or W % vis.heads:
        raise ConversionError(f"the projector takes {proj_in} features, {len(vis.intermediate)} intermediate layers "
                              f"of width {W} give {vis.out_dim} (heads {vis.heads})", path=path,
                              fix="add vision_intermediate_layers / vision_heads to params.json")
    n_new = shape("text_model.learnable_embedding.weight")[0]
    heads = params["n_heads"]
    text = Arch(dim=D, n_layers=n_text, n_heads=heads, n_kv_heads=params.get("n_kv_heads") or heads, vocab_size=V,
                hidden_dim=F, norm_eps=float(params.get("norm_eps", 1e-5)),
                rope_theta=float(params.get("rope_theta", 500000.0)), max_position_embeddings=8192)
    return MllamaArch(text, n_cross, vis, n_new)


def from_release(rel, *, image_size: int = 560) -> MllamaArch:
    """A catalog release's architecture at full size, the vision encoder as Meta's code builds it (tile size 560,
    as the HF releases' image_size; llama-models' sku_list says 448 for 11B, and no weight depends on it but
    the 1025-row position tables)."""
    from llamakit.convert.arch import meta_ffn_dim

    m, c = rel.meta, VISION_CONSTANTS
    text = Arch(dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads or m.n_heads,
                vocab_size=m.vocab_size, hidden_dim=meta_ffn_dim(m.dim, m.multiple_of, m.ffn_dim_multiplier),
                norm_eps=m.norm_eps, rope_theta=m.rope_theta, max_position_embeddings=rel.context_length or 131072)
    vision = VisionArch(width=c["width"], layers=c["layers"], global_layers=c["global_layers"], heads=c["heads"],
                        hidden=4 * c["width"], patch=c["patch"], image_size=image_size, max_tiles=c["max_tiles"],
                        intermediate=c["intermediate"])
    return MllamaArch(text, rel.vision.cross_attention_layers, vision)
