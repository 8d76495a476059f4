"""Meta's own Llama 4 code (PyPI llama-models 0.3.0 `llama4/` + fairscale) as the oracle for Llama 4 conversions.

One process per model-parallel rank (gloo, CPU), launched as meta_oracle.py does:

    meta_oracle_llama4.py write   DIR SHAPE BATCHES LOGITS
    meta_oracle_llama4.py forward DIR SHAPE BATCHES LOGITS

`write` builds Meta's llama4 `Transformer` for a tiny SHAPE with seeded random weights
(fairscale's master-weight initialisation splits the Column/RowParallel layers; the
experts' hidden dim, which Meta's `Experts` divides by the MP degree, is sliced per rank
from one seeded full tensor) and saves each rank's weights in the layout Meta SHIPS, not
the module's `state_dict()`: the inverse of the load hooks in llama4/model.py (Attention,
TransformerBlock), ffn.py and moe.py - `attention.wqkv.weight` + `wqkv.layer_norm_weight`,
`feed_forward.mlp.fc1_weight`/`fc2_weight`/`layer_norm_weight` for dense layers,
`feed_forward.norm.weight`, `experts.moe_w_{in,swiglu}_eD_F` (e·D, F) and `moe_w_out_eF_D`
(e·F, D), `w_in_shared_FD`/`w_swiglu_FD`/`w_out_shared_DF`, `router_DE`, and the io.BytesIO
`_extra_state` entries Meta's files carry. (These names were cross-checked against the key
table of transformers' convert_llama4_weights_to_hf.py.) It then reloads those files into a
fresh model with a strict `load_state_dict` - through Meta's hooks - so a fixture that is not
Meta's layout fails here. `forward` loads any Meta directory's shards the same way.

Both then run Meta's modules on the token batches of BATCHES (tokens, positions): the
embedding, `precompute_freqs_cis` at the position ids, each `TransformerBlock` (global mask,
and the chunked local mask Meta's `Transformer.forward` builds), the norm and the output.

On CPU, llama4/model.py's Attention allocates its KV cache with `.cuda()` (lines 164/172 in
0.3.0): the build runs with `Tensor.cuda` made the identity. Nothing here imports llamakit.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import torch

COMMON = dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=160, multiple_of=32, ffn_dim_multiplier=1.2,
              ffn_exp=4.0, norm_eps=1e-5, rope_theta=500000.0, nope_layer_interval=4, attention_chunk_size=4)
SHAPES = {
    # Scout-like: QK-norm, scaled rope (Meta's defaults: factor 16, high_freq_factor 1), MoE in every layer
    "scout": dict(COMMON, use_scaled_rope=True, use_qk_norm=True,
                  moe_args=dict(num_experts=4, capacity_factor=1.0, auto_scale_F=True, top_k=1, interleave_moe_layer_step=1)),
    # Maverick-like: no QK-norm, no rope scaling, MoE in every 2nd layer (dense FFN between)
    "maverick": dict(COMMON, use_scaled_rope=False, use_qk_norm=False,
                     moe_args=dict(num_experts=8, capacity_factor=1.0, auto_scale_F=True, top_k=1, interleave_moe_layer_step=2)),
}
# A small vision encoder (llama4/args.py VisionArgs): 16x16 images of 4x4 patches, pixel shuffle 0.5 -> 4 image tokens.
# mlp_ratio·dim must equal dim/pixel_shuffle_ratio² (transformers has one intermediate_size for both).
VISION = dict(image_size=dict(height=16, width=16), patch_size=dict(height=4, width=4), dim=32, n_layers=2, n_heads=2,
              mlp_ratio=4.0, output_dim=48, pixel_shuffle_ratio=0.5)
# The multimodal shapes' vocabulary is Meta's tokenizer's: N_RANKS BPE ranks (the test writes such a tokenizer.model)
# + the 2048 specials llama4/tokenizer.py numbers after them, so the image tokens have their real offsets.
N_RANKS = 300
SHAPES.update({f"{k}_vision": dict(v, vocab_size=N_RANKS + 2048, vision_args=VISION) for k, v in list(SHAPES.items())})
QK_GAIN = 4.0
EXTRA_STATE = ("attention.wqkv", "attention.wo", "feed_forward.experts.mlp", "feed_forward.mlp_shared")


def _setup():
    import torch.distributed as dist
    from fairscale.nn.model_parallel import initialize as fs_init

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    fs_init.initialize_model_parallel(dist.get_world_size())


def _args(shape: str):
    from llama_models.llama4.args import ModelArgs

    return ModelArgs(**SHAPES[shape], max_batch_size=2, max_seq_len=32)


def _build(shape: str, *, seeded: bool):
    import fairscale.nn.model_parallel.layers as L
    import torch.distributed as dist
    from llama_models.llama4.model import Transformer

    real_init, real_cuda = L._initialize_affine_weight, torch.Tensor.cuda
    g = torch.Generator().manual_seed(0)

    def init(weight, out_features, in_features, per_partition_size, partition_dim, init_method, stride=1,
             return_master_weight=False):
        def fill(w):
            with torch.no_grad():
                return w.copy_(torch.randn(w.shape, generator=g) / in_features ** 0.5)

        return real_init(weight, out_features, in_features, per_partition_size, partition_dim,
                         fill if seeded else init_method, stride, return_master_weight)

    L._initialize_affine_weight = init
    torch.Tensor.cuda = lambda self, *a, **k: self  # the KV cache stays on the CPU
    try:
        model = Transformer(_args(shape))
    finally:
        L._initialize_affine_weight, torch.Tensor.cuda = real_init, real_cuda
    if seeded:
        rank, ws = dist.get_rank(), dist.get_world_size()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                elif name.endswith(("wq.weight", "wk.weight")):
                    p.mul_(QK_GAIN)
                elif name.endswith("router_DE"):
                    p.copy_(torch.randn(p.shape, generator=g))
                elif name.startswith("vision_") and name.endswith((".bias", "ln_pre.weight", "ln_post.weight",
                                                                   "ln_1.weight", "ln_2.weight")):
                    base = 1.0 if name.endswith("weight") else 0.0  # layer norm gains near 1, biases near 0
                    p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
                elif name.endswith(("class_embedding", "positional_embedding_vlm")):
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
                elif ".experts.w" in name:  # (e, D, F/ws) or (e, F/ws, D): this rank's slice of one seeded full tensor
                    f_dim = 2 if name.endswith(("w1", "w3")) else 1
                    full = list(p.shape)
                    full[f_dim] *= ws
                    t = torch.randn(full, generator=g) / p.shape[1 if f_dim == 2 else 2] ** 0.5
                    p.copy_(t.narrow(f_dim, rank * p.shape[f_dim], p.shape[f_dim]))
            for p in model.parameters():  # the values a bf16 checkpoint holds
                p.copy_(p.to(torch.bfloat16).float())
    return model.eval()


def shipped(sd: dict, n_layers: int, moe_layers: set[int]) -> dict:
    """A rank's module state_dict() in the names and fusions Meta ships (the load hooks, inverted)."""
    sd = dict(sd)
    out = {}
    for i in range(n_layers):
        p = f"layers.{i}."
        out[p + "attention.wqkv.weight"] = torch.cat([sd.pop(p + f"attention.w{x}.weight") for x in "qkv"])
        out[p + "attention.wqkv.layer_norm_weight"] = sd.pop(p + "attention_norm.weight")
        out[p + "attention.wo.weight"] = sd.pop(p + "attention.wo.weight")
        f = p + "feed_forward."
        if i in moe_layers:
            out[f + "norm.weight"] = sd.pop(p + "ffn_norm.weight")
            w1, w2, w3 = (sd.pop(f + f"experts.w{k}") for k in "123")
            out[f + "experts.moe_w_in_eD_F"] = w1.reshape(-1, w1.shape[-1])
            out[f + "experts.moe_w_out_eF_D"] = w2.reshape(-1, w2.shape[-1])
            out[f + "experts.moe_w_swiglu_eD_F"] = w3.reshape(-1, w3.shape[-1])
            out[f + "router_DE"] = sd.pop(f + "router_DE")
            for meta, mod in (("w_in_shared_FD", "w1"), ("w_swiglu_FD", "w3"), ("w_out_shared_DF", "w2")):
                out[f + meta + ".weight"] = sd.pop(f + f"shared_expert.{mod}.weight")
        else:
            out[f + "mlp.layer_norm_weight"] = sd.pop(p + "ffn_norm.weight")
            out[f + "mlp.fc1_weight"] = torch.cat([sd.pop(f + "w1.weight"), sd.pop(f + "w3.weight")])
            out[f + "mlp.fc2_weight"] = sd.pop(f + "w2.weight")
        for k in EXTRA_STATE:
            if k.startswith("attention") or i in moe_layers:
                out[p + k + "._extra_state"] = io.BytesIO(b"")
    out.update(sd)  # tok_embeddings, norm, output: stored under the module's names
    return out


