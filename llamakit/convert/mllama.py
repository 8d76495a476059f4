"""Llama 3.2 Vision (mllama): Meta's CrossAttentionTransformer checkpoints ⇄ MllamaForConditionalGeneration, streaming.

Both directions read `keymap.MLLAMA_RULES`. A Meta source exposes `hf_tensors()` and an HF source
`meta_tensors(mp)`: every output tensor with a generator of its dim-0 blocks, read from the memory-mapped
inputs ~16 MB at a time (the small tile tables and the patch embedding whole), so the writers of
llama4_io (HF shards via hf.write_shards, Meta shards via pth.PthWriter) stream them with bounded memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from llamakit.convert import keymap
from llamakit.convert.mllama_arch import MllamaArch, from_params
from llamakit.errors import ConversionError, InputFileError, UnknownKeyError

if TYPE_CHECKING:
    import torch

BLOCK_BYTES = 16 << 20
_MAIN = "text_model.tok_embeddings.weight"


def is_mllama_params(params: dict) -> bool:
    return int(params.get("vision_chunk_size", -1) or -1) > 0 or "vision_num_cross_attention_layers" in params


def is_mllama_config(path: Path) -> bool:
    try:
        return json.loads(Path(path).read_text()).get("model_type") == "mllama"
    except (OSError, ValueError):
        return False


def rows_of(a: MllamaArch) -> list[tuple[keymap.MRule, int | None]]:
    """Every (rule, Meta index) of the model, in rule order, layers in order."""
    counts = {"text": a.text.n_layers, "xattn": a.n_cross, "local": a.vision.layers, "global": a.vision.global_layers}
    return [(r, i) for r in keymap.MLLAMA_RULES for i in (range(counts[r.layers]) if r.layers else [None])]


def meta_name(rule: keymap.MRule, i: int | None) -> str:
    return rule.meta.format(i=i) if i is not None else rule.meta


def hf_name(rule: keymap.MRule, i: int | None, a: MllamaArch) -> str:
    return rule.hf.format(i=keymap.mllama_hf_layer(rule.layers, i, a.schedule)) if i is not None else rule.hf


def meta_shape(rule: keymap.MRule, a: MllamaArch) -> tuple[int, ...]:
    """The merged (MP-1) shape of the Meta tensor of `rule`."""
    t, v = a.text, a.vision
    D, hd, W = t.dim, t.head_dim, v.width
    Q, K, F = t.n_heads * hd, t.n_kv_heads * hd, t.hidden_dim
    name = rule.meta
    if name.startswith("text_model."):
        table = {"tok_embeddings": (t.vocab_size, D), "learnable_embedding": (a.new_tokens, D), "output": (t.vocab_size, D),
                 "gate_": (1,), "q_norm": (hd,), "k_norm": (hd,), "norm.": (D,), "wq.": (Q, D), "wk.": (K, D),
                 "wv.": (K, D), "wo.": (D, Q), "w1.": (F, D), "w3.": (F, D), "w2.": (D, F)}
    elif name.startswith("vision_model.vision_projection"):
        return (D, v.out_dim) if name.endswith("weight") else (D,)
    else:
        P = v.num_patches
        table = {"conv1": (W, 3 * v.patch ** 2), "gated_positional_embedding_gate": (1,),
                 "gated_positional_embedding": (v.max_tiles, v.max_tiles, P, W), "positional_embedding": (P, W),
                 "tile_pos_embed.embedding": (v.max_tiles, v.max_tiles, 1, W), "gate": (1,), "attn.w": (W, W),
                 "c_fc.weight": (v.hidden, W), "c_fc.bias": (v.hidden,), "c_proj.weight": (W, v.hidden)}
    for k, s in table.items():
        if k in name:
            return s
    return (W,)  # class embedding, layer norms, c_proj bias


def hf_shape(rule: keymap.MRule, a: MllamaArch) -> tuple[int, ...]:
    s = meta_shape(rule, a)
    if rule.transform == "rows":
        return (a.text.vocab_size + a.new_tokens, a.text.dim)
    if rule.transform == "patch":
        return (s[0], 3, a.vision.patch, a.vision.patch)
    if rule.transform == "tiles":
        return (len(keymap.supported_aspect_ratios(a.vision.max_tiles)) + 1, s[0] * s[2] * s[3])
    return s


def to_hf(rule: keymap.MRule, t: "torch.Tensor", a: MllamaArch) -> "torch.Tensor":
    """One Meta block (whole heads for rope; the whole tensor for patch and tiles) in HF's layout."""
    if rule.transform == "rope":
        return keymap.interleaved_to_half(t, t.shape[0] // a.text.head_dim)
    if rule.transform == "patch":
        return t.reshape(t.shape[0], 3, a.vision.patch, a.vision.patch)
    if rule.transform == "tiles":
        return keymap.tiles_to_hf(t).reshape(-1, t.shape[0] * t.shape[2] * t.shape[3])
    return t


def _step(t: "torch.Tensor", unit: int = 1) -> int:
    row = max(1, t[:1].numel() * t.element_size()) if t.dim() > 1 else t.numel() * t.element_size()
    return max(unit, BLOCK_BYTES // row // unit * unit) if t.dim() > 1 else max(1, t.shape[0])


def catalog_names(a: MllamaArch) -> list[str]:
    from llamakit import catalog
    from llamakit.errors import LlamakitError

    try:
        releases = catalog.list_releases()
    except LlamakitError:
        return []
    t = a.text
    return [r.name for r in releases if r.vision is not None and r.vision.kind == "mllama" and r.quantization is None
            and (r.meta.dim, r.meta.n_layers, r.meta.n_heads, r.meta.n_kv_heads, r.meta.vocab_size,
                 r.vision.cross_attention_layers) == (t.dim, t.n_layers, t.n_heads, t.n_kv_heads, t.vocab_size, a.n_cross)]


def decide_text(a: MllamaArch, params: dict | None, *, use_scaled_rope: bool) -> tuple[MllamaArch, list[str]]:
    """The text model's rope scaling and context, decided by decide.py as for any Llama 3 text model."""
    from llamakit.convert.decide import Facts, decide, rope_from_params

    given = params is None
    base = a.text if given else a.text.with_(rope_scaling=rope_from_params(params) or None)
    d = decide(Facts(base, use_scaled_rope, "distinct", given))
    return a.with_(text=d.arch.with_(tied=False)), list(d.errata)


class MllamaMetaSource:
    """A Meta Llama 3.2 Vision directory (consolidated.NN.pth = CrossAttentionTransformer state_dicts + params.json)."""

    fmt = "meta"
    family = "mllama"

    def __init__(self, directory: Path, params: dict):
        from llamakit.convert.arch import validate_params_json
        from llamakit.convert.meta_plan import shard_files
        from llamakit.convert.pth import load_pth

        self.path = Path(directory)
        params = validate_params_json(self.path / "params.json")  # typed, one-line errors for a bad file
        paths = shard_files(self.path)
        self.mp = len(paths)
        self._shards = [load_pth(p) for p in paths]
        keys = set(self._shards[0])
        for r, s in enumerate(self._shards[1:], 1):
            if set(s) != keys:
                diff = sorted(set(s) ^ keys)[:3]
                raise ConversionError(f"{paths[r].name} and {paths[0].name} hold different tensors ({', '.join(diff)})",
                                      path=self.path)
        rules = {}
        for k in keys:
            rules[k] = keymap.mllama_lookup(k, "meta", path=paths[0])[0]
        shapes = {k: self._merged_shape(k, rules[k]) for k in keys}
        arch = from_params(params, shapes, path=self.path / "params.json", mp=self.mp)
        self.arch, self.errata = decide_text(arch, params, use_scaled_rope=bool(params.get("use_scaled_rope")))
        want = {meta_name(r, i): r for r, i in rows_of(self.arch)}
        if set(want) != keys:
            missing, extra = sorted(set(want) - keys), sorted(keys - set(want))
            raise ConversionError(f"the shards do not hold the model params.json describes "
                                  f"({'missing ' + missing[0] if missing else 'unexpected ' + extra[0]})", path=self.path)
        for k, r in want.items():
            if shapes[k] != meta_shape(r, self.arch):
                raise ConversionError(f"'{k}' has shape {shapes[k]}, the model implies {meta_shape(r, self.arch)}",
                                      path=paths[0])
        self.catalog = catalog_names(self.arch)
        self.decision = None

    def _merged_shape(self, key: str, rule: keymap.MRule) -> tuple[int, ...]:
        s = list(self._shards[0][key].shape)
        if rule.split is not None and self.mp > 1:
            s[rule.split] *= self.mp
        return tuple(s)

    def shard_tensor(self, rank: int, name: str) -> "torch.Tensor":
        return self._shards[rank][name]

    def hf_tensors(self) -> Iterator[tuple[str, tuple[int, ...], "torch.dtype", callable]]:
        """(HF name, shape, dtype, blocks()) for every HF tensor, in rule order."""
        groups: dict[str, list] = {}
        for rule, i in rows_of(self.arch):
            groups.setdefault(hf_name(rule, i, self.arch), []).append((rule, i))
        for name, rows in groups.items():
            rule, i = rows[0]
            dtype = self._shards[0][meta_name(rule, i)].dtype
            yield name, hf_shape(rule, self.arch), dtype, (lambda rows=rows: self._blocks(rows))

    def _blocks(self, rows):
        import torch

        from llamakit.convert.pth import release

        for rule, i in sorted(rows, key=lambda ri: ri[0].slot):
            pieces = [s[meta_name(rule, i)] for s in self._shards]
            if rule.split is None:
                for r, p in enumerate(pieces[1:], 1):
                    if not torch.equal(p, pieces[0]):
                        raise ConversionError(f"replicated tensor '{meta_name(rule, i)}' differs between consolidated.00 "
                                              f"and .{r:02d}", path=self.path)
                pieces = pieces[:1]
            if rule.transform in ("patch", "tiles"):
                yield to_hf(rule, torch.cat(pieces, dim=rule.split or 0).contiguous(), self.arch)
                continue
            unit = self.arch.text.head_dim if rule.transform == "rope" else 1
            if rule.split == 1:  # row blocks of every shard side by side
                step = _step(pieces[0], unit)
                for a in range(0, pieces[0].shape[0], step):
                    yield torch.cat([p[a:a + step] for p in pieces], dim=1)
            else:
                for p in pieces:
                    for a in range(0, p.shape[0], _step(p, unit)):
                        yield to_hf(rule, p[a:a + _step(p, unit)], self.arch).contiguous()
            for p in pieces:
                release(p)


class MllamaHFSource:
    """An HF MllamaForConditionalGeneration directory (config.json model_type mllama, safetensors)."""

    fmt = "hf"
    family = "mllama"
    mp = 1

    def __init__(self, directory: Path):
        from safetensors import SafetensorError, safe_open

        from llamakit.convert.hf import safetensors_files

        self.path = Path(directory)
        arch = MllamaArch.from_hf_config(self.path / "config.json")
        self.arch, self.errata = decide_text(arch, None, use_scaled_rope=arch.text.rope_scaling is not None)
        self._where: dict[str, tuple[Path, str]] = {}
        shapes = {}
        for f in safetensors_files(self.path):
            try:
                with safe_open(f, framework="pt") as st:
                    for k in st.keys():
                        name = keymap.mllama_hf_name(k)
                        self._where[name] = (f, k)
                        shapes[name] = tuple(st.get_slice(k).get_shape())
            except (SafetensorError, OSError) as exc:
                raise InputFileError(f"unreadable safetensors file ({exc})", path=f, fix="re-download it") from None
        want = {hf_name(r, i, self.arch): r for r, i in rows_of(self.arch)}
        extra = sorted(set(shapes) - set(want))
        if extra:
            if not _hf_known(extra[0]):
                raise UnknownKeyError(extra[0], path=self._where[extra[0]][0], direction="Llama 3.2 Vision HF checkpoint")
            raise ConversionError(f"'{extra[0]}' does not belong to the model config.json describes", path=self.path)
        missing = sorted(set(want) - set(shapes))
        if missing:
            raise ConversionError(f"missing tensor(s) {', '.join(missing[:3])}", path=self.path,
                                  fix="the checkpoint is incomplete")
        for n, r in want.items():
            if shapes[n] != hf_shape(r, self.arch):
                raise ConversionError(f"'{n}' has shape {shapes[n]}, config.json implies {hf_shape(r, self.arch)}",
                                      path=self._where[n][0])
        self.catalog = catalog_names(self.arch)
        self.decision = None

    def get(self, name: str, lo: int | None = None, hi: int | None = None) -> "torch.Tensor":
        from safetensors import safe_open

        f, k = self._where[name]
        with safe_open(f, framework="pt") as st:
            return st.get_slice(k)[lo:hi] if lo is not None else st.get_tensor(k)

    def _dtype(self, name: str):
        from safetensors import safe_open

        from llamakit.convert.hf import st_torch_dtype

        f, k = self._where[name]
        with safe_open(f, framework="pt") as st:
            return st_torch_dtype(st.get_slice(k).get_dtype())

    def meta_tensors(self, mp: int):
        """(Meta name, shard shape, dtype, blocks(rank)) for every Meta tensor, in rule order."""
        for rule, i in rows_of(self.arch):
            shape = list(meta_shape(rule, self.arch))
            if rule.split is not None:
                shape[rule.split] //= mp
            name = hf_name(rule, i, self.arch)
            yield meta_name(rule, i), tuple(shape), self._dtype(name), \
                (lambda rank, rule=rule, name=name: self._shard_blocks(rule, name, rank, mp))

    def _shard_blocks(self, rule: keymap.MRule, name: str, rank: int, mp: int):
        a = self.arch
        full = meta_shape(rule, a)
        if rule.transform in ("patch", "tiles"):
            t = self.get(name)
            if rule.transform == "patch":
                t = t.reshape(full)
            else:
                t, why = keymap.tiles_from_hf(t, full[0], full[2], full[3])
                if why:
                    raise ConversionError(f"'{name}' holds {why}: Meta's per-tile grid cannot store it", path=self.path,
                                          fix="keep this model in HF format")
            yield _shard_of(t, rule.split, rank, mp).contiguous()
            return
        base = a.text.vocab_size if rule.transform == "rows" and rule.slot else 0
        n = full[0] // mp if rule.split == 0 else full[0]
        lo = base + (rank * n if rule.split == 0 else 0)
        unit = a.text.head_dim if rule.transform == "rope" else 1
        row = math.prod(full[1:]) * self._dtype(name).itemsize
        step = max(unit, BLOCK_BYTES // max(1, row) // unit * unit) if len(full) > 1 else n
        for s in range(0, n, step):
            t = self.get(name, lo + s, lo + min(n, s + step))
            if rule.split == 1:
                t = _shard_of(t, 1, rank, mp)
            if rule.transform == "rope":
                t = keymap.half_to_interleaved(t, t.shape[0] // a.text.head_dim)
            yield t.contiguous()


def _hf_known(key: str) -> bool:
    import re

    generic = re.sub(r"\.layers\.\d+\.", ".layers.{i}.", key)
    return any(generic == r.hf for r in keymap.MLLAMA_RULES)


def _shard_of(t, split: int | None, rank: int, mp: int):
    if split is None or mp == 1:
        return t
    n = t.shape[split] // mp
    return t.narrow(split, rank * n, n)

