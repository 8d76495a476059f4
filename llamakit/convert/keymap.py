"""The one Meta ⇄ HF ⇄ GGUF key map, and the pure tensor transforms it names.

Every conversion in this package goes through `RULES`: each row says what a tensor is
called in Meta's consolidated checkpoints, in a transformers `LlamaForCausalLM` state
dict and in a llama.cpp GGUF, along which dim Meta's model-parallel code splits it
(None: every shard holds a full copy), and which layout change it needs between the
formats. The reverse direction is the same table read the other way, so there is no
second map to drift out of sync.

The canonical form the converters pass around is the *merged Meta* state dict: Meta
names, Meta's interleaved rotary layout, one full tensor per key. GGUF stores q/k in
that same interleaved layout (llama.cpp permutes HF checkpoints back to it), so only
the HF side ever permutes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llamakit.errors import UnknownKeyError

if TYPE_CHECKING:
    import torch

# Split-dim sentinel: tok_embeddings is split along dim 1 by Llama 1/2's ParallelEmbedding
# and along dim 0 (the vocabulary) by Llama 3's VocabParallelEmbedding.
EMBED = "embed"

# Tensors recomputed from the config, never converted: Llama 1's precomputed rotary
# frequencies, and the rotary buffers old transformers versions saved in state dicts.
DROPPED_META = frozenset({"rope.freqs"})
_DROPPED_HF = re.compile(r"^model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$")


def is_dropped(key: str, fmt: str) -> bool:
    return key in DROPPED_META if fmt == "meta" else bool(fmt == "hf" and _DROPPED_HF.match(key))


@dataclass(frozen=True)
class Rule:
    meta: str
    hf: str
    gguf: str
    shape: tuple[str, ...]  # full shape in symbols: V vocab, D dim, F FFN hidden, Q n_heads·head_dim, K n_kv_heads·head_dim
    split: int | str | None  # MP split dim in Meta shards; EMBED; None = replicated
    rope: str | None = None  # "q" | "k": Meta/GGUF interleaved rotary pairs ⇄ HF half-split halves
    optional: bool = False  # absent when the embeddings are tied


RULES: tuple[Rule, ...] = (
    Rule("tok_embeddings.weight", "model.embed_tokens.weight", "token_embd.weight", ("V", "D"), EMBED),
    Rule("layers.{i}.attention_norm.weight", "model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", ("D",), None),
    Rule("layers.{i}.attention.wq.weight", "model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", ("Q", "D"), 0, rope="q"),
    Rule("layers.{i}.attention.wk.weight", "model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", ("K", "D"), 0, rope="k"),
    Rule("layers.{i}.attention.wv.weight", "model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight", ("K", "D"), 0),
    Rule("layers.{i}.attention.wo.weight", "model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight", ("D", "Q"), 1),
    Rule("layers.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight", ("D",), None),
    Rule("layers.{i}.feed_forward.w1.weight", "model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight", ("F", "D"), 0),
    Rule("layers.{i}.feed_forward.w2.weight", "model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", ("D", "F"), 1),
    Rule("layers.{i}.feed_forward.w3.weight", "model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", ("F", "D"), 0),
    Rule("norm.weight", "model.norm.weight", "output_norm.weight", ("D",), None),
    Rule("output.weight", "lm_head.weight", "output.weight", ("V", "D"), 0, optional=True),
)

FORMATS = ("meta", "hf", "gguf")


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


_MATCHERS = {fmt: [(_compile(getattr(r, fmt)), r) for r in RULES] for fmt in FORMATS}


def lookup(key: str, fmt: str, *, path=None) -> tuple[Rule, int | None]:
    """The rule for `key` (named in format `fmt`) and its layer index, or UnknownKeyError."""
    for pattern, rule in _MATCHERS[fmt]:
        m = pattern.match(key)
        if m:
            return rule, (int(m.group("i")) if "i" in pattern.groupindex else None)
    raise UnknownKeyError(key, path=path, direction=f"{fmt} checkpoint")


def rename(key: str, src: str, dst: str, *, path=None) -> str:
    rule, layer = lookup(key, src, path=path)
    return name_of(rule, dst, layer)


def name_of(rule: Rule, fmt: str, layer: int | None) -> str:
    pattern = getattr(rule, fmt)
    return pattern.format(i=layer) if layer is not None else pattern


def canonical_keys(n_layers: int, *, tied: bool) -> list[str]:
    """Every Meta key of a model, in model order (embeddings, layers, norm, output)."""
    layer_rules = [r for r in RULES if "{i}" in r.meta]
    keys: list[str] = []
    for rule in RULES:
        if rule is layer_rules[0]:
            keys += [r.meta.format(i=i) for i in range(n_layers) for r in layer_rules]
        elif rule not in layer_rules and not (rule.optional and tied):
            keys.append(rule.meta)
    return keys


def split_dim(rule: Rule, *, legacy_embedding: bool) -> int | None:
    if rule.split == EMBED:
        return 1 if legacy_embedding else 0
    return rule.split


# --- rotary layout --------------------------------------------------------------
# Meta rotates adjacent pairs (x0,x1),(x2,x3)... of each head (view_as_complex); HF's
# rotate_half pairs x_j with x_{j+d/2}. Moving row 2j+c of a head to row c*d/2+j converts
# one to the other exactly. It acts on each head alone, so it needs only the head size:
# q (n_heads heads), k (n_kv_heads under GQA) and any block of whole heads all work alike, on
# torch tensors and numpy arrays alike (reshape + swapaxes).


def interleaved_to_half(w: "torch.Tensor", n_heads: int) -> "torch.Tensor":
    out, rest = w.shape[0], w.shape[1:]
    return w.reshape(n_heads, out // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(out, *rest)


def half_to_interleaved(w: "torch.Tensor", n_heads: int) -> "torch.Tensor":
    out, rest = w.shape[0], w.shape[1:]
    return w.reshape(n_heads, 2, out // n_heads // 2, *rest).swapaxes(1, 2).reshape(out, *rest)


def to_hf_layout(rule: Rule, w: "torch.Tensor", head_dim: int) -> "torch.Tensor":
    """Meta/GGUF layout → HF layout, for a whole tensor or any dim-0 block of whole heads of it."""
    return interleaved_to_half(w, w.shape[0] // head_dim) if rule.rope else w


def from_hf_layout(rule: Rule, w: "torch.Tensor", head_dim: int) -> "torch.Tensor":
    """HF layout → Meta/GGUF layout, for a whole tensor or any dim-0 block of whole heads of it."""
    return half_to_interleaved(w, w.shape[0] // head_dim) if rule.rope else w


def hf_row_order(rule: Rule, n_rows: int, head_dim: int) -> list[int]:
    """Row i of the HF tensor is row order[i] of the Meta one: `to_hf_layout` applied to the row numbers,
    so a writer that moves whole rows (copy_file_range) permutes exactly as the tensor path does. (numpy,
    not torch: the same reshapes, and a byte-copying conversion never has to import torch.)"""
    import numpy as np

    return to_hf_layout(rule, np.arange(n_rows).reshape(n_rows, 1), head_dim).reshape(n_rows).tolist()


# --- Llama 4 (Scout, Maverick): the layout Meta ships ⇄ transformers' Llama4 ------------------------
# Meta's Llama 4 files store fused tensors that llama-models' load hooks split into its modules
# (llama4/model.py Attention + TransformerBlock, ffn.py, moe.py). Each row relates ONE shipped Meta
# tensor to one HF tensor, or to the part of one HF tensor it fills:
#   take   the shipped tensor of each MP shard is a dim-0 concatenation of sections ("qkv": that shard's
#          q, k and v rows; "halves": w1 then w3) and this row is section `index` of it;
#   experts the shipped tensor is 2-D (e·X, Y) and means (e, X, Y) (the `view` in moe.py's hook);
#   split  the dim along which MP shards hold pieces of the merged tensor (after the experts view);
#   transpose HF stores the transpose (router: Meta D×E, HF E×D);
#   slot   HF concatenates several rows along its last dim (experts.gate_up_proj = [w1 | w3]);
#   part   "text" (the decoder; {i} a decoder layer) or "vision" (the encoder + projector; {i} an encoder layer).
# No rotary permutation: transformers' Llama 4 rotates interleaved pairs (view_as_complex) as Meta does, in the
# decoder and in the vision encoder (its 2-D rope) alike.
# Text HF names are the text model's (Llama4ForCausalLM); the multimodal layout (Llama4ForConditionalGeneration)
# prefixes them with "language_model." (HF_TEXT_PREFIX). Vision rows are named as that layout names them.


@dataclass(frozen=True)
class L4Rule:
    meta: str
    hf: str
    split: int | None
    layers: str = "all"  # "all" | "moe" | "dense": which decoder layers have the tensor
    take: tuple[str, int] | None = None
    experts: bool = False
    transpose: bool = False
    slot: int | None = None
    part: str = "text"


_FF = "layers.{i}.feed_forward."
_VE = "vision_embeddings.vision_encoder."
_HF_FF = "model.layers.{i}.feed_forward."
LLAMA4_RULES: tuple[L4Rule, ...] = (
    L4Rule("tok_embeddings.weight", "model.embed_tokens.weight", 0),
    L4Rule("layers.{i}.attention.wqkv.layer_norm_weight", "model.layers.{i}.input_layernorm.weight", None),
    L4Rule("layers.{i}.attention.wqkv.weight", "model.layers.{i}.self_attn.q_proj.weight", 0, take=("qkv", 0)),
    L4Rule("layers.{i}.attention.wqkv.weight", "model.layers.{i}.self_attn.k_proj.weight", 0, take=("qkv", 1)),
    L4Rule("layers.{i}.attention.wqkv.weight", "model.layers.{i}.self_attn.v_proj.weight", 0, take=("qkv", 2)),
    L4Rule("layers.{i}.attention.wo.weight", "model.layers.{i}.self_attn.o_proj.weight", 1),
    # dense layers (every layer of a model without MoE; between Maverick's MoE layers)
    L4Rule(_FF + "mlp.layer_norm_weight", "model.layers.{i}.post_attention_layernorm.weight", None, "dense"),
    L4Rule(_FF + "mlp.fc1_weight", _HF_FF + "gate_proj.weight", 0, "dense", take=("halves", 0)),
    L4Rule(_FF + "mlp.fc1_weight", _HF_FF + "up_proj.weight", 0, "dense", take=("halves", 1)),
    L4Rule(_FF + "mlp.fc2_weight", _HF_FF + "down_proj.weight", 1, "dense"),
    # MoE layers: router, shared expert, routed experts
    L4Rule(_FF + "norm.weight", "model.layers.{i}.post_attention_layernorm.weight", None, "moe"),
    L4Rule(_FF + "router_DE", _HF_FF + "router.weight", None, "moe", transpose=True),
    L4Rule(_FF + "w_in_shared_FD.weight", _HF_FF + "shared_expert.gate_proj.weight", 0, "moe"),
    L4Rule(_FF + "w_swiglu_FD.weight", _HF_FF + "shared_expert.up_proj.weight", 0, "moe"),
    L4Rule(_FF + "w_out_shared_DF.weight", _HF_FF + "shared_expert.down_proj.weight", 1, "moe"),
    L4Rule(_FF + "experts.moe_w_in_eD_F", _HF_FF + "experts.gate_up_proj", 2, "moe", experts=True, slot=0),
    L4Rule(_FF + "experts.moe_w_swiglu_eD_F", _HF_FF + "experts.gate_up_proj", 2, "moe", experts=True, slot=1),
    L4Rule(_FF + "experts.moe_w_out_eF_D", _HF_FF + "experts.down_proj", 1, "moe", experts=True),
    L4Rule("norm.weight", "model.norm.weight", None),
    L4Rule("output.weight", "lm_head.weight", 0),
    # Vision encoder (llama4/vision/encoder.py) + pixel-shuffle adapter (vision/embedding.py) + projector
    # (model.py Transformer.vision_projection): Meta ships the module names (no load hook fuses them; the encoder's
    # hook only resamples a `positional_embedding`, which the releases do not carry). Splits follow fairscale:
    # ColumnParallelLinear weight and bias on dim 0, RowParallelLinear weight on dim 1 and its bias replicated.
    *(L4Rule(_VE + m, "vision_model." + h, split, part="vision") for m, h, split in (
        ("conv1._linear.weight", "patch_embedding.linear.weight", 0),
        ("class_embedding", "class_embedding", None),
        ("positional_embedding_vlm", "positional_embedding_vlm", None),
        ("ln_pre.weight", "layernorm_pre.weight", None),
        ("ln_pre.bias", "layernorm_pre.bias", None),
        *((f"transformer.resblocks.{{i}}.{m}", f"model.layers.{{i}}.{h}", split) for m, h, split in (
            ("ln_1.weight", "input_layernorm.weight", None), ("ln_1.bias", "input_layernorm.bias", None),
            ("attn.wq.weight", "self_attn.q_proj.weight", 0), ("attn.wq.bias", "self_attn.q_proj.bias", 0),
            ("attn.wk.weight", "self_attn.k_proj.weight", 0), ("attn.wk.bias", "self_attn.k_proj.bias", 0),
            ("attn.wv.weight", "self_attn.v_proj.weight", 0), ("attn.wv.bias", "self_attn.v_proj.bias", 0),
            ("attn.wo.weight", "self_attn.o_proj.weight", 1), ("attn.wo.bias", "self_attn.o_proj.bias", None),
            ("ln_2.weight", "post_attention_layernorm.weight", None), ("ln_2.bias", "post_attention_layernorm.bias", None),
            ("mlp.c_fc.weight", "mlp.fc1.weight", 0), ("mlp.c_fc.bias", "mlp.fc1.bias", 0),
            ("mlp.c_proj.weight", "mlp.fc2.weight", 1), ("mlp.c_proj.bias", "mlp.fc2.bias", None))),
        ("ln_post.weight", "layernorm_post.weight", None),
        ("ln_post.bias", "layernorm_post.bias", None))),
    L4Rule("vision_embeddings.vision_adapter.mlp.c_fc.weight", "vision_model.vision_adapter.mlp.fc1.weight", 0, part="vision"),
    L4Rule("vision_embeddings.vision_adapter.mlp.c_proj.weight", "vision_model.vision_adapter.mlp.fc2.weight", 1, part="vision"),
    L4Rule("vision_projection.weight", "multi_modal_projector.linear_1.weight", 0, part="vision"),
)
HF_TEXT_PREFIX = "language_model."
# Shipped entries Meta's hooks discard (TransformerBlock.load_hook, Transformer.load_hook) and router
# statistics transformers' converter drops: not weights of the model.
LLAMA4_DROPPED = re.compile(r"(^|\.)(_extra_state|global_gate_stats_3E|running_gate_stats_3E|expert_activation_DE)$"
                            r"|^rope\.freqs$")


def llama4_layer_rules(kind: str) -> list[L4Rule]:
    """The per-layer rules of a dense ("dense") or MoE ("moe") decoder layer, or of a vision encoder layer
    ("vision"), in model order."""
    if kind == "vision":
        return [r for r in LLAMA4_RULES if "{i}" in r.meta and r.part == "vision"]
    return [r for r in LLAMA4_RULES if "{i}" in r.meta and r.part == "text" and r.layers in ("all", kind)]


def llama4_lookup(key: str, fmt: str, *, path=None) -> list[tuple[L4Rule, int | None]]:
    """Every Llama 4 rule naming `key` in `fmt` ('meta' | 'hf'), with its layer index; UnknownKeyError if none."""
    found = []
    for rule in LLAMA4_RULES:
        m = _compile(getattr(rule, fmt)).match(key)
        if m:
            found.append((rule, int(m.group("i")) if "i" in m.groupdict() else None))
    if not found:
        raise UnknownKeyError(key, path=path, direction=f"Llama 4 {fmt} checkpoint")
    return found


# --- Llama 3.2 Vision (mllama): Meta's CrossAttentionTransformer ⇄ transformers' Mllama ---------------------
# Meta's files are the state_dict of llama-models' multimodal CrossAttentionTransformer (llama3/generation.py
# loads them strictly, no load hooks rename anything): the text model keeps its self-attention layers
# (`text_model.layers.{i}`) and its cross-attention layers (`text_model.cross_attention_layers.{i}`) in two
# lists, the added image-token rows in `learnable_embedding`, and the vision encoder's tile position tables as
# (tiles, tiles, patches, width) grids. MllamaForConditionalGeneration (as save_pretrained writes it)
# interleaves both layer kinds in one `language_model.model.layers` list, keeps one embedding with the added
# rows appended, and stores each tile table precomputed per supported aspect ratio. Each row relates one Meta
# tensor to one HF tensor; `layers` says which list {i} counts in:
#   text | xattn  Meta's index in layers / cross_attention_layers; the HF index comes from `mllama_hf_layer`
#   local | global the vision encoder's transformer / global_transformer blocks (the same index in both)
#   transform  rope: q/k interleaved pairs → rotate_half halves (self-attention only: cross-attention has no
#              rotary); patch: Meta's unfold+linear (W, C·p·p) ⇄ HF's conv (W, C, p, p); tiles: the per-tile
#              grid ⇄ the per-aspect-ratio table (`tiles_to_hf`); rows: the Meta tensor is row block `slot` of
#              the HF tensor (embed_tokens = tok_embeddings rows, then learnable_embedding rows).
# split: the dim along which Meta's model-parallel shards hold pieces (None: replicated).


@dataclass(frozen=True)
class MRule:
    meta: str
    hf: str
    split: int | None
    layers: str = ""  # "" | "text" | "xattn" | "local" | "global"
    transform: str | None = None  # None | "rope" | "patch" | "tiles" | "rows"
    slot: int = 0


_T, _X, _V = "text_model.", "text_model.cross_attention_layers.{i}.", "vision_model.vision_encoder."
_HL, _HV = "language_model.model.layers.{i}.", "vision_model."


def _vision_block(meta: str, hf: str, kind: str, gated: bool) -> tuple[MRule, ...]:
    m, h = _V + meta + ".resblocks.{i}.", _HV + hf + ".layers.{i}."
    rows = [MRule(m + "attn.wq.weight", h + "self_attn.q_proj.weight", 0, kind),
            MRule(m + "attn.wk.weight", h + "self_attn.k_proj.weight", 0, kind),
            MRule(m + "attn.wv.weight", h + "self_attn.v_proj.weight", 0, kind),
            MRule(m + "attn.wo.weight", h + "self_attn.o_proj.weight", 1, kind),
            MRule(m + "mlp.c_fc.weight", h + "mlp.fc1.weight", 0, kind),
            MRule(m + "mlp.c_fc.bias", h + "mlp.fc1.bias", 0, kind),
            MRule(m + "mlp.c_proj.weight", h + "mlp.fc2.weight", 1, kind),
            MRule(m + "mlp.c_proj.bias", h + "mlp.fc2.bias", None, kind),
            MRule(m + "ln_1.weight", h + "input_layernorm.weight", None, kind),
            MRule(m + "ln_1.bias", h + "input_layernorm.bias", None, kind),
            MRule(m + "ln_2.weight", h + "post_attention_layernorm.weight", None, kind),
            MRule(m + "ln_2.bias", h + "post_attention_layernorm.bias", None, kind)]
    if gated:
        rows += [MRule(m + "gate_attn", h + "gate_attn", None, kind), MRule(m + "gate_ffn", h + "gate_ffn", None, kind)]
    return tuple(rows)


def _ffn(meta: str, kind: str) -> tuple[MRule, ...]:
    """The SwiGLU feed-forward of a decoder layer (both kinds have Meta's FeedForward)."""
    return (MRule(meta + "ffn_norm.weight", _HL + "post_attention_layernorm.weight", None, kind),
            MRule(meta + "feed_forward.w1.weight", _HL + "mlp.gate_proj.weight", 0, kind),
            MRule(meta + "feed_forward.w2.weight", _HL + "mlp.down_proj.weight", 1, kind),
            MRule(meta + "feed_forward.w3.weight", _HL + "mlp.up_proj.weight", 0, kind))


MLLAMA_RULES: tuple[MRule, ...] = (
    MRule(_T + "tok_embeddings.weight", "language_model.model.embed_tokens.weight", 0, transform="rows", slot=0),
    MRule(_T + "learnable_embedding.weight", "language_model.model.embed_tokens.weight", 0, transform="rows", slot=1),
    # self-attention decoder layers
    MRule(_T + "layers.{i}.attention_norm.weight", _HL + "input_layernorm.weight", None, "text"),
    MRule(_T + "layers.{i}.attention.wq.weight", _HL + "self_attn.q_proj.weight", 0, "text", "rope"),
    MRule(_T + "layers.{i}.attention.wk.weight", _HL + "self_attn.k_proj.weight", 0, "text", "rope"),
    MRule(_T + "layers.{i}.attention.wv.weight", _HL + "self_attn.v_proj.weight", 0, "text"),
    MRule(_T + "layers.{i}.attention.wo.weight", _HL + "self_attn.o_proj.weight", 1, "text"),
    *_ffn(_T + "layers.{i}.", "text"),
    # cross-attention decoder layers (tanh-gated; q/k RMS-normed per head, no rotary)
    MRule(_X + "gate_attn", _HL + "cross_attn_attn_gate", None, "xattn"),
    MRule(_X + "gate_ffwd", _HL + "cross_attn_mlp_gate", None, "xattn"),
    MRule(_X + "attention_norm.weight", _HL + "input_layernorm.weight", None, "xattn"),
    MRule(_X + "attention.wq.weight", _HL + "cross_attn.q_proj.weight", 0, "xattn"),
    MRule(_X + "attention.wk.weight", _HL + "cross_attn.k_proj.weight", 0, "xattn"),
    MRule(_X + "attention.wv.weight", _HL + "cross_attn.v_proj.weight", 0, "xattn"),
    MRule(_X + "attention.wo.weight", _HL + "cross_attn.o_proj.weight", 1, "xattn"),
    MRule(_X + "attention.q_norm.weight", _HL + "cross_attn.q_norm.weight", None, "xattn"),
    MRule(_X + "attention.k_norm.weight", _HL + "cross_attn.k_norm.weight", None, "xattn"),
    *_ffn(_X, "xattn"),
    MRule(_T + "norm.weight", "language_model.model.norm.weight", None),
    MRule(_T + "output.weight", "language_model.lm_head.weight", 0),
    # vision encoder: patch embedding, class token, position and tile tables, local and global transformers
    MRule(_V + "conv1._linear.weight", _HV + "patch_embedding.weight", 0, transform="patch"),
    MRule(_V + "class_embedding", _HV + "class_embedding", None),
    MRule(_V + "positional_embedding", _HV + "gated_positional_embedding.embedding", None),
    MRule(_V + "gated_positional_embedding", _HV + "gated_positional_embedding.tile_embedding.weight", None,
          transform="tiles"),
    MRule(_V + "gated_positional_embedding_gate", _HV + "gated_positional_embedding.gate", None),
    MRule(_V + "pre_tile_pos_embed.embedding", _HV + "pre_tile_positional_embedding.embedding.weight", None,
          transform="tiles"),
    MRule(_V + "pre_tile_pos_embed.gate", _HV + "pre_tile_positional_embedding.gate", None),
    MRule(_V + "post_tile_pos_embed.embedding", _HV + "post_tile_positional_embedding.embedding.weight", None,
          transform="tiles"),
    MRule(_V + "post_tile_pos_embed.gate", _HV + "post_tile_positional_embedding.gate", None),
    MRule(_V + "ln_pre.weight", _HV + "layernorm_pre.weight", None),
    MRule(_V + "ln_pre.bias", _HV + "layernorm_pre.bias", None),
    MRule(_V + "ln_post.weight", _HV + "layernorm_post.weight", None),
    MRule(_V + "ln_post.bias", _HV + "layernorm_post.bias", None),
    *_vision_block("transformer", "transformer", "local", gated=False),
    *_vision_block("global_transformer", "global_transformer", "global", gated=True),
    # the projector ("adapter") from the concatenated vision features to the text width
    MRule("vision_model.vision_projection.weight", "multi_modal_projector.weight", 0),
    MRule("vision_model.vision_projection.bias", "multi_modal_projector.bias", 0),
)
# transformers' own Mllama names (MllamaForConditionalGeneration.state_dict() in transformers 5) for what
# save_pretrained writes under the names above: accepted on input.
MLLAMA_HF_ALIASES = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                     ("model.vision_model.", "vision_model."), ("model.multi_modal_projector.", "multi_modal_projector."))


