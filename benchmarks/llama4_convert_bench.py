"""Llama 4 Meta → HF at Scout width: llamakit against transformers' own Llama 4 converter, same input, same run.

The input: a synthetic checkpoint in the layout Meta ships for Llama 4 Scout (dim 5120, 40 heads / 8 kv heads, 16
experts of width 8192 + shared expert, QK-norm, MoE in every layer) with --layers decoder layers, a --vocab row
embedding/output, bf16, MP --mp, generated tensor by tensor with llamakit's streaming .pth writer (a seeded pattern,
never the whole model in memory). --vision-layers N adds the Scout vision encoder (N of its 34 layers, the module names
Meta ships, fairscale splits), its adapter and projector. Beside the shards: params.json, a `rope.freqs` entry (the
table older Meta files carry; Meta's llama4 Transformer.load_hook drops it, and so do both converters) and a
tokenizer.model (tiktoken ranks of the 256 single bytes; both converters write tokenizer.json from it).

Each run is a child process; wall = around that process (interpreter start included); peak RSS = its ru_maxrss (a
child killed by the OOM killer is counted too), which includes the touched pages of mmap'd files. The load average
is read just before each run. In each round (--repeats, interleaved):

  1. llamakit Meta → HF --no-check (output kept for the comparison)
  2. with --tf-python SIDE_VENV/bin/python: transformers' convert_llama4_weights_to_hf as its __main__ runs it
     (write_tokenizer, then write_model with --convert_checkpoints: load all shards mmap'd, compare every tensor
     of shards 0 and 1, concatenate into a state dict, load it into Llama4ForConditionalGeneration, save_pretrained,
     reload with from_pretrained and generate 4 tokens), less the image-processor save (TF_DRIVER below). Its
     output is compared with llamakit's tensor by tensor (names, dtype, shape, every bit), once.
  3. llamakit Meta → HF with its default check (bit-identical read-back, streamed)
  4. unless --no-back: llamakit HF → Meta at the same MP, --no-check

transformers' script hard-codes what Scout's release is: vocab 202048, 8 shards of 1024 expert columns, and it reads
params["vision_args"] unconditionally; so --tf-python requires --mp 8 --vocab 202048 --vision-layers N (≥ 1). The
script is in no transformers wheel or sdist (checked 4.51.3, 4.54.1, 4.57.6): install transformers in a side
virtualenv and put the release's models/llama4/convert_llama4_weights_to_hf.py from the source tree into it.

The largest tensor group is one MoE layer's experts.gate_up_proj (16 × 5120 × 16384 bf16 = 2560 MiB); transformers'
script concatenates it whole, llamakit streams it a few experts at a time.

    .venv/bin/python benchmarks/llama4_convert_bench.py --work /work/scratch/l4-bench --layers 1 --mp 8 \
        --vocab 202048 --vision-layers 1 --tf-python /work/scratch/venv-tf-l4/bin/python --repeats 2 --no-back
"""

from __future__ import annotations

