"""Meta's own model code (PyPI llama-models + fairscale, the `reference` extra) as a check's Meta-side forward.

`convert --check --reference meta` runs the Meta side of the proof through
`llama_models.llama3.model.Transformer` itself instead of llamakit's `reference.py`: a
process group of one (gloo), fairscale model parallel of 1, the shards merged into it.
Meta's code hard-codes the llama3 scaling constants (factor 8); its `apply_scaling` is
swapped, for the duration of the forward, for the same function run with the constants
decide.py settled (params.json + the release errata: Llama 3.2 1B/3B need 32).
Its `Transformer.forward` takes a start position only, so the batches run through its
modules (embedding, `precompute_freqs_cis` at the given position ids, each block, norm,
output) the way `forward` chains them.

Unlike `reference.py`, this holds the whole model in float32: for checks of models that fit.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from llamakit.errors import UsageError


def version() -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v("llama-models")
    except PackageNotFoundError:
        return None


def require() -> str:
    ver = version()
    try:
        import fairscale  # noqa: F401
        import llama_models.llama3.model  # noqa: F401
    except ImportError:
        ver = None
    if ver is None:
        raise UsageError("--reference meta needs Meta's model code (llama-models with fairscale)",
                         fix="pip install 'llamakit[reference]', or drop --reference meta")
    return ver


def _process_group() -> None:
    import socket

    import torch.distributed as dist
    from fairscale.nn.model_parallel import initialize as fs_init

    if not dist.is_initialized():
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group("gloo", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        fs_init.initialize_model_parallel(1)


def _scaling(rope: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """llama-models 0.3.0's apply_scaling with the decided constants in place of its hard-coded ones (the same
    function, vectorised, that reference.py runs: one copy of the formula in llamakit)."""
    from llamakit.convert.reference import apply_scaling

    return lambda freqs: apply_scaling(freqs, rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"],
                                       rope["original_max_position_embeddings"])


@torch.inference_mode()
def logits(params: dict, load: Callable[[str], torch.Tensor], batches: list, *, vocab_size: int, has_output: bool,
           rope: dict | None) -> list[torch.Tensor]:
    """Meta's Transformer on (tokens, positions or None) batches; `load(name)` gives a merged Meta tensor."""
    _process_group()
    import llama_models.llama3.model as M
    from llama_models.llama3.args import ModelArgs

    p = dict(params, vocab_size=vocab_size)
    p.setdefault("rope_theta", 10000.0)  # absent only from Llama 1/2 params.json, whose code hard-coded 1e4
    bsz = max(t.shape[0] for t, _ in batches)
    seq = max(t.shape[1] for t, _ in batches)
    args = ModelArgs(**p, max_batch_size=bsz, max_seq_len=seq)
    with torch.device("meta"):
        model = M.Transformer(args)
    state = {}
    for name in model.state_dict():
        if name.startswith("layers.") and ".attention.cache_" in name:
            continue
        state[name] = load("tok_embeddings.weight" if name == "output.weight" and not has_output else name).float()
    model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k, v in model.state_dict().items() if v.is_meta and ".cache_" not in k]
    if missing:
        raise AssertionError(f"Meta's Transformer left {missing[:3]} unloaded")
    for layer in model.layers:  # the KV caches are buffers Meta allocates; they carry no weights
        a = layer.attention
        a.cache_k = torch.zeros(bsz, seq, a.n_local_kv_heads, a.head_dim)
        a.cache_v = torch.zeros(bsz, seq, a.n_local_kv_heads, a.head_dim)
    model.eval()
    meta_scaling = M.apply_scaling
    if args.use_scaled_rope:
        M.apply_scaling = _scaling(rope)
    try:
        out = []
        for tokens, positions in batches:
            pos = torch.arange(tokens.shape[1]) if positions is None else positions
            freqs = M.precompute_freqs_cis(args.dim // args.n_heads, int(pos.max()) + 1, args.rope_theta,
                                           args.use_scaled_rope)[pos]
            n = tokens.shape[1]
            mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
            h = model.tok_embeddings(tokens)
            for layer in model.layers:
                h = layer(h, 0, freqs, mask)
            out.append(model.output(model.norm(h)).float())
        return out
    finally:
        M.apply_scaling = meta_scaling
