"""Llama 4 (Scout, Maverick) text models: Meta's shipped layout ⇄ transformers' Llama4ForCausalLM, streaming.

Both directions read `keymap.LLAMA4_RULES`, the one table of how each fused tensor Meta ships
(attention.wqkv, feed_forward.mlp.fc1_weight, experts.moe_w_*_eD_F, ...) relates to the HF
tensors. A source exposes `hf_tensors()`: every HF tensor with a generator of its dim-0 blocks,
built from its own files. Routed experts stream one expert at a time (HF dim 0 is the expert),
plain tensors in ~16 MB row blocks, so the largest expert block, not the model, sets peak memory.

The built-in check inverts the conversion: the written files are read back through the other
direction's reader and must reproduce every source tensor bit for bit. (The logits proof against
Meta's own llama4 code is in tests/convert/test_llama4.py.)
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from llamakit.convert import keymap
from llamakit.convert.llama4_arch import Llama4Arch, unwrap
from llamakit.convert.llama4_facts import ROPE_ERRATUM, catalog_names, decide_context, decide_rope  # noqa: F401 (re-exported)
from llamakit.convert.llama4_vision import VisionArch, vision_config_of
from llamakit.errors import ConversionError, InputFileError, UnsafeCheckpointError

if TYPE_CHECKING:
    import torch

BLOCK_BYTES = 16 << 20


def is_llama4_params(params: dict) -> bool:
    p = unwrap(params)
    return "moe_args" in p or "nope_layer_interval" in p or "vision_args" in p


def is_llama4_config(path: Path) -> bool:
    try:
        return json.loads(Path(path).read_text()).get("model_type") in ("llama4", "llama4_text")
    except (OSError, ValueError):
        return False


def load_shipped(path: Path) -> dict:
    """A Meta Llama 4 shard, memory-mapped: tensors only, plus the io.BytesIO `_extra_state` entries Meta's files
    carry (allowed by name, then dropped; anything else beyond tensors is refused, as for every .pth)."""
    import pickle
    import zipfile

    import torch

    try:
        with torch.serialization.safe_globals([io.BytesIO, bytes]):
            obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(path, f"the pickle needs more than tensors ({str(exc).splitlines()[0][:160]})") from None
    except FileNotFoundError:
        raise InputFileError("shard file is missing", path=path) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise InputFileError(f"not a readable torch zip checkpoint ({str(exc).splitlines()[0][:160]})", path=path,
                             fix="re-download it and check it against checklist.chk (`llamakit verify`)") from None
    if not isinstance(obj, dict):
        raise InputFileError("expected a flat dict of tensors (a Meta consolidated checkpoint)", path=path)
    out = {}
    for k, v in obj.items():
        if keymap.LLAMA4_DROPPED.search(k):
            continue
        if not isinstance(v, torch.Tensor):
            raise InputFileError(f"'{k}' is a {type(v).__name__}, not a tensor", path=path)
        out[k] = v
    return out


def _sections(rule: keymap.L4Rule, a: Llama4Arch, mp: int) -> list[int]:
    """Rows of each section of a shard's fused tensor: its q, k, v rows (wqkv) or its w1, w3 rows (fc1)."""
    if rule.take[0] == "qkv":
        return [a.n_heads * a.head_dim // mp, a.n_kv_heads * a.head_dim // mp, a.n_kv_heads * a.head_dim // mp]
    return [a.dense_hidden // mp] * 2


def _rows_for(a: Llama4Arch, v: VisionArch | None = None) -> list[tuple[keymap.L4Rule, int | None]]:
    """Every (rule, layer) of the model, in model order: the decoder, then (multimodal) the vision encoder."""
    text = [r for r in keymap.LLAMA4_RULES if r.part == "text" and "{i}" not in r.meta]
    out = [(r, None) for r in text if r.meta not in ("norm.weight", "output.weight")]
    for i in range(a.n_layers):
        out += [(r, i) for r in keymap.llama4_layer_rules("moe" if a.is_moe(i) else "dense")]
    out += [(r, None) for r in text if r.meta in ("norm.weight", "output.weight")]
    if v is not None:
        vision = [r for r in keymap.LLAMA4_RULES if r.part == "vision"]
        layer = keymap.llama4_layer_rules("vision")
        head = [r for r in vision if r not in layer and not r.meta.startswith(_AFTER_LAYERS)]
        out += [(r, None) for r in head]
        for i in range(v.n_layers):
            out += [(r, i) for r in layer]
        out += [(r, None) for r in vision if r not in layer and r not in head]
    return out


# Vision tensors that follow the encoder layers in model order
_AFTER_LAYERS = ("vision_embeddings.vision_encoder.ln_post", "vision_embeddings.vision_adapter", "vision_projection")


def hf_name(rule: keymap.L4Rule, layer: int | None, v: VisionArch | None) -> str:
    """The rule's HF name: the multimodal layout (a vision encoder) nests the text model under language_model."""
    name = rule.hf.format(i=layer)
    return keymap.HF_TEXT_PREFIX + name if v is not None and rule.part == "text" else name


def hf_names(a: Llama4Arch, v: VisionArch | None = None) -> list[str]:
    return list(dict.fromkeys(hf_name(r, i, v) for r, i in _rows_for(a, v)))


def meta_names(a: Llama4Arch, v: VisionArch | None = None) -> list[str]:
    return list(dict.fromkeys(r.meta.format(i=i) for r, i in _rows_for(a, v)))


def hf_shape(rule: keymap.L4Rule, a: Llama4Arch, v: VisionArch | None = None) -> tuple[int, ...]:
    if rule.part == "vision":
        return v.shape(rule.hf, a.dim)
    D, V, hd = a.dim, a.vocab_size, a.head_dim
    hf = rule.hf
    table = {"embed_tokens": (V, D), "lm_head": (V, D), "layernorm": (D,), "norm.weight": (D,),
             "q_proj": (a.n_heads * hd, D), "k_proj": (a.n_kv_heads * hd, D), "v_proj": (a.n_kv_heads * hd, D),
             "o_proj": (D, a.n_heads * hd), "router": (a.num_experts, D),
             "experts.gate_up_proj": (a.num_experts, D, 2 * a.expert_hidden),
             "experts.down_proj": (a.num_experts, a.expert_hidden, D)}
    for k, shape in table.items():
        if k in hf:
            return shape
    F = a.expert_hidden if "shared_expert" in hf else a.dense_hidden
    return (D, F) if "down_proj" in hf else (F, D)


class Llama4MetaSource:
    """A Meta Llama 4 directory (consolidated.NN.pth in the shipped layout + params.json)."""

    fmt = "meta"
    family = "llama4"

    def __init__(self, directory: Path, params: dict, shard_paths: list[Path]):
        self.path = Path(directory)
        self.mp = len(shard_paths)
        self._shards = [load_shipped(p) for p in shard_paths]
        names = [p.name for p in shard_paths]
        keys = set(self._shards[0])
        for r, s in enumerate(self._shards[1:], 1):
            if set(s) != keys:
                diff = sorted(set(s) ^ keys)[:3]
                raise ConversionError(f"{names[r]} and {names[0]} hold different tensors ({', '.join(diff)})", path=self.path)
        vision_args = unwrap(params).get("vision_args")
        self.vision = VisionArch.from_params(vision_args, path=self.path / "params.json") if vision_args else None
        for k in keys:
            keymap.llama4_lookup(k, "meta", path=self.path / names[0])  # every key is one the table knows
        s0 = self._shards[0]
        emb = s0.get("tok_embeddings.weight")
        if emb is None:
            raise ConversionError("no tok_embeddings.weight: not a Llama checkpoint", path=self.path)
        fc1 = next((k for k in sorted(keys) if k.endswith("mlp.fc1_weight")), None)
        w_in = next((k for k in sorted(keys) if k.endswith("moe_w_in_eD_F")), None)
        p = unwrap(params)
        experts = (p.get("moe_args") or {}).get("num_experts", 0)
        rope, self.errata = decide_rope(p)
        self.arch = Llama4Arch.from_params(
            params, path=self.path / "params.json", vocab_size=emb.shape[0] * self.mp,
            dense=s0[fc1].shape[0] // 2 * self.mp if fc1 else None,
            expert=s0[w_in].shape[-1] * self.mp if w_in and experts else None, rope_scaling=rope)
        self.arch = self.arch.with_(max_position_embeddings=decide_context(self.arch))
        want = set(meta_names(self.arch, self.vision))
        if want != keys:
            missing, extra = sorted(want - keys), sorted(keys - want)
            what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
            enc = f", vision encoder of {self.vision.n_layers} layer(s)" if self.vision else ", no vision_args"
            raise ConversionError(f"the shards do not have the layers params.json describes ({what}; MoE every "
                                  f"{self.arch.moe_step} layer(s) of {self.arch.n_layers}{enc})", path=self.path,
                                  fix="the params.json does not belong to these shards")
        for rule, layer in _rows_for(self.arch, self.vision):  # vision shapes: only params.json states them
            if rule.part == "vision":
                self._check_shape(rule, layer)
        self.decision = None
        self.catalog = catalog_names(self.arch)

    def shard_tensor(self, rank: int, name: str) -> "torch.Tensor":
        return self._shards[rank][name]

    def _check_shape(self, rule: keymap.L4Rule, layer) -> None:
        want = list(hf_shape(rule, self.arch, self.vision))
        if rule.split is not None:
            want[rule.split] //= self.mp
        name = rule.meta.format(i=layer)
        got = tuple(self._shards[0][name].shape)
        if got != tuple(want):
            raise ConversionError(f"'{name}' has shape {got} per shard, params.json's vision_args imply {tuple(want)}",
                                  path=self.path, fix="the params.json does not belong to these shards")

    def _piece(self, rule: keymap.L4Rule, layer, rank: int, lo: int | None = None, hi: int | None = None):
        """This shard's contribution to the rule's HF tensor (experts: only experts lo..hi)."""
        a = self.arch
        t = self._shards[rank][rule.meta.format(i=layer)]
        if rule.experts:
            t = t.view(a.num_experts // 1, -1, t.shape[-1])[lo:hi]
        if rule.take:
            t = t.split(_sections(rule, a, self.mp), dim=0)[rule.take[1]]
        return t

    def _merged(self, rule, layer, lo=None, hi=None, used: list | None = None):
        """The merged (HF-oriented) tensor; the mapped shard views it read are appended to `used`, for the caller
        to hand their pages back (pth.release) once the block has been written."""
        import torch

        pieces = [self._piece(rule, layer, r, lo, hi) for r in range(self.mp)]
        if used is not None:
            used += pieces
        if rule.split is None:
            for r, p in enumerate(pieces[1:], 1):
                if not torch.equal(p, pieces[0]):
                    raise ConversionError(f"replicated tensor '{rule.meta.format(i=layer)}' differs between "
                                          f"consolidated.00 and .{r:02d}", path=self.path)
            t = pieces[0]
        else:
            t = torch.cat(pieces, dim=rule.split) if self.mp > 1 else pieces[0]
        return t.t() if rule.transpose else t

    def hf_tensors(self) -> Iterator[tuple[str, tuple[int, ...], "torch.dtype", Callable[[], Iterator]]]:
        """(HF name, shape, dtype, blocks()) for every HF tensor, in model order."""
        groups: dict[str, list] = {}
        for rule, layer in _rows_for(self.arch, self.vision):
            groups.setdefault(hf_name(rule, layer, self.vision), []).append((rule, layer))
        for name, rows in groups.items():
            rule, layer = rows[0]
            shape = hf_shape(rule, self.arch, self.vision)
            dtype = self._shards[0][rule.meta.format(i=layer)].dtype
            yield name, shape, dtype, (lambda rows=rows, shape=shape: self._blocks(rows, shape))

    def _blocks(self, rows, shape):
        import torch

        from llamakit.convert.pth import release

        rows = sorted(rows, key=lambda rl: rl[0].slot or 0)
        rule, layer = rows[0]
        if rule.experts:  # a few experts at a time: the pages read are handed back before the next ones
            per = max(1, BLOCK_BYTES // max(1, math.prod(shape[1:]) * 2))
            for lo in range(0, shape[0], per):
                hi, used = min(shape[0], lo + per), []
                parts = [self._merged(r, i, lo, hi, used) for r, i in rows]
                yield torch.cat(parts, dim=-1).contiguous() if len(parts) > 1 else parts[0].contiguous()
                for p in used:
                    release(p)
            return
        if rule.split == 0 and not rule.transpose and self.mp > 1:
            # A dim-0 split (embedding, output, column-parallel weights): the shards' pieces follow one another in
            # the HF tensor, so their rows go out as mapped, each piece's pages handed back after it. Merging first
            # held the tensor twice (copy + pages read): 4.2 GB for Scout's embedding at MP 8 (BENCHMARKS.md).
            for r in range(self.mp):
                p = self._piece(rule, layer, r)
                yield from _row_blocks(p)
                release(p)
            return
        used: list = []
        yield from _row_blocks(self._merged(rule, layer, used=used))
        for p in used:
            release(p)


class Llama4HFSource:
    """An HF Llama4ForCausalLM (config.json model_type llama4_text) or Llama4ForConditionalGeneration (llama4, with a
    vision_config) directory of safetensors."""

    fmt = "hf"
    family = "llama4"
    mp = 1

    def __init__(self, directory: Path):
        from safetensors import SafetensorError, safe_open

        from llamakit.convert.hf import safetensors_files

        self.path = Path(directory)
        self.arch = Llama4Arch.from_hf_config(self.path / "config.json")
        vc = vision_config_of(self.path / "config.json")
        self.vision = VisionArch.from_hf_config(vc, path=self.path / "config.json") if vc else None
        self._where: dict[str, Path] = {}
        shapes = {}
        for f in safetensors_files(self.path):
            try:
                with safe_open(f, framework="pt") as st:
                    for k in st.keys():
                        name = k.removeprefix(keymap.HF_TEXT_PREFIX)
                        keymap.llama4_lookup(name, "hf", path=f)
                        self._where[name] = (f, k)
                        shapes[name] = tuple(st.get_slice(k).get_shape())
            except (SafetensorError, OSError) as exc:
                raise InputFileError(f"unreadable safetensors file ({exc})", path=f, fix="re-download it") from None
        groups, full = {}, {}
        for rule, layer in _rows_for(self.arch, self.vision):
            groups.setdefault(rule.hf.format(i=layer), rule)
            full[rule.hf.format(i=layer)] = hf_name(rule, layer, self.vision)
        missing = [full[n] for n in groups if n not in shapes or self._where[n][1] != full[n]]
        if missing:
            raise ConversionError(f"missing tensor(s) {', '.join(missing[:3])}", path=self.path, fix="the checkpoint is incomplete")
        extra = sorted(set(shapes) - set(groups))
        if extra:
            raise ConversionError(f"'{extra[0]}' does not belong to the layers config.json describes", path=self.path)
        for n, rule in groups.items():
            want = hf_shape(rule, self.arch, self.vision)
            if shapes[n] != want:
                raise ConversionError(f"'{full[n]}' has shape {shapes[n]}, config.json implies {want}", path=self._where[n][0])
        self.errata, self.decision = [], None
        self.catalog = catalog_names(self.arch)

    def get(self, name: str, lo: int | None = None, hi: int | None = None) -> "torch.Tensor":
        from safetensors import safe_open

        f, k = self._where[name.removeprefix(keymap.HF_TEXT_PREFIX)]  # a multimodal name or the text model's
        with safe_open(f, framework="pt") as st:
            return st.get_slice(k)[lo:hi] if lo is not None else st.get_tensor(k)

    def meta_tensors(self, mp: int):
        """(Meta name, shard shape, dtype, blocks(rank)) for every shipped Meta tensor, in model order."""
        a = self.arch
        groups: dict[str, list] = {}
        for rule, layer in _rows_for(a, self.vision):
            groups.setdefault(rule.meta.format(i=layer), []).append((rule, layer))
        for name, rows in groups.items():
            rows = sorted(rows, key=lambda rl: rl[0].take[1] if rl[0].take else 0)
            rule, layer = rows[0]
            parts = [_shard_shape(r, a, mp, self.vision) for r, _ in rows]
            shape = (sum(p[0] for p in parts), *parts[0][1:])
            f, k = self._where[rule.hf.format(i=layer)]
            from safetensors import safe_open

            from llamakit.convert.hf import st_torch_dtype

            with safe_open(f, framework="pt") as st:
                dtype = st.get_slice(k).get_dtype()
            yield name, shape, st_torch_dtype(dtype), (lambda rank, rows=rows, mp=mp: self._shard_blocks(rows, rank, mp))

    def _shard_blocks(self, rows, rank: int, mp: int):
        a = self.arch
        for rule, layer in rows:
            name = rule.hf.format(i=layer)
            if rule.experts:
                E = a.num_experts
                per = max(1, BLOCK_BYTES // max(1, a.dim * 2 * a.expert_hidden * 2))
                for lo in range(0, E, per):
                    t = self.get(name, lo, min(E, lo + per))
                    if rule.slot is not None:
                        t = t.narrow(-1, rule.slot * a.expert_hidden, a.expert_hidden)
                    t = _shard_of(t, rule.split, rank, mp)
                    yield t.reshape(-1, t.shape[-1]).contiguous()
                continue
            t = self.get(name)
            if rule.transpose:
                t = t.t()
            yield _shard_of(t, rule.split, rank, mp).contiguous()


def _shard_of(t, split: int | None, rank: int, mp: int):
    if split is None or mp == 1:
        return t
    n = t.shape[split] // mp
    return t.narrow(split, rank * n, n)


def _row_blocks(t):
    """`t` in contiguous dim-0 blocks of about BLOCK_BYTES (a 1-D tensor whole)."""
    step = max(1, BLOCK_BYTES // max(1, t[:1].numel() * t.element_size())) if t.dim() > 1 else t.shape[0]
    for a in range(0, t.shape[0], step):
        yield t[a:a + step].contiguous()


def _shard_shape(rule: keymap.L4Rule, a: Llama4Arch, mp: int, v: VisionArch | None = None) -> tuple[int, ...]:
    """The shape one MP shard stores for `rule`'s part of a shipped tensor."""
    s = list(hf_shape(rule, a, v))
    if rule.slot is not None:
        s[-1] //= 2
    if rule.transpose:
        s = s[::-1]
    if rule.split is not None:
        s[rule.split] //= mp
    if rule.experts:
        s = [s[0] * s[1], s[2]]
    return tuple(s)


def shard_paths_of(directory: Path) -> list[Path]:
    from llamakit.convert.meta import shard_files

    return shard_files(Path(directory))


def open_meta(directory: Path, params: dict) -> Llama4MetaSource:
    from llamakit.convert.quantized import refuse_quantized

    refuse_quantized(directory, unwrap(params))  # Maverick FP8: before any shard is opened
    return Llama4MetaSource(directory, params, shard_paths_of(directory))