def mllama_hf_name(key: str) -> str:
    """An Mllama HF key in the save_pretrained (Hub) spelling."""
    for new, old in MLLAMA_HF_ALIASES:
        if key.startswith(new):
            return old + key[len(new):]
    return key


def fusion_schedule(n_layers: int, n_cross: int) -> list[int]:
    """The self-attention layers that a cross-attention layer precedes, as Meta's CrossAttentionTransformerText
    spreads them: every ceil(n_layers / n_cross)-th layer counted down from the last one."""
    step = math.ceil(n_layers / n_cross)
    return sorted(range(n_layers - 1, -1, -step))[-n_cross:] if n_cross else []


def cross_attention_hf_layers(schedule: list[int]) -> list[int]:
    """HF's `cross_attention_layers`: cross-attention layer k runs just before self-attention layer schedule[k],
    so in one interleaved list it sits at schedule[k] + k."""
    return [s + k for k, s in enumerate(schedule)]


def mllama_hf_layer(kind: str, i: int, schedule: list[int]) -> int:
    """The index in HF's interleaved layer list of Meta's layer i of `kind` ("text": self-attention, "xattn":
    cross-attention; the vision blocks keep theirs); `schedule` is `fusion_schedule`'s list."""
    if kind == "xattn":
        return schedule[i] + i
    if kind == "text":
        return i + sum(1 for s in schedule if s <= i)
    return i


