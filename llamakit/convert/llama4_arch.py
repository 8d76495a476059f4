"""A Llama 4 text model's hyperparameters: read from Meta's params.json (+ shard shapes) or an HF config.json,
written as either.

Meta's params.json (llama-models `llama4/args.py` ModelArgs) states the widths only as formulas
(ffn_exp, ffn_dim_multiplier, multiple_of, moe_args.auto_scale_F); the layer pattern as intervals
(nope_layer_interval, moe_args.interleave_moe_layer_step); and rope scaling as `use_scaled_rope`
with factors Meta's code fills in. transformers' Llama4TextConfig states widths and lists. Both
are derived here, in one place, exactly as Meta's model.py/moe.py and transformers compute them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from llamakit.errors import ConversionError, InputFileError

# Meta's llama4/model.py apply_scaling hard-codes these two; params.json may state the other two.
ROPE_FIXED = {"low_freq_factor": 1.0, "original_max_position_embeddings": 8192}


def unwrap(params: dict) -> dict:
    """Some Llama 4 params.json nest the model args under "model" (transformers' converter reads either)."""
    return params.get("model", params) if isinstance(params.get("model"), dict) else params


def dense_hidden(dim: int, multiple_of: int, mult: float | None) -> int:
    """FeedForward width of a dense layer, as llama4/model.py TransformerBlock computes it."""
    h = int(2 * int(4 * dim) / 3)
    if mult is not None:
        h = int(mult * h)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def expert_hidden(dim: int, multiple_of: int, mult: float, ffn_exp: float, capacity_factor: float, auto_scale: bool) -> int:
    """Expert (and shared expert) width, as llama4/moe.py MoE computes it."""
    h = int(2 * int(ffn_exp * dim) / 3)
    h = int(mult * h)
    if auto_scale:
        h = int(h / (capacity_factor + 1))
    return h + (-h % multiple_of)


@dataclass(frozen=True)
class Llama4Arch:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    dense_hidden: int  # HF intermediate_size_mlp
    expert_hidden: int  # HF intermediate_size
    num_experts: int
    top_k: int
    moe_step: int  # every moe_step-th layer is MoE (interleave_moe_layer_step)
    nope_interval: int | None  # every nope_interval-th layer has no rope (iRoPE)
    use_qk_norm: bool
    attention_chunk_size: int | None
    norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # llama3 keys: factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
    max_position_embeddings: int = 262144
    attn_temperature_tuning: bool = False
    floor_scale: float = 8192.0
    attn_scale: float = 0.1
    bos_token_id: int | list | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None

    # -- what the layers are ----------------------------------------------------

    def is_moe(self, layer: int) -> bool:
        return self.num_experts > 0 and (layer + 1) % self.moe_step == 0

    def uses_rope(self, layer: int) -> bool:
        return not (self.nope_interval and (layer + 1) % self.nope_interval == 0)

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.n_layers) if self.is_moe(i)]

    def with_(self, **changes) -> "Llama4Arch":
        return replace(self, **changes)

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self, *, vision=None) -> str:
        """One line, as `llamakit convert` prints it: 'Llama 4 Maverick layout: 128 experts, MoE every 2nd layer, ...'."""
        every = "every layer" if self.moe_step == 1 else f"every {_ordinal(self.moe_step)} layer"
        kind = "Scout" if self.moe_step == 1 else "Maverick"
        bits = [f"{self.num_experts} experts", f"MoE {every}"]
        if self.nope_interval:
            bits.append(f"no rope every {_ordinal(self.nope_interval)} layer")
        bits.append("QK-norm" if self.use_qk_norm else "no QK-norm")
        if self.attention_chunk_size:
            bits.append(f"{self.attention_chunk_size}-token attention chunks")
        if self.rope_scaling:
            bits.append(f"rope scaled ×{self.rope_scaling['factor']:g}")
        bits.append(vision.describe() if hasattr(vision, "describe") else "vision encoder" if vision else "text only")
        return f"Llama 4 {kind} layout: " + ", ".join(bits)

    def check_mp(self, mp: int, *, path=None) -> None:
        from llamakit.errors import UsageError

        sizes = {"attention heads": self.n_heads, "kv heads": self.n_kv_heads, "vocabulary": self.vocab_size,
                 "expert width": self.expert_hidden, "dense FFN width": self.dense_hidden}
        bad = [f"{n} {what}" for what, n in sizes.items() if n % mp]
        if bad:
            ok = [d for d in range(1, self.n_kv_heads + 1) if all(n % d == 0 for n in sizes.values())]
            raise UsageError(f"--mp {mp} does not divide the model's {', '.join(bad)}", path=path, fix=f"choose --mp from {ok}")

    # -- Meta params.json ---------------------------------------------------------

    @classmethod
    def from_params(cls, params: dict, *, path: Path, vocab_size: int, dense: int | None, expert: int | None,
                    rope_scaling: dict | None) -> "Llama4Arch":
        """params.json's numbers, checked against the widths the shards have (`dense`/`expert`: None when no
        layer of that kind exists). `rope_scaling` is decided by the caller (errata)."""
        p = unwrap(params)
        try:
            dim, n_heads = int(p["dim"]), int(p["n_heads"])
            moe = p.get("moe_args") or {}
            mult = p.get("ffn_dim_multiplier")
            multiple_of = int(p.get("multiple_of", 256))
            want_dense = dense_hidden(dim, multiple_of, mult)
            want_expert = (expert_hidden(dim, multiple_of, mult or 1.0, float(p.get("ffn_exp") or 4.0),
                                         float(moe.get("capacity_factor", 1.0)), bool(moe.get("auto_scale_F", True)))
                           if moe else 0)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputFileError(f"params.json is not a Llama 4 ModelArgs ({exc!r})", path=path) from None
        for what, got, want in (("dense FFN", dense, want_dense), ("expert", expert, want_expert)):
            if got is not None and got != want:
                raise ConversionError(f"params.json gives a {what} width of {want} but the weights have {got}", path=path,
                                      fix="the params.json does not belong to these shards")
        if p.get("vocab_size", -1) > 0 and p["vocab_size"] != vocab_size:
            raise ConversionError(f"params.json says vocab_size {p['vocab_size']} but tok_embeddings has {vocab_size} rows",
                                  path=path, fix="the params.json does not belong to these shards")
        return cls(
            dim=dim, n_layers=int(p["n_layers"]), n_heads=n_heads, n_kv_heads=int(p.get("n_kv_heads") or n_heads),
            head_dim=int(p.get("head_dim") or dim // n_heads), vocab_size=vocab_size, dense_hidden=want_dense,
            expert_hidden=want_expert, num_experts=int(moe.get("num_experts", 0)) if moe else 0,
            top_k=int(moe.get("top_k", 1)) if moe else 1, moe_step=int(moe.get("interleave_moe_layer_step", 1)) if moe else 1,
            nope_interval=p.get("nope_layer_interval"), use_qk_norm=bool(p.get("use_qk_norm", False)),
            attention_chunk_size=p.get("attention_chunk_size"), norm_eps=float(p.get("norm_eps", 1e-5)),
            rope_theta=float(p.get("rope_theta", 500000.0)), rope_scaling=rope_scaling,
            attn_temperature_tuning=bool(p.get("attn_temperature_tuning", False)),
            floor_scale=float(p.get("floor_scale", 8192.0)), attn_scale=float(p.get("attn_scale", 0.1)),
        )

    def to_params(self) -> dict:
        """params.json as Meta's llama4 ModelArgs reads it, with formula parameters that reproduce both widths."""
        multiple_of, mult, auto = _ffn_params(self)
        p = {"dim": self.dim, "n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
             "vocab_size": self.vocab_size, "multiple_of": multiple_of, "ffn_dim_multiplier": mult, "ffn_exp": 4.0,
             "norm_eps": self.norm_eps, "rope_theta": self.rope_theta, "use_scaled_rope": self.rope_scaling is not None,
             "nope_layer_interval": self.nope_interval, "use_qk_norm": self.use_qk_norm,
             "attention_chunk_size": self.attention_chunk_size}
        if self.head_dim != self.dim // self.n_heads:
            p["head_dim"] = self.head_dim
        if self.rope_scaling:
            # Meta's code reads these two (defaults 16 / 1); the other two it hard-codes
            p["rope_scaling_factor"] = self.rope_scaling["factor"]
            p["rope_high_freq_factor"] = self.rope_scaling["high_freq_factor"]
        if self.attn_temperature_tuning:
            p.update(attn_temperature_tuning=True, floor_scale=self.floor_scale, attn_scale=self.attn_scale)
        if self.num_experts:
            p["moe_args"] = {"num_experts": self.num_experts, "capacity_factor": 1.0, "auto_scale_F": auto,
                             "top_k": self.top_k, "interleave_moe_layer_step": self.moe_step}
        return p

    # -- transformers config.json -------------------------------------------------

    def to_hf_text_config(self, dtype: str) -> dict:
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope = {"rope_type": "llama3", "rope_theta": self.rope_theta, **self.rope_scaling}
        return {
            "architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text",
            "hidden_size": self.dim, "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim, "vocab_size": self.vocab_size,
            "intermediate_size": self.expert_hidden, "intermediate_size_mlp": self.dense_hidden,
            "num_local_experts": self.num_experts, "num_experts_per_tok": self.top_k,
            "interleave_moe_layer_step": self.moe_step, "moe_layers": self.moe_layers,
            "no_rope_layers": [int(self.uses_rope(i)) for i in range(self.n_layers)],
            # stated too: with fewer layers than the interval the list alone cannot say it
            "no_rope_layer_interval": self.nope_interval or 2 * self.n_layers,
            "use_qk_norm": self.use_qk_norm, "attention_chunk_size": self.attention_chunk_size,
            "attn_temperature_tuning": self.attn_temperature_tuning, "floor_scale": int(self.floor_scale),
            "attn_scale": self.attn_scale, "rms_norm_eps": self.norm_eps, "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings, "tie_word_embeddings": False,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
            "hidden_act": "silu", "attention_bias": False, "dtype": dtype,
        }

    @classmethod
    def from_hf_config(cls, path: Path) -> "Llama4Arch":
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputFileError(f"unreadable config.json: {exc}", path=path) from None
        c = raw.get("text_config", raw) if raw.get("model_type") == "llama4" else raw
        n = int(c["num_hidden_layers"])
        moe_layers = c.get("moe_layers")
        step = int(c.get("interleave_moe_layer_step", 1))
        if moe_layers is not None and moe_layers != [i for i in range(n) if (i + 1) % step == 0] and c.get("num_local_experts"):
            raise ConversionError(f"moe_layers {moe_layers} are not every {step}th layer: Meta's code cannot express it", path=path)
        norope = c.get("no_rope_layers") or []
        interval = int(c.get("no_rope_layer_interval", 4))
        if norope:
            off = [i for i, use in enumerate(norope) if not use]
            # no NoPE layer: the stated interval when the model is too short to show one, else none at all
            interval = off[0] + 1 if off else (interval if interval > n else None)
            if interval and off != [i for i in range(n) if (i + 1) % interval == 0]:
                raise ConversionError(f"no_rope_layers {norope} is not every Nth layer: Meta's code cannot express it", path=path)
        rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
        theta = float(rope.get("rope_theta", c.get("rope_theta", 500000.0)))
        scaling = None
        if rope.get("rope_type", "default") == "llama3":
            scaling = {"factor": float(rope["factor"]), "low_freq_factor": float(rope["low_freq_factor"]),
                       "high_freq_factor": float(rope["high_freq_factor"]),
                       "original_max_position_embeddings": int(rope["original_max_position_embeddings"])}
            fixed = {k: scaling[k] for k in ROPE_FIXED}
            if fixed != ROPE_FIXED:
                raise ConversionError(f"llama3 rope scaling with {fixed}: Meta's Llama 4 code hard-codes {ROPE_FIXED}", path=path)
        elif rope.get("rope_type", "default") != "default":
            raise ConversionError(f"rope_type {rope['rope_type']!r} has no Meta Llama 4 equivalent", path=path)
        heads = int(c["num_attention_heads"])
        return cls(
            dim=int(c["hidden_size"]), n_layers=n, n_heads=heads, n_kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or c["hidden_size"] // heads), vocab_size=int(c["vocab_size"]),
            dense_hidden=int(c.get("intermediate_size_mlp", 0)), expert_hidden=int(c.get("intermediate_size", 0)),
            num_experts=int(c.get("num_local_experts", 0)), top_k=int(c.get("num_experts_per_tok", 1)), moe_step=step,
            nope_interval=interval, use_qk_norm=bool(c.get("use_qk_norm", False)),
            attention_chunk_size=c.get("attention_chunk_size"), norm_eps=float(c.get("rms_norm_eps", 1e-5)),
            rope_theta=theta, rope_scaling=scaling, max_position_embeddings=int(c.get("max_position_embeddings", 262144)),
            attn_temperature_tuning=bool(c.get("attn_temperature_tuning", False)),
            floor_scale=float(c.get("floor_scale", 8192)), attn_scale=float(c.get("attn_scale", 0.1)),
            bos_token_id=c.get("bos_token_id"), eos_token_id=c.get("eos_token_id"), pad_token_id=c.get("pad_token_id"),
        )


def _ordinal(n: int) -> str:
    return {2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _ffn_params(a: Llama4Arch) -> tuple[int, float, bool]:
    """(multiple_of, ffn_dim_multiplier, auto_scale_F) that make Meta's two formulas give both widths (ffn_exp 4)."""
    for mult in (1.2, 1.3, 1.5, 1.0, 2.0, 1.25, 1.4):
        for multiple_of in (4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1):
            if a.dense_hidden and dense_hidden(a.dim, multiple_of, mult) != a.dense_hidden:
                continue
            for auto in (True, False):
                if not a.num_experts or expert_hidden(a.dim, multiple_of, mult, 4.0, 1.0, auto) == a.expert_hidden:
                    return multiple_of, mult, auto
    raise ConversionError(f"no params.json (multiple_of, ffn_dim_multiplier) makes Meta's code give dense width "
                          f"{a.dense_hidden} and expert width {a.expert_hidden} at dim {a.dim}",
                          fix="Meta's Llama 4 code derives both widths from dim; these cannot be expressed")
