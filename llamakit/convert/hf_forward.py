"""transformers' own model on an HF directory, its weights streamed: the HF side of the equivalence check.

The model is what `AutoModelForCausalLM.from_config` builds from the directory's config.json
(rope type, factor and θ, eps, tying, GQA: transformers decides them all, never llamakit's
`Arch`), built on the meta device so it holds no weights. Each `nn.Linear` is then swapped for
a `StreamedLinear` that multiplies by its tensor one row block at a time, read from the
safetensors files (stream.py), each `nn.Embedding` for a lookup of the needed rows; norms are
loaded as they are (vectors). Which tensor a module reads is the name transformers gives its
parameter, after its own weight tying (a tied lm_head is the embedding's parameter). So the
forward is transformers' `LlamaForCausalLM.forward` and the memory is one block of one tensor.

All batches run as one padded batch (the check's batches have different lengths and position
ids): right padding under a causal mask leaves every real position's logits unchanged, and
each weight block is read once for all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llamakit.convert.hf import INDEX, safetensors_files
from llamakit.convert.stream import Rows, SafetensorsRows, linear, safetensors_header
from llamakit.errors import CheckIncomplete


class StreamedLinear(torch.nn.Module):
    def __init__(self, rows: Rows, bias: torch.Tensor | None):
        super().__init__()
        self.rows, self.bias = rows, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x.float(), self.rows)
        return y if self.bias is None else y + self.bias


class StreamedEmbedding(torch.nn.Module):
    def __init__(self, rows: Rows):
        super().__init__()
        self.rows = rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows.take(ids)


def _locations(model_dir: Path) -> dict[str, Path]:
    if (model_dir / INDEX).exists():
        return {k: model_dir / f for k, f in json.loads((model_dir / INDEX).read_text())["weight_map"].items()}
    from safetensors import safe_open

    where = {}
    for f in safetensors_files(model_dir):
        with safe_open(f, framework="pt") as st:
            where.update(dict.fromkeys(st.keys(), f))
    return where


def streamed_model(model_dir: Path) -> torch.nn.Module:
    """transformers' causal LM for `model_dir`, its linear and embedding weights streamed from the files."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    where = _locations(model_dir)
    headers = {f: safetensors_header(f) for f in set(where.values())}  # each file's header read once
    config = AutoConfig.from_pretrained(str(model_dir))
    config._attn_implementation = "eager"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()
    names = {id(p): n for n, p in model.named_parameters()}  # a tied parameter keeps its first (embedding) name

    def file_of(param) -> tuple[str, Path]:
        name = names[id(param)]
        if name not in where:
            # from_pretrained would initialise it at random: the result cannot equal the source
            raise CheckIncomplete(f"the converted model lacks '{name}', which its config.json implies", path=model_dir)
        return name, where[name]

    def tensor(param) -> torch.Tensor:
        name, f = file_of(param)
        with safe_open(f, framework="pt") as st:
            return st.get_tensor(name).float()

    for mod_name, module in list(model.named_modules()):
        parent, _, child = mod_name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if isinstance(module, torch.nn.Linear):
            name, f = file_of(module.weight)
            bias = tensor(module.bias) if module.bias is not None else None
            setattr(owner, child, StreamedLinear(SafetensorsRows(f, name, headers[f]), bias))
        elif isinstance(module, torch.nn.Embedding):
            name, f = file_of(module.weight)
            setattr(owner, child, StreamedEmbedding(SafetensorsRows(f, name, headers[f])))
        elif any(b.is_meta for b in module.buffers(recurse=False)):
            setattr(owner, child, type(module)(config=config))  # rotary inv_freq: computed again, on the CPU
        else:
            for pname, p in list(module.named_parameters(recurse=False)):
                module._parameters[pname] = torch.nn.Parameter(tensor(p), requires_grad=False)
    return model.eval()


@torch.no_grad()
def logits(model_dir: Path, batches: list) -> list[torch.Tensor]:
    """float32 logits for each (tokens [b, s], positions [s] or None) batch, in one padded forward."""
    model = streamed_model(model_dir)
    width = max(t.shape[1] for t, _ in batches)
    ids, pos = [], []
    for tokens, positions in batches:
        b, s = tokens.shape
        p = torch.arange(s) if positions is None else positions
        pad = width - s  # pad tokens repeat the last one at positions after it: causally invisible to the real ones
        ids.append(torch.cat([tokens, tokens[:, -1:].expand(b, pad)], dim=1))
        pos.append(torch.cat([p, p[-1] + 1 + torch.arange(pad)])[None].expand(b, width))
    out = model(torch.cat(ids), position_ids=torch.cat(pos)).logits.float()
    res, a = [], 0
    for tokens, _ in batches:
        b, s = tokens.shape
        res.append(out[a:a + b, :s])
        a += b
    return res