def load(path: Path) -> dict:
    """A shipped shard as Meta's loader reads it (its _extra_state entries are io.BytesIO objects)."""
    with torch.serialization.safe_globals([io.BytesIO, bytes]):
        sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in sd.items()}


@torch.inference_mode()
def logits(model, tokens: torch.Tensor, positions: torch.Tensor, image=None) -> torch.Tensor:
    """Meta's modules at `positions` (Transformer.forward takes only a start position); masks as forward builds them.
    `image`: (pixel values [tiles, 3, H, W], the <|patch|> id): embedded as generation.py does (vision_embeddings on
    the <|patch|> positions of every sequence, one image each) and mixed in as Transformer.forward does."""
    from llama_models.llama4.model import create_chunked_attention_mask, precompute_freqs_cis

    a = model.args
    freqs = precompute_freqs_cis(a.dim // a.n_heads, int(positions.max()) + 1, a.rope_theta, a.use_scaled_rope,
                                 a.rope_scaling_factor, a.rope_high_freq_factor)[positions]
    n = tokens.shape[1]
    global_mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
    local_mask = create_chunked_attention_mask(n, a.attention_chunk_size, tokens.device) if a.attention_chunk_size else None
    h = model.tok_embeddings(tokens)
    if image is not None:
        pixels, patch_id = image
        mask = (tokens == patch_id).unsqueeze(-1)
        embedding = model.vision_embeddings([[pixels]] * tokens.shape[0], mask, h)
        h = h * ~mask + model.vision_projection(embedding) * mask
    for layer in model.layers:
        h = layer(h, 0, freqs, global_mask, local_mask)
    return model.output(model.norm(h)).float()