def supported_aspect_ratios(max_tiles: int) -> list[tuple[int, int]]:
    """(tiles high, tiles wide) in the order of HF's aspect-ratio ids (id = position + 1; id 0 pads)."""
    return [(h, w) for h in range(1, max_tiles + 1) for w in range(1, max_tiles + 1) if h * w <= max_tiles]


def tiles_to_hf(grid: "torch.Tensor") -> "torch.Tensor":
    """Meta's (T, T, P, W) tile grid → HF's (ratios + 1, T·P·W) table: the row of aspect ratio (h, w) holds
    grid[:h, :w] in row-major tile order (what Meta's code adds for an image of h×w tiles), zero-padded to T
    tiles; row 0 (padding images) is zero. Grid cells no supported ratio reaches are not in HF's table."""
    import torch

    T, _, P, W = grid.shape
    ratios = supported_aspect_ratios(T)
    out = torch.zeros(len(ratios) + 1, T, P, W, dtype=grid.dtype, device=grid.device)
    for n, (h, w) in enumerate(ratios, 1):
        out[n, :h * w] = grid[:h, :w].reshape(h * w, P, W)
    return out.reshape(len(ratios) + 1, T * P * W)


def tiles_from_hf(table: "torch.Tensor", T: int, P: int, W: int) -> tuple["torch.Tensor", str | None]:
    """The inverse of `tiles_to_hf`: (grid with unreached cells zero, None), or (grid, why) when the table holds
    something Meta's grid cannot (a non-zero padding row or tile slot, or aspect ratios disagreeing on a cell)."""
    import torch

    ratios = supported_aspect_ratios(T)
    rows = table.reshape(len(ratios) + 1, T, P, W)
    grid = torch.zeros(T, T, P, W, dtype=table.dtype)
    seen = torch.zeros(T, T, dtype=torch.bool)
    why = None if not rows[0].any() else "a non-zero row for padding images (aspect ratio id 0)"
    for n, (h, w) in enumerate(ratios, 1):
        cells = rows[n, :h * w].reshape(h, w, P, W)
        if why is None and rows[n, h * w:].any():
            why = f"non-zero values past the {h * w} tiles of aspect ratio {h}x{w}"
        new = ~seen[:h, :w]
        if why is None and not torch.equal(grid[:h, :w][~new], cells[~new]):
            why = f"aspect ratio {h}x{w} disagrees with a smaller one on a shared tile"
        grid[:h, :w][new] = cells[new]
        seen[:h, :w] = True
    return grid, why


def mllama_lookup(key: str, fmt: str, *, path=None) -> tuple[MRule, int | None]:
    """The Mllama rule naming `key` in `fmt` ('meta', or 'hf' with HF's interleaved index left as {i}); its index."""
    for rule in MLLAMA_RULES:
        m = _compile(getattr(rule, fmt)).match(key)
        if m:
            return rule, (int(m.group("i")) if "i" in m.groupdict() else None)
    raise UnknownKeyError(key, path=path, direction=f"Llama 3.2 Vision {fmt} checkpoint")
