"""Meta's own model code (PyPI llama-models 0.3.0 + fairscale) as the oracle for conversions.

One process per model-parallel rank (gloo, CPU), as Meta's shards are made; `launch` starts
them with torchrun's environment contract (RANK, WORLD_SIZE, MASTER_ADDR/PORT), and
`torchrun --nproc_per_node MP meta_oracle.py MODE ...` works the same (torchrun's own agent
is not used by the tests: its rendezvous stalled for minutes on this offline machine):

    meta_oracle.py write   DIR SHAPE FACTOR BATCHES LOGITS
    meta_oracle.py forward DIR SHAPE FACTOR BATCHES LOGITS

`write` builds Meta's `Transformer` for a tiny SHAPE, fills it with seeded random weights
through fairscale's own master-weight initialisation (every rank builds the full
tensor and keeps its own slice: fairscale splits, not llamakit or this file), and saves
each rank's `state_dict()` as consolidated.NN.pth (bf16, as Meta ships) + params.json.
`forward` loads a Meta directory's shards into Meta's `Transformer` (strict: every key
Meta's code has must be there). Both then run Meta's modules on the token batches of
BATCHES (tokens, positions): the embedding, `precompute_freqs_cis` at the given position
ids, each `TransformerBlock`, the norm and the output projection, and rank 0 saves the
logits. FACTOR replaces the scale factor Meta's `apply_scaling` hard-codes (8), for the
releases whose factor the errata correct (Llama 3.2 1B/3B: 32).

Nothing here imports llamakit: the oracle is independent of the code it judges.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import torch

# params.json exactly as Meta writes each generation's (tiny widths); VOCAB: the tokenizer's size when -1
SHAPES = {
    # Llama 1/2 7B-like: MHA, theta 1e4 (no key), vocab from the tokenizer, ParallelEmbedding (dim split)
    "llama2": dict(dim=64, n_layers=2, n_heads=8, multiple_of=4, norm_eps=1e-5, vocab_size=-1),
    # Llama 2 70B-like: GQA with the Llama 2 code
    "llama2-gqa": dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, multiple_of=32, ffn_dim_multiplier=1.3,
                       norm_eps=1e-5, vocab_size=-1),
    # Llama 3.1: llama3 rope scaling
    "llama3.1": dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=160, multiple_of=32,
                     ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True),
    # Llama 3.2 1B/3B: as 3.1, output.weight stored equal to the embedding
    "llama3.2-1b": dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=160, multiple_of=64,
                        ffn_dim_multiplier=1.5, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True),
}
VOCAB = 128
LEGACY = {"llama2", "llama2-gqa"}
TIED = {"llama3.2-1b"}
QK_GAIN = 4.0  # sharp attention, so that rotary positions change the logits visibly


def _setup(factor: float):
    import torch.distributed as dist
    from fairscale.nn.model_parallel import initialize as fs_init

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    fs_init.initialize_model_parallel(dist.get_world_size())
    import llama_models.llama3.model as M

    if factor != 8:
        M.apply_scaling = _with_scale_factor(M.apply_scaling, factor)
    return M


def _with_scale_factor(apply_scaling, factor: float):
    """Meta's own `apply_scaling` with the scale factor it hard-codes (the constant 8) replaced by `factor`.

    The function object is rebuilt from Meta's compiled code with that one constant swapped, so the formula
    run is Meta's as published, not a copy of it; the constants are checked first (llama-models 0.3.0:
    scale_factor 8, low_freq_factor 1, high_freq_factor 4, old_context_len 8192, and the 2 of 2π)."""
    import types

    code = apply_scaling.__code__
    if code.co_consts != (None, 8, 1, 4, 8192, 2):
        raise RuntimeError(f"llama-models' apply_scaling is not 0.3.0's (constants {code.co_consts})")
    consts = tuple(factor if c == 8 and type(c) is int else c for c in code.co_consts)
    return types.FunctionType(code.replace(co_consts=consts), apply_scaling.__globals__, apply_scaling.__name__)


@contextlib.contextmanager
def seeded_master_weights(g: torch.Generator, seeded: bool = True):
    """While open, fairscale's parallel layers draw their master weights from `g` (every rank the same full tensor,
    each keeping its own slice: fairscale splits) where Meta's `init_method=lambda x: x` leaves them to chance."""
    import fairscale.nn.model_parallel.layers as L

    real = L._initialize_affine_weight

    def init(weight, out_features, in_features, per_partition_size, partition_dim, init_method, stride=1,
             return_master_weight=False):
        def fill(w):
            with torch.no_grad():
                return w.copy_(torch.randn(w.shape, generator=g) / in_features ** 0.5)

        return real(weight, out_features, in_features, per_partition_size, partition_dim, fill if seeded else init_method,
                    stride, return_master_weight)

    L._initialize_affine_weight = init
    try:
        yield
    finally:
        L._initialize_affine_weight = real


