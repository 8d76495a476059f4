"""Llama 4's vision encoder + projector: its hyperparameters (Meta's params.json `vision_args` ⇄ transformers'
Llama4VisionConfig), the shapes of its tensors, and the image token ids of the multimodal HF config.

Meta's llama-models `llama4/args.py` VisionArgs states image and patch size as height/width, the
encoder MLP as `mlp_ratio` and one `output_dim` for the pixel-shuffle adapter; transformers states
square sizes, one `intermediate_size` (used both as the encoder MLP width and as the adapter's input
width, so Meta's `mlp_ratio·dim` must equal `dim / pixel_shuffle_ratio²`), and the adapter's widths
as projector_input_dim / projector_output_dim / vision_output_dim (all Meta's `output_dim`). The
vision rope's theta is a constant in Meta's encoder.py (10000); HF's config states it.

Meta's tokenizer (llama4/tokenizer.py) puts its 2048 special tokens after the BPE ranks, so the
image tokens' ids follow from the number of ranks (`vocab_size - 2048` in Meta's releases).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from llamakit.errors import ConversionError, InputFileError

VISION_ROPE_THETA = 10000.0  # llama4/vision/encoder.py VisionEncoder.get_rope_freqs
N_SPECIAL = 2048  # llama4/tokenizer.py Tokenizer.num_reserved_special_tokens
# Offsets after the BPE ranks (BASIC_SPECIAL_TOKENS, then LLAMA4_TEXT_POST_TRAIN_SPECIAL_TOKENS, then vision's)
_IMAGE_START, _IMAGE_END, _PATCH = 5 + 75 + 0, 5 + 75 + 1, 5 + 75 + 12


@dataclass(frozen=True)
class VisionArch:
    image_size: int
    patch_size: int
    dim: int
    n_layers: int
    n_heads: int
    mlp_ratio: float
    output_dim: int
    pixel_shuffle_ratio: float

    @property
    def hidden(self) -> int:
        """The encoder MLP's width (HF intermediate_size), as encoder.py's _TransformerBlock computes it."""
        return int(self.mlp_ratio * self.dim)

    @property
    def adapter_in(self) -> int:
        """The adapter's input width after pixel shuffle, as embedding.py's PixelShuffleMLP computes it."""
        return int(self.dim // (self.pixel_shuffle_ratio ** 2))

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        tokens = int(self.n_patches * self.pixel_shuffle_ratio ** 2)
        return (f"vision encoder ({self.n_layers} layers, {self.image_size}px tiles in {self.patch_size}px patches, "
                f"{tokens} image tokens per tile)")

    def shape(self, hf_name: str, text_dim: int) -> tuple[int, ...]:
        """The HF (merged) shape of a vision tensor, by its HF name."""
        D = self.dim
        table = (("patch_embedding", (D, 3 * self.patch_size ** 2)), ("class_embedding", (D,)),
                 ("positional_embedding_vlm", (self.n_patches + 1, D)), ("vision_adapter.mlp.fc1", (self.output_dim, self.adapter_in)),
                 ("vision_adapter.mlp.fc2", (self.output_dim, self.output_dim)),
                 ("multi_modal_projector", (text_dim, self.output_dim)), ("mlp.fc1.weight", (self.hidden, D)),
                 ("mlp.fc1.bias", (self.hidden,)), ("mlp.fc2.weight", (D, self.hidden)), ("_proj.weight", (D, D)))
        for key, shape in table:
            if key in hf_name:
                return shape
        return (D,)  # biases of q/k/v/o and fc2, layer norms

    def check_mp(self, mp: int, *, path=None) -> None:
        """Meta's fairscale layers split the encoder's heads, widths and the projector's output across MP ranks."""
        from llamakit.errors import UsageError

        sizes = {"vision heads": self.n_heads, "vision MLP width": self.hidden, "vision output width": self.output_dim}
        bad = [f"{n} {what}" for what, n in sizes.items() if n % mp]
        if bad:
            raise UsageError(f"--mp {mp} does not divide the vision encoder's {', '.join(bad)}", path=path,
                             fix="choose an --mp that divides them")

    # -- Meta params.json vision_args ----------------------------------------------

    @classmethod
    def from_params(cls, v: dict, *, path: Path) -> "VisionArch":
        try:
            img, patch = v["image_size"], v["patch_size"]
            if img["height"] != img["width"] or patch["height"] != patch["width"]:
                raise ConversionError(f"a non-square image ({img}) or patch ({patch}) size: transformers' "
                                      "Llama4VisionConfig states one side", path=path)
            a = cls(image_size=int(img["height"]), patch_size=int(patch["height"]), dim=int(v["dim"]),
                    n_layers=int(v["n_layers"]), n_heads=int(v["n_heads"]), mlp_ratio=float(v["mlp_ratio"]),
                    output_dim=int(v["output_dim"]), pixel_shuffle_ratio=float(v["pixel_shuffle_ratio"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputFileError(f"params.json's vision_args is not Meta's VisionArgs ({exc!r})", path=path) from None
        if a.hidden != a.adapter_in:
            raise ConversionError(f"vision mlp_ratio·dim = {a.hidden} but dim/pixel_shuffle_ratio² = {a.adapter_in}: "
                                  "transformers' Llama4VisionConfig has one intermediate_size for both", path=path)
        return a

    def to_params(self) -> dict:
        return {"image_size": {"height": self.image_size, "width": self.image_size},
                "patch_size": {"height": self.patch_size, "width": self.patch_size}, "dim": self.dim,
                "n_layers": self.n_layers, "n_heads": self.n_heads, "mlp_ratio": self.mlp_ratio,
                "output_dim": self.output_dim, "pixel_shuffle_ratio": self.pixel_shuffle_ratio}

    # -- transformers Llama4VisionConfig ----------------------------------------------

    def to_hf_config(self) -> dict:
        return {"model_type": "llama4_vision_model", "hidden_size": self.dim, "num_hidden_layers": self.n_layers,
                "num_attention_heads": self.n_heads, "intermediate_size": self.hidden, "num_channels": 3,
                "image_size": self.image_size, "patch_size": self.patch_size,
                "pixel_shuffle_ratio": self.pixel_shuffle_ratio, "projector_input_dim": self.output_dim,
                "projector_output_dim": self.output_dim, "vision_output_dim": self.output_dim,
                "hidden_act": "gelu", "norm_eps": 1e-5, "multi_modal_projector_bias": False,
                "projector_dropout": 0.0, "attention_dropout": 0.0, "vision_feature_select_strategy": "default",
                "rope_parameters": {"rope_type": "default", "rope_theta": VISION_ROPE_THETA}}

    @classmethod
    def from_hf_config(cls, c: dict, *, path: Path) -> "VisionArch":
        try:
            dim, inter, ps = int(c["hidden_size"]), int(c["intermediate_size"]), float(c["pixel_shuffle_ratio"])
            outs = {int(c[k]) for k in ("projector_input_dim", "projector_output_dim", "vision_output_dim")}
            theta = float((c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta", VISION_ROPE_THETA)))
            a = cls(image_size=int(c["image_size"]), patch_size=int(c["patch_size"]), dim=dim,
                    n_layers=int(c["num_hidden_layers"]), n_heads=int(c["num_attention_heads"]), mlp_ratio=inter / dim,
                    output_dim=outs.pop(), pixel_shuffle_ratio=ps)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputFileError(f"vision_config is not a Llama4VisionConfig ({exc!r})", path=path) from None
        why = ("projector_input_dim, projector_output_dim and vision_output_dim differ (Meta has one output_dim)" if outs
               else f"intermediate_size {inter} is not hidden_size/pixel_shuffle_ratio² ({a.adapter_in})" if a.hidden != a.adapter_in
               else f"vision rope_theta {theta:g} (Meta's encoder hard-codes {VISION_ROPE_THETA:g})" if theta != VISION_ROPE_THETA
               else f"hidden_act {c.get('hidden_act')!r}" if c.get("hidden_act", "gelu") != "gelu"
               else "a projector bias" if c.get("multi_modal_projector_bias") else None)
        if why:
            raise ConversionError(f"a vision encoder Meta's Llama 4 code cannot express: {why}", path=path)
        return a


def image_token_ids(vocab_size: int, n_ranks: int | None = None) -> dict:
    """boi/eoi/image token ids of Llama4Config: Meta's tokenizer numbers its specials after the BPE ranks
    (`n_ranks`, from tokenizer.model when there is one; else vocab_size - 2048, as every Meta release has it)."""
    base = n_ranks if n_ranks is not None else vocab_size - N_SPECIAL
    if base < 0 or base + _PATCH >= vocab_size:
        return {}
    return {"boi_token_index": base + _IMAGE_START, "eoi_token_index": base + _IMAGE_END, "image_token_index": base + _PATCH}


def vision_config_of(path: Path) -> dict | None:
    """The vision_config of a multimodal Llama 4 config.json (None for a text-only one)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(f"unreadable config.json: {exc}", path=path) from None
    return raw.get("vision_config") if raw.get("model_type") == "llama4" else None
