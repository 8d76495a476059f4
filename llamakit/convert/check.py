"""Proving a conversion: the same token batch through the source and the result.

Each side runs in its own format's code, built from its own files: Meta shards through
`reference.forward` (Meta's model code, shard by shard, never merged) with params.json +
the release errata as decide.py reads them, GGUF weights through the same reference
(they are Meta-layout), HF directories through transformers from the written
config.json. Neither side is built from the converter's derived `Arch` of the result, so
a config.json that says the wrong rope factor, θ, eps or tying fails the check. Both
compute in float32 so a lossless conversion differs only by float reassociation; a
--dtype cast is judged against a tolerance that matches the precision it cast to.

Two batches: 16 random tokens at positions 0..15, and a short one whose position ids are
spread from 0 to ~100k. RoPE is relative, so only the second makes query-key distances
reach the long wavelengths llama3 scaling rescales (factor 8 vs 32 differ by ~1e-6 in
the first batch of a tiny model, by ~0.5 in the second).

Both sides stream their weights in row blocks from the mapped files (stream.py): the Meta
side through `reference.forward_batches`, the HF side through transformers' own model built
from config.json with its linear layers reading the safetensors files a block at a time
(hf_forward.py). Each block is read once for all batches, so the check's memory is one block
of one tensor (stream.CHECK_BLOCK_BYTES of float32) plus activations, for a tiny model as for 405B, and its
time is one pass over each side's bytes. `whole_model=True` loads the HF side with
`from_pretrained` instead (tests show both give the same logits).

`compare` is `source_side` then `finish`. `convert` calls them apart: the source side reads
only the source, so it runs on a worker thread while the weights are written; `finish` runs
the result side on the written files and compares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llamakit.convert import reference
from llamakit.convert.decide import params_json
from llamakit.convert.stream import PartsRows
from llamakit.errors import EquivalenceError

# max |Δlogit| allowed, relative to the largest |logit| (at least 1), by the dtype the weights were cast to
RTOL = {None: 1e-4, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


@dataclass
class CheckReport:
    max_abs: float
    tol: float
    top1: float
    source: str
    result: str
    tokens: list[int]  # the batch shape
    spread_positions: list[int] | None = None  # the position ids of the spread batch
    spread_max_abs: float | None = None  # its own max |Δlogit| (max_abs covers both batches)

    def ok(self) -> bool:
        return self.max_abs <= self.tol

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"max |Δlogit| {self.max_abs:.2e} ≤ {self.tol:.1e}, top-1 agreement {self.top1:.1%} "
                f"({self.source} vs {self.result})")


def token_batch(vocab_size: int, *, batch: int = 1, seq: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=g)


SPREAD_MAX = 100_000


def spread_batch(vocab_size: int, *, seq: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [1, seq], increasing position ids [seq] from 0 to ~SPREAD_MAX, irregularly spaced)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (1, seq), generator=g)
    inner = torch.randperm(SPREAD_MAX - 1, generator=g)[: seq - 2] + 1
    positions = torch.cat([torch.tensor([0]), inner.sort().values, torch.tensor([SPREAD_MAX])])
    return tokens, positions


# --- the two kinds of forward ----------------------------------------------------


def reference_logits(source, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Meta's model code on a Meta source's own shards (params.json + errata, as decided from its files), or
    on a canonical source (MP 1)."""
    return reference_logits_many(source, [(tokens, positions)])[0]


def reference_logits_many(source, batches: list) -> list[torch.Tensor]:
    """`reference_logits` for several (tokens, positions or None) batches, each weight read once."""
    if hasattr(source, "shard_weights"):
        return reference.forward_batches(source.params, source.shard_weights(), batches, mp=source.mp,
                                         has_output=source.plan.has_output, rope=source.arch.rope_scaling)
    factors = getattr(source, "rope_freqs", None)  # a GGUF's own llama3 scaling, run as llama.cpp runs it
    shapes = {e.name: e.shape for e in source.entries()}
    return reference.forward_batches(params_json(source.arch), lambda _rank, name: PartsRows(source, name, shapes[name]),
                                     batches, mp=1, has_output=not source.arch.tied, rope=source.arch.rope_scaling,
                                     freq_factors=factors)