def _model_args(shape: str):
    from llama_models.llama3.args import ModelArgs

    p = dict(SHAPES[shape])
    if p["vocab_size"] == -1:
        p["vocab_size"] = VOCAB
    p.setdefault("rope_theta", 10000.0)  # Llama 1/2: Meta's code hard-coded 1e4 (params.json has no key)
    return ModelArgs(**p, max_batch_size=2, max_seq_len=16)


def _build(M, shape: str, *, seeded: bool):
    """Meta's Transformer for SHAPE; with `seeded`, every fairscale master weight drawn from a seeded generator."""
    import fairscale.nn.model_parallel.layers as L

    g = torch.Generator().manual_seed(0)
    with seeded_master_weights(g, seeded):
        model = M.Transformer(_model_args(shape))
        if shape in LEGACY:  # Llama 1/2's model.py: the same Transformer with a dim-split ParallelEmbedding
            model.tok_embeddings = L.ParallelEmbedding(model.vocab_size, model.params.dim, init_method=lambda x: x)
    if seeded:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                elif name.endswith(("wq.weight", "wk.weight")):
                    p.mul_(QK_GAIN)
            if shape in TIED:  # Meta's release of 3.2 1B/3B: output.weight stored equal to the embedding
                model.output.weight.copy_(model.tok_embeddings.weight)
            for p in model.parameters():  # the values a bf16 checkpoint holds
                p.copy_(p.to(torch.bfloat16).float())
    return model.eval()


@torch.inference_mode()
def logits(M, model, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Meta's modules on `tokens` at `positions` (Transformer.forward takes only a start position)."""
    args = model.params
    freqs_cis = M.precompute_freqs_cis(args.dim // args.n_heads, int(positions.max()) + 1, args.rope_theta,
                                       args.use_scaled_rope)[positions]
    seqlen = tokens.shape[1]
    mask = torch.triu(torch.full((seqlen, seqlen), float("-inf")), diagonal=1)
    h = model.tok_embeddings(tokens)
    for layer in model.layers:
        h = layer(h, 0, freqs_cis, mask)
    return model.output(model.norm(h)).float()


def main(argv: list[str]) -> None:
    import torch.distributed as dist

    mode, directory, shape, factor, batches, out = argv
    directory = Path(directory)
    M = _setup(float(factor))
    rank = dist.get_rank()
    if mode == "write":
        model = _build(M, shape, seeded=True)
        directory.mkdir(parents=True, exist_ok=True)
        sd = {k: v.to(torch.bfloat16).clone() for k, v in model.state_dict().items()}
        torch.save(sd, directory / f"consolidated.{rank:02d}.pth")
        if rank == 0:
            (directory / "params.json").write_text(json.dumps(SHAPES[shape]))
    else:
        model = _build(M, shape, seeded=False)
        sd = torch.load(directory / f"consolidated.{rank:02d}.pth", weights_only=True)
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    got = [logits(M, model, t, p) for t, p in torch.load(batches, weights_only=True)]
    if rank == 0:
        torch.save(got, out)
    dist.barrier()
    dist.destroy_process_group()


def launch(mode: str, directory, shape: str, factor: float, batches, out, *, nproc: int = 1, timeout: float = 600) -> None:
    """Run this file in `nproc` processes, one per model-parallel rank; raise with their stderr if one fails."""
    run_ranks(__file__, [mode, directory, shape, factor, batches, out], nproc=nproc, timeout=timeout)


def run_ranks(script: str, args: list, *, nproc: int = 1, timeout: float = 600) -> None:
    """`script ARGS...` in `nproc` processes with torchrun's environment contract (RANK, WORLD_SIZE, MASTER_ADDR/PORT),
    nothing of llamakit on their path; raise with the first failing rank's stderr."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(nproc),
               GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # nothing of llamakit on the oracle's path
    procs = [subprocess.Popen([sys.executable, script, *map(str, args)],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for r in range(nproc)]
    errs = [p.communicate(timeout=timeout)[1] for p in procs]
    bad = [(r, p.returncode, e) for r, (p, e) in enumerate(zip(procs, errs)) if p.returncode]
    if bad:
        raise RuntimeError(f"Meta's code failed on rank {bad[0][0]} (exit {bad[0][1]}):\n{bad[0][2][-3000:]}")


if __name__ == "__main__":
    main(sys.argv[1:])