import argparse
import base64
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
    # rope.freqs: the rotary table older Meta files carry and llama4/model.py Transformer.load_hook drops. Both
    # converters drop it too; transformers' script needs at least one dropped key (it ends with state_dict.pop("")).
    return out + [("norm.weight", (D,)), ("output.weight", (vocab // mp, D)), ("rope.freqs", (hd // 2,))]


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
    # tokenizer.model: a tiktoken rank file of the 256 single bytes (the format Meta ships; both converters turn it
    # into tokenizer.json with Llama 4's specials after the ranks). Its size is not what this measures.
    (out / "tokenizer.model").write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    return total


# transformers' script as its __main__ runs it (write_tokenizer, then write_model with --convert_checkpoints), except
# the image processor that write_tokenizer also saves: Llama4ImageProcessorFast needs torchvision, whose PyPI wheels are
# built against CUDA torch (their ops do not load on the CPU torch here, and transformers then fails to import the model).
TF_DRIVER = """
import sys
from transformers.models.llama4 import convert_llama4_weights_to_hf as c
src, out, mp = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = c.Llama4Converter(vocab_file=src + "/tokenizer.model", pattern=c.O200K_PATTERN,
                        special_tokens=c.BASIC_SPECIAL_TOKENS + c.LLAMA4_SPECIAL_TOKENS, bos_token="<|begin_of_text|>",
                        eos_token="<|end_of_text|>", pad_token="<|finetune_right_pad_id|>",
                        model_max_length=c.max_context_length(src, False)).converted_tokenizer
tok.save_pretrained(out)
c.write_model(model_path=out, input_base_path=src, num_shards=mp, convert_checkpoints=True, safe_serialization=True,
              instruct=False)
"""


def child_peak(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """Run `cmd` under a tiny wrapper that reports its own child's ru_maxrss (so each run is measured alone; a child
    killed by a signal, e.g. the OOM killer, is reaped and counted too). Output goes to `log`."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "rc = subprocess.run(sys.argv[2:], stdout=open(sys.argv[1], 'w'), stderr=subprocess.STDOUT).returncode; "
               "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")
    out = subprocess.run([sys.executable, "-c", wrapper, str(log), *cmd], capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]) / 1024, int(out[2])


def hf_tensors(d: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} of an HF output directory."""
    from safetensors import safe_open

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            out.update({k: f for k in h.keys()})
    return out


def compare(ours: Path, theirs: Path) -> dict:
    """Tensor by tensor (one pair in memory at a time): names only one side has, names whose tensors differ
    (dtype, shape or any bit), and how many are identical."""
    import torch
    from safetensors import safe_open

    a, b = hf_tensors(ours), hf_tensors(theirs)
    same, differ = 0, []
    for name in sorted(a.keys() & b.keys()):
        with safe_open(a[name], "pt") as ha, safe_open(b[name], "pt") as hb:
            x, y = ha.get_tensor(name), hb.get_tensor(name)
            if x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.view(torch.int16) if x.dtype == torch.bfloat16 else x,
                                                                         y.view(torch.int16) if y.dtype == torch.bfloat16 else y):
                same += 1
            else:
                differ.append(f"{name}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}")
            del x, y
    return {"identical": same, "differ": differ, "only_llamakit": sorted(a.keys() - b.keys()),
            "only_transformers": sorted(b.keys() - a.keys())}


def tail(log: Path, n: int = 3) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.exists() else []
    return " | ".join(lines[-n:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--mp", type=int, default=2)
    ap.add_argument("--vision-layers", type=int, default=0, help="write the Scout vision encoder with this many layers")
    ap.add_argument("--tf-python", help="python of a side virtualenv with transformers' Llama 4 converter")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the runs, interleaved")
    ap.add_argument("--no-back", action="store_true", help="skip llamakit HF → Meta")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.tf_python and (a.mp != 8 or a.vocab != 202048 or not a.vision_layers):
        # convert_llama4_weights_to_hf.py reshapes the experts as 8 shards of 1024 columns (Scout's release: MP 8),
        # loads into a config with vocab 202048, and reads params["vision_args"] unconditionally.
        raise SystemExit("--tf-python needs --mp 8 --vocab 202048 --vision-layers N (what transformers' script hard-codes)")
    src = a.work / "meta"
    shutil.rmtree(a.work, ignore_errors=True)
    t = time.perf_counter()
    size = generate(src, a.layers, a.vocab, a.mp, a.vision_layers)
    print(f"generated {size / 1e9:.2f} GB (MP {a.mp}, {a.layers} layer(s), {a.vision_layers} vision layer(s)) "
          f"in {time.perf_counter() - t:.0f}s", flush=True)
    group = 16 * 5120 * 2 * 8192 * 2
    py = [sys.executable, "-m", "llamakit", "convert"]
    runs = [("llamakit meta→hf --no-check", py + [str(src), str(a.work / "hf"), "--no-check"], "hf")]
    if a.tf_python:
        runs.append(("transformers convert_llama4_weights_to_hf", [a.tf_python, "-c", TF_DRIVER, str(src), str(a.work / "tf"),
                                                                    str(a.mp)], "tf"))
    runs.append(("llamakit meta→hf (bit-identical read-back check)", py + [str(src), str(a.work / "hf2")], "hf2"))
    if not a.no_back:
        runs.append(("llamakit hf→meta --no-check", py + [str(a.work / "hf"), str(a.work / "back"), "--to", "meta",
                                                         "--mp", str(a.mp), "--no-check"], "back"))
    rows, agreement = [], None
    for rep in range(a.repeats):
        for label, cmd, out in runs:
            if out == "back" and not (a.work / "hf").exists():
                continue
            os.sync()
            load = os.getloadavg()[0]
            wall, rss, rc = child_peak(cmd, a.work / f"{out}.{rep}.log")
            rows.append((label, rep, load, wall, rss, rc))
            note = f" EXIT {rc}: {tail(a.work / f'{out}.{rep}.log')}" if rc else ""
            print(f"[{rep}] {label}: load {load:.2f}, {wall:.1f}s, peak RSS {rss:.0f} MiB{note}", flush=True)
            print("    " + " ".join("TF_DRIVER" if c == TF_DRIVER else c for c in cmd), flush=True)
            if out == "tf" and rc == 0 and agreement is None and (a.work / "hf").exists():
                agreement = compare(a.work / "hf", a.work / "tf")
                print(json.dumps(agreement, indent=1), flush=True)
            if out in ("tf", "hf2", "back"):
                shutil.rmtree(a.work / out, ignore_errors=True)
        shutil.rmtree(a.work / "hf", ignore_errors=True)
    print(f"\ncheckpoint {size / 1e9:.2f} GB; largest tensor group (one layer's experts.gate_up_proj) {group / 2**20:.0f} MiB")
    print("| run | round | load avg before | wall s | peak RSS MiB | peak RSS / largest group | exit |\n|---|---:|---:|---:|---:|---:|---:|")
    for label, rep, load, wall, rss, rc in rows:
        print(f"| {label} | {rep + 1} | {load:.2f} | {wall:.1f} | {rss:.0f} | {rss / (group / 2**20):.2f} | {rc} |")
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
