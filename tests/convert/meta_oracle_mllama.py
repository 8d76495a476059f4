"""Meta's own Llama 3.2 Vision code (llama-models 0.3.0 llama3/multimodal/model.py + fairscale) as the oracle.

    meta_oracle_mllama.py write   DIR INPUTS LOGITS
    meta_oracle_mllama.py forward DIR INPUTS LOGITS

`write` builds Meta's CrossAttentionTransformer at tiny widths, fills it with seeded random weights (fairscale's
master-weight initialisation for the parallel layers; every gate non-zero so that each one matters) and saves
each rank's `state_dict()` as consolidated.NN.pth (bf16, as Meta ships) + params.json. `forward` loads a directory's
shard strictly into a freshly built CrossAttentionTransformer. Both then run Meta's forward on INPUTS: a text-only
batch (`text_only_inference`), and the same tokens with one image, through Meta's compute_vision_tokens_masks
(vision encoder, projector, cross-attention caches and masks), and save the logits.

Tiny widths: llama-models hard-codes the vision encoder's size in CrossAttentionTransformerVision (width
1280, 32 + 8 layers, 16 heads, intermediate layers 3,7,15,23,30 and a projector input of 6 × 1280). The
oracle builds that class with Meta's own VisionEncoder called at a small width/depth (the keyword
arguments VisionEncoder takes) and the projector sized for it (the one hard-coded 1280 replaced): every
module and every forward is Meta's. The image: Meta's image_transform (PIL resize + normalise + tiling) is
replaced by a function returning ready tiles and their (tiles high, tiles wide) aspect ratio, so Meta and
transformers see the same pixels; image preprocessing is not part of a weight conversion.

Nothing here imports llamakit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

PARAMS = dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=160, multiple_of=32, ffn_dim_multiplier=1.3,
              norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True, vision_chunk_size=28,
              vision_max_num_chunks=4, vision_num_cross_attention_layers=2,
              # llamakit's keys for what Meta's code hard-codes (its ModelArgs ignores them)
              vision_heads=2, vision_intermediate_layers=[1, 3])
VISION = dict(width=32, layers=4, heads=2, n_global_layers=2, return_intermediate=[1, 3])
SEQ = 12
MAX_SEQ = 8192  # room for the spread positions (Meta's KV cache and mask are this long)


def _setup():
    import torch.distributed as dist
    from fairscale.nn.model_parallel import initialize as fs_init

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    fs_init.initialize_model_parallel(dist.get_world_size())
    _without_torchvision()
    import llama_models.llama3.multimodal.model as M

    return M


def _without_torchvision() -> None:
    """image_transform.py imports torchvision (not in llamakit's lock) for the PIL preprocessing the oracle replaces
    (see the module docstring); when it is absent, stand-ins that fail if ever called let Meta's module import."""
    import importlib.util
    import types

    if importlib.util.find_spec("torchvision") is not None:
        return

    def unused(*_a, **_k):
        raise RuntimeError("torchvision stand-in called: the oracle passes ready tiles")

    tv = types.ModuleType("torchvision.transforms")
    tv.ToTensor, tv.Normalize = (lambda: unused), (lambda *a, **k: unused)
    tv.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear")
    tv.functional = types.ModuleType("torchvision.transforms.functional")
    root = types.ModuleType("torchvision")
    root.transforms = tv
    sys.modules.update({"torchvision": root, "torchvision.transforms": tv, "torchvision.transforms.functional": tv.functional})


def _build(M, *, seeded: bool):
    import fairscale.nn.model_parallel.layers as L
    from llama_models.llama3.args import ModelArgs

    from meta_oracle import seeded_master_weights  # tests/convert/, beside this file

    real_encoder = M.VisionEncoder
    g = torch.Generator().manual_seed(0)

    def tiny_encoder(**kw):
        return real_encoder(**{**kw, **VISION})

    M.VisionEncoder = tiny_encoder
    try:
        with seeded_master_weights(g, seeded):
            args = ModelArgs(**PARAMS, max_batch_size=2, max_seq_len=MAX_SEQ)
            model = M.CrossAttentionTransformer(args)
            vm = model.vision_model  # the projector for the tiny encoder's output width (Meta hard-codes 6 × 1280)
            vm.vision_input_dim = (len(VISION["return_intermediate"]) + 1) * VISION["width"]
            vm.vision_projection = L.ColumnParallelLinear(vm.vision_input_dim, args.dim, bias=True,
                                                          init_method=lambda x: x)
    finally:
        M.VisionEncoder = real_encoder
    if seeded:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                elif "gate" in name and p.numel() == 1:
                    p.copy_(0.3 + 0.5 * torch.rand(p.shape, generator=g))
                elif name.endswith("bias") or "embedding" in name:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
                elif name.endswith(("attention.wq.weight", "attention.wk.weight")):
                    p.mul_(4.0)  # sharp attention: rotary positions change the logits visibly
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    model.setup_cache(2, torch.device("cpu"), torch.float32)
    return model.eval()


@torch.inference_mode()
def run(M, model, inputs: dict) -> dict:
    tokens, tiles, ar, start = inputs["tokens"], inputs["tiles"], tuple(inputs["ar"]), inputs["image_at"]
    bsz, total = tokens.shape
    pos = torch.arange(total)
    model.image_transform = lambda image, max_num_chunks=None: (image, ar)  # ready tiles: see the module docstring
    caches, xmask, rowmask = model.compute_vision_tokens_masks([[tiles]] * bsz, [[[start, -1]]] * bsz, total,
                                                               torch.device("cpu"))
    text = model.forward(pos, tokens, xmask, rowmask, caches, text_only_inference=True)  # cross-attention skipped
    image = model.forward(pos, tokens, xmask, rowmask, caches)
    got = {"text": text.float(), "image": image.float()}
    spread = inputs.get("spread")
    if spread is not None:  # the same tokens at spread position ids, through Meta's forward
        total = int(spread.max()) + 1
        full = torch.zeros(bsz, total, dtype=tokens.dtype)
        full[:, spread] = tokens
        caches, xmask, rowmask = model.compute_vision_tokens_masks([[tiles]] * bsz, [[[int(spread[start]), -1]]] * bsz,
                                                                   total, torch.device("cpu"))
        # Meta's causal mask assumes a KV cache filled from position 0; here only `spread` is filled, so its
        # buffer is narrowed to those columns (nothing else of Meta's forward changes)
        tm = model.text_model
        keep = torch.zeros(tm.max_seq_len, dtype=torch.bool)
        keep[spread] = True
        causal = tm.mask_cache
        tm.mask_cache = causal & keep
        got["spread"] = model.forward(spread, full, xmask, rowmask, caches).float()
        tm.mask_cache = causal
    return got


def main(argv: list[str]) -> None:
    import torch.distributed as dist

    mode, directory, inputs, out = argv
    directory = Path(directory)
    M = _setup()
    rank = dist.get_rank()
    if mode == "write":
        model = _build(M, seeded=True)
        directory.mkdir(parents=True, exist_ok=True)
        sd = {k: v.to(torch.bfloat16).clone() for k, v in model.state_dict().items()}
        torch.save(sd, directory / f"consolidated.{rank:02d}.pth")
        if rank == 0:
            (directory / "params.json").write_text(json.dumps(PARAMS))
    else:
        model = _build(M, seeded=False)
        sd = torch.load(directory / f"consolidated.{rank:02d}.pth", weights_only=True)
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        model.setup_cache(2, torch.device("cpu"), torch.float32)
    got = run(M, model, torch.load(inputs, weights_only=True))
    if rank == 0:
        torch.save(got, out)
    dist.barrier()
    dist.destroy_process_group()


def launch(mode: str, directory, inputs, out, *, nproc: int = 1, timeout: float = 600) -> None:
    """This file in `nproc` processes, one per model-parallel rank."""
    from meta_oracle import run_ranks  # tests/convert/, beside this file

    run_ranks(__file__, [mode, directory, inputs, out], nproc=nproc, timeout=timeout)


if __name__ == "__main__":
    main(sys.argv[1:])
