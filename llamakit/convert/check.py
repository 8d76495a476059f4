"""Proving a conversion: the same token batch through the source and the result.

Each side runs in its own format's code: Meta shards through `reference.forward` (Meta's
model code, shard by shard, never merged), GGUF weights through the same reference
(they are Meta-layout), HF directories through transformers. Both compute in float32 so
a lossless conversion differs only by float reassociation; a --dtype cast is judged
against a tolerance that matches the precision it cast to.

Meta-side forwards stream one layer at a time by construction. HF directories load
whole via `from_pretrained` when the model is small, else layer by layer: one
transformers `LlamaDecoderLayer` at a time, weights read from the safetensors files,
so a 405B check needs one layer of memory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llamakit.convert import reference
from llamakit.convert.hf import INDEX, safetensors_files
from llamakit.errors import EquivalenceError

# max |Δlogit| allowed, relative to the largest |logit| (at least 1), by the dtype the weights were cast to
RTOL = {None: 1e-4, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}
WHOLE_MODEL_LIMIT = 2 << 30  # bytes of float32 weights above which HF checks go layer by layer


@dataclass
class CheckReport:
    max_abs: float
    tol: float
    top1: float
    source: str
    result: str
    tokens: list[int]  # the batch shape

    def ok(self) -> bool:
        return self.max_abs <= self.tol

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"max |Δlogit| {self.max_abs:.2e} ≤ {self.tol:.1e}, top-1 agreement {self.top1:.1%} "
                f"({self.source} vs {self.result})")


def token_batch(vocab_size: int, *, batch: int = 2, seq: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=g)


# --- the two kinds of forward ----------------------------------------------------


def reference_logits(source, tokens: torch.Tensor) -> torch.Tensor:
    """Meta's model code on a Meta source's own shards, or on a canonical source (MP 1)."""
    if hasattr(source, "shard_weights"):
        return reference.forward(source.params, source.shard_weights(), tokens, mp=source.mp, tied=source.arch.tied)
    return reference.forward(source.arch.to_params_json(), lambda _rank, name: source.load(name).float(), tokens,
                             mp=1, tied=source.arch.tied)


def hf_logits(model_dir: Path, tokens: torch.Tensor, *, layerwise: bool | None = None) -> tuple[torch.Tensor, str]:
    if layerwise is None:
        layerwise = _fp32_bytes(model_dir) > WHOLE_MODEL_LIMIT
    if not layerwise:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # our own progress owns stderr
        try:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        finally:
            if was_on:
                hf_logging.enable_progress_bar()
        with torch.no_grad():
            return model(tokens).logits.float(), "transformers"
    return _hf_layerwise(model_dir, tokens), "transformers (layer by layer)"


def _fp32_bytes(model_dir: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in safetensors_files(model_dir):
        with safe_open(f, framework="pt") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                size = 1
                for d in shape:
                    size *= d
                n += 4 * size
    return n


@torch.no_grad()
def _hf_layerwise(model_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    from safetensors import safe_open
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

    model_dir = Path(model_dir)
    if (model_dir / INDEX).exists():
        where = {k: model_dir / f for k, f in json.loads((model_dir / INDEX).read_text())["weight_map"].items()}
    else:
        where = {}
        for f in safetensors_files(model_dir):
            with safe_open(f, framework="pt") as st:
                where.update(dict.fromkeys(st.keys(), f))

    def get(name: str) -> torch.Tensor:
        with safe_open(where[name], framework="pt") as st:
            return st.get_tensor(name).float()

    config = AutoConfig.from_pretrained(str(model_dir))
    config._attn_implementation = "eager"
    bsz, seq = tokens.shape
    embed = get("model.embed_tokens.weight")
    h = torch.nn.functional.embedding(tokens, embed)
    lm_head = embed if config.tie_word_embeddings else None
    del embed
    cos_sin = LlamaRotaryEmbedding(config)(h, torch.arange(seq)[None].expand(bsz, seq))
    mask = torch.full((seq, seq), float("-inf")).triu(1)[None, None].expand(bsz, 1, seq, seq)
    for i in range(config.num_hidden_layers):
        with torch.device("meta"):
            layer = LlamaDecoderLayer(config, layer_idx=i)
        prefix = f"model.layers.{i}."
        layer.load_state_dict({k: get(prefix + k) for k in layer.state_dict()}, assign=True)
        h = layer.eval()(h, attention_mask=mask, position_embeddings=cos_sin)
        del layer
    norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
    norm.weight.data = get("model.norm.weight")
    h = norm(h)
    if lm_head is None:
        lm_head = get("lm_head.weight")
    return (h @ lm_head.T).float()


# --- the comparison --------------------------------------------------------------


def compare(source, result_dir: Path, to: str, *, cast=None, layerwise: bool | None = None,
            report_path: Path | None = None) -> CheckReport:
    """Run the batch through `source` and through the written `result_dir`; raise if they disagree."""
    tokens = token_batch(source.arch.vocab_size)
    if source.fmt == "hf":
        a, a_name = hf_logits(source.path, tokens, layerwise=layerwise)
    else:
        a, a_name = reference_logits(source, tokens), f"Meta reference ({source.fmt}, MP {source.mp})"
    if to == "hf":
        b, b_name = hf_logits(result_dir, tokens, layerwise=layerwise)
    else:
        from llamakit.convert.meta import MetaSource

        out = MetaSource(result_dir)
        b, b_name = reference_logits(out, tokens), f"Meta reference (result, MP {out.mp})"
    diff = (a - b).abs().max().item()
    tol = RTOL[cast] * max(1.0, a.abs().max().item())
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    rep = CheckReport(diff, tol, top1, a_name, b_name, list(tokens.shape))
    if not rep.ok():
        raise EquivalenceError(diff, tol, top1, path=report_path or result_dir)
    return rep
