"""Llama 4 Meta → HF (and back) at Scout width: peak RSS against the largest tensor group.

A synthetic checkpoint in the layout Meta ships for Llama 4 Scout (dim 5120, 40 heads / 8 kv heads,
16 experts of width 8192, shared expert, QK-norm, MoE in every layer) with few layers and a reduced
vocabulary (--vocab; the embedding is not what this measures), bf16, MP 2, is generated tensor by
tensor with llamakit's streaming .pth writer (a seeded pattern, never the whole model in memory).
Then, each in its own child process (peak RSS = its ru_maxrss, which counts touched pages of mmap'd
files too; wall time around the process, interpreter start included):

  * llamakit Meta → HF (--no-check, and with the default bit-identical read-back check)
  * llamakit HF → Meta, MP 2 (--no-check)
  * optionally transformers' own Llama 4 converter (--tf-python: a side virtualenv's python with a
    transformers version that ships models/llama4/convert_llama4_weights_to_hf.py), same input. That
    script reads params["vision_args"] unconditionally, so pass --vision-layers N (the Scout encoder with
    N of its 34 layers, in the module names Meta ships), and it hard-codes the vocabulary to 202048, so
    pass --vocab 202048 (the embedding and output then add 2 × 1.9 GB at MP 2).

The largest tensor group is one MoE layer's experts.gate_up_proj (16 × 5120 × 16384 bf16 = 2.7 GB):
transformers' script concatenates it whole; llamakit streams it one expert block at a time.

    .venv/bin/python benchmarks/llama4_convert_bench.py --work /work/scratch/l4-bench --layers 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SCOUT = {"dim": 5120, "n_heads": 40, "n_kv_heads": 8, "multiple_of": 2048, "ffn_dim_multiplier": 1.2, "ffn_exp": 4.0,
         "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": True, "nope_layer_interval": 4,
         "use_qk_norm": True, "attention_chunk_size": 8192,
         "moe_args": {"num_experts": 16, "capacity_factor": 1.0, "auto_scale_F": True, "top_k": 1,
                      "interleave_moe_layer_step": 1}}


VISION = {"image_size": {"height": 336, "width": 336}, "patch_size": {"height": 14, "width": 14}, "dim": 1408,
          "n_layers": 34, "n_heads": 16, "mlp_ratio": 4.0, "output_dim": 4096, "pixel_shuffle_ratio": 0.5}


def vision_specs(n_layers: int, mp: int) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, per-shard shape, replicated) of the Scout vision encoder + adapter + projector, as Meta's modules name
    them (llama4/vision/encoder.py, embedding.py; model.py vision_projection), fairscale-split over `mp`."""
    V, H, O, D = 1408, 5632, 4096, 5120
    e = "vision_embeddings.vision_encoder."
    out = [(e + "conv1._linear.weight", (V // mp, 3 * 14 * 14), False), (e + "class_embedding", (V,), True),
           (e + "positional_embedding_vlm", ((336 // 14) ** 2 + 1, V), True),
           (e + "ln_pre.weight", (V,), True), (e + "ln_pre.bias", (V,), True)]
    for i in range(n_layers):
        p = f"{e}transformer.resblocks.{i}."
        for x in "qkv":
            out += [(p + f"attn.w{x}.weight", (V // mp, V), False), (p + f"attn.w{x}.bias", (V // mp,), False)]
        out += [(p + "attn.wo.weight", (V, V // mp), False), (p + "attn.wo.bias", (V,), True),
                (p + "ln_1.weight", (V,), True), (p + "ln_1.bias", (V,), True),
                (p + "mlp.c_fc.weight", (H // mp, V), False), (p + "mlp.c_fc.bias", (H // mp,), False),
                (p + "mlp.c_proj.weight", (V, H // mp), False), (p + "mlp.c_proj.bias", (V,), True),
                (p + "ln_2.weight", (V,), True), (p + "ln_2.bias", (V,), True)]
    return out + [(e + "ln_post.weight", (V,), True), (e + "ln_post.bias", (V,), True),
                  ("vision_embeddings.vision_adapter.mlp.c_fc.weight", (O // mp, H), False),
                  ("vision_embeddings.vision_adapter.mlp.c_proj.weight", (O, O // mp), False),
                  ("vision_projection.weight", (D // mp, O), False)]


def shipped_specs(n_layers: int, vocab: int, mp: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, per-shard shape) of every tensor Meta ships for this Scout-width model, in file order."""
    D, hd, E, F = 5120, 128, 16, 8192
    q, k = 40 * hd // mp, 8 * hd // mp
    out = [("tok_embeddings.weight", (vocab // mp, D))]
    for i in range(n_layers):
        p = f"layers.{i}."
        out += [(p + "attention.wqkv.weight", (q + 2 * k, D)), (p + "attention.wqkv.layer_norm_weight", (D,)),
                (p + "attention.wo.weight", (D, 40 * hd // mp)), (p + "feed_forward.norm.weight", (D,)),
                (p + "feed_forward.router_DE", (D, E)),
                (p + "feed_forward.w_in_shared_FD.weight", (F // mp, D)),
                (p + "feed_forward.w_swiglu_FD.weight", (F // mp, D)),
                (p + "feed_forward.w_out_shared_DF.weight", (D, F // mp)),
                (p + "feed_forward.experts.moe_w_in_eD_F", (E * D, F // mp)),
                (p + "feed_forward.experts.moe_w_out_eF_D", (E * F // mp, D)),
                (p + "feed_forward.experts.moe_w_swiglu_eD_F", (E * D, F // mp))]
    return out + [("norm.weight", (D,)), ("output.weight", (vocab // mp, D))]


def generate(out: Path, n_layers: int, vocab: int, mp: int, vision_layers: int = 0) -> int:
    """The checkpoint, written tensor by tensor (replicated tensors identical on every shard)."""
    import torch

    from llamakit.convert.pth import PthWriter

    out.mkdir(parents=True, exist_ok=True)
    vision = vision_specs(vision_layers, mp) if vision_layers else []
    specs = shipped_specs(n_layers, vocab, mp) + [(n, s) for n, s, _ in vision]
    same = {n for n, _, rep in vision if rep}
    writers = [PthWriter(out / f"consolidated.{r:02d}.pth", [(n, s, torch.bfloat16) for n, s in specs]) for r in range(mp)]
    block = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    total = 0
    for j, (name, shape) in enumerate(specs):
        replicated = (len(shape) == 1 and not name.startswith("vision")) or name.endswith("router_DE") or name in same
        for r, w in enumerate(writers):
            w.begin(name)
            n, at = math.prod(shape), 0
            while at < n:  # a shifted pattern per tensor and shard: distinct values, written in 2 MB pieces
                take = min(n - at, block.numel())
                w.write(torch.roll(block, (j * 7919 + (0 if replicated else r * 104729) + at) % block.numel())[:take])
                at += take
            w.end()
            total += n * 2
    for w in writers:
        w.close()
    params = {**SCOUT, "n_layers": n_layers, "vocab_size": vocab}
    if vision_layers:
        params["vision_args"] = {**VISION, "n_layers": vision_layers}
    (out / "params.json").write_text(json.dumps(params))
    return total


def child_peak(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd` under a tiny wrapper that reports its own child's ru_maxrss (so each run is measured alone)."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
               "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True).stdout.split()
    wall, kib, rc = float(out[0]), int(out[1]), int(out[2])
    if rc:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}")
    return wall, kib / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--mp", type=int, default=2)
    ap.add_argument("--vision-layers", type=int, default=0, help="write the Scout vision encoder with this many layers")
    ap.add_argument("--tf-python", help="python of a side virtualenv with transformers' Llama 4 converter")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    src = a.work / "meta"
    shutil.rmtree(a.work, ignore_errors=True)
    t = time.perf_counter()
    size = generate(src, a.layers, a.vocab, a.mp, a.vision_layers)
    print(f"generated {size / 1e9:.2f} GB (MP {a.mp}, {a.layers} layer(s)) in {time.perf_counter() - t:.0f}s", flush=True)
    group = 16 * 5120 * 2 * 8192 * 2
    rows = []
    py = [sys.executable, "-m", "llamakit", "convert"]
    for label, cmd in (("llamakit meta→hf --no-check", py + [str(src), str(a.work / "hf"), "--no-check"]),
                       ("llamakit hf→meta MP 2 --no-check", py + [str(a.work / "hf"), str(a.work / "back"), "--to", "meta",
                                                                   "--mp", str(a.mp), "--no-check"]),
                       ("llamakit meta→hf (bit-identical read-back check)", py + [str(src), str(a.work / "hf2")])):
        os.sync()
        wall, rss = child_peak(cmd)
        rows.append((label, wall, rss))
        print(f"{label}: {wall:.1f}s, peak RSS {rss:.0f} MiB", flush=True)
        shutil.rmtree(a.work / "hf2", ignore_errors=True)
    if a.tf_python:
        os.sync()
        wall, rss = child_peak([a.tf_python, "-m", "transformers.models.llama4.convert_llama4_weights_to_hf",
                                "--input_dir", str(src), "--output_dir", str(a.work / "tf"), "--num_shards", str(a.mp)])
        rows.append(("transformers' convert_llama4_weights_to_hf", wall, rss))
    print(f"\ncheckpoint {size / 1e9:.2f} GB; largest tensor group (one layer's experts.gate_up_proj) {group / 2**20:.0f} MiB")
    print("| run | wall s | peak RSS MiB | peak RSS / largest group |\n|---|---:|---:|---:|")
    for label, wall, rss in rows:
        print(f"| {label} | {wall:.1f} | {rss:.0f} | {rss / (group / 2**20):.2f} |")
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