def hf_logits(model_dir: Path, tokens: torch.Tensor, *, whole_model: bool = False,
              positions: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    return hf_logits_many(model_dir, [(tokens, positions)], whole_model=whole_model)[0]


def hf_logits_many(model_dir: Path, batches: list, *, whole_model: bool = False) -> list[tuple[torch.Tensor, str]]:
    """transformers' logits for each (tokens, positions or None) batch: weights streamed in row blocks
    (hf_forward.py), or with `whole_model` the model loaded whole by `from_pretrained`."""
    if not whole_model:
        from llamakit.convert import hf_forward

        return [(t, "transformers (streamed)") for t in hf_forward.logits(model_dir, batches)]
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own progress owns stderr
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
    out = []
    with torch.no_grad():
        for tokens, positions in batches:
            pos = None if positions is None else positions[None].expand(tokens.shape[0], -1)
            out.append((model(tokens, position_ids=pos).logits.float(), "transformers"))
    return out


# --- the comparison --------------------------------------------------------------


def _side(source, batches, whole_model, what: str, *, hf_dir: Path | None = None, reference_code: str = "llamakit"):
    """One side's logits for every batch, in its own format's code, and its name."""
    if hf_dir is not None or source.fmt == "hf":
        res = hf_logits_many(hf_dir or source.path, batches, whole_model=whole_model)
        return [r[0] for r in res], res[0][1]
    which = what if what == "result" else source.fmt
    if reference_code == "meta":
        from llamakit.convert import meta_code

        ver = meta_code.require()
        params = source.params if hasattr(source, "shard_weights") else params_json(source.arch)
        has_output = source.plan.has_output if hasattr(source, "plan") else not source.arch.tied
        out = meta_code.logits(params, source.load, batches, vocab_size=source.arch.vocab_size, has_output=has_output,
                               rope=source.arch.rope_scaling)
        return out, f"Meta's llama-models {ver} code ({which}, MP {source.mp} merged)"
    name = f"Meta reference ({which}, MP {source.mp})"
    return reference_logits_many(source, batches), name


@dataclass
class SourceSide:
    """The source's logits for the check's batches, computed before (or while) the result is written."""

    batches: list
    logits: list[torch.Tensor]
    name: str
    whole_model: bool
    reference_code: str


def check_batches(vocab_size: int) -> list:
    tokens = token_batch(vocab_size)
    spread_tokens, positions = spread_batch(vocab_size)
    return [(tokens, None), (spread_tokens, positions)]


def source_side(source, *, whole_model: bool = False, reference_code: str = "llamakit") -> SourceSide:
    """The first half of `compare`: it reads only the source, so convert runs it while the weights are written."""
    batches = check_batches(source.arch.vocab_size)
    logits, name = _side(source, batches, whole_model, "source", reference_code=reference_code)
    return SourceSide(batches, logits, name, whole_model, reference_code)


def finish(side: SourceSide, source, result_dir: Path, to: str, *, cast=None,
           report_path: Path | None = None) -> CheckReport:
    """The second half of `compare`: the written result's logits against the source's; raise if they disagree."""
    batches = side.batches
    if to == "hf":
        (b, b2), b_name = _side(None, batches, side.whole_model, "result", hf_dir=result_dir)
    else:
        from llamakit.convert.meta import MetaSource

        (b, b2), b_name = _side(MetaSource(result_dir), batches, side.whole_model, "result",
                                reference_code=side.reference_code)
    (a, a2), a_name = side.logits, side.name
    diff1 = (a - b).abs().max().item()
    diff2 = (a2 - b2).abs().max().item()
    diff = max(diff1, diff2)
    tol = RTOL[cast] * max(1.0, a.abs().max().item(), a2.abs().max().item())
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    rep = CheckReport(diff, tol, top1, a_name, b_name, list(batches[0][0].shape), batches[1][1].tolist(), diff2)
    if not rep.ok():
        raise EquivalenceError(diff, tol, top1, path=report_path or result_dir)
    return rep


def compare(source, result_dir: Path, to: str, *, cast=None, whole_model: bool = False,
            report_path: Path | None = None, reference_code: str = "llamakit") -> CheckReport:
    """Run both batches through `source` and through the written `result_dir`; raise if they disagree."""
    side = source_side(source, whole_model=whole_model, reference_code=reference_code)
    return finish(side, source, result_dir, to, cast=cast, report_path=report_path)