def main(argv: list[str]) -> None:
    import torch.distributed as dist

    mode, directory, shape, batches, out = argv
    directory = Path(directory)
    _setup()
    rank = dist.get_rank()
    shard = directory / f"consolidated.{rank:02d}.pth"
    if mode == "write":
        model = _build(shape, seeded=True)
        a = model.args
        moe = {i for i in range(a.n_layers) if (i + 1) % a.moe_args.interleave_moe_layer_step == 0}
        directory.mkdir(parents=True, exist_ok=True)
        sd = {k: v.to(torch.bfloat16).clone() for k, v in model.state_dict().items()}
        torch.save(shipped(sd, a.n_layers, moe), shard)
        if rank == 0:
            (directory / "params.json").write_text(json.dumps(SHAPES[shape]))
        dist.barrier()
    model = _build(shape, seeded=False)
    model.load_state_dict(load(shard), strict=True)  # through Meta's hooks: the files are Meta's layout
    model.float()  # VisionEmbeddings casts its encoder to bf16; the comparison runs in fp32 (the values are bf16's)
    got = [logits(model, *b) for b in torch.load(batches, weights_only=True)]
    if rank == 0:
        torch.save(got, out)
    dist.barrier()
    dist.destroy_process_group()


def launch(mode: str, directory, shape: str, batches, out, *, nproc: int = 1, timeout: float = 600) -> None:
    from meta_oracle import run_ranks  # the llama3 oracle's launcher: torchrun's contract, nothing of llamakit

    run_ranks(__file__, [mode, directory, shape, batches, out], nproc=nproc, timeout=timeout)


if __name__ == "__main__":
    main(sys.argv[1:])
