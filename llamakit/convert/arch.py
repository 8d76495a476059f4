"""A Llama model's hyperparameters, read from and written to params.json, config.json and GGUF metadata.

`Arch` is the one description every reader produces and every writer consumes. Its
fields are the facts the weights depend on; the rest of each format's config is
derived here, in one place, as Meta and transformers derive it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llamakit.errors import ConversionError, InputFileError, UsageError

def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """FeedForward hidden size exactly as Meta's model.py computes it."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def meta_ffn_params(dim: int, hidden_dim: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that make Meta's formula give `hidden_dim`.

    Prefers the values Meta ships (no multiplier, then 1.3/1.5/1.2/...) with the largest
    power-of-two multiple_of; the last resort always works: multiple_of = hidden_dim."""
    for mult in (None, 1.3, 1.5, 1.2, 2.0, 1.0, 1.25, 1.4):
        for multiple_of in (4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1):
            if meta_ffn_dim(dim, multiple_of, mult) == hidden_dim:
                return multiple_of, mult
    base = int(2 * (4 * dim) / 3)
    return hidden_dim, (None if base <= hidden_dim else hidden_dim / base)


@dataclass(frozen=True)
class Arch:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    hidden_dim: int
    norm_eps: float
    rope_theta: float
    rope_scaling: dict | None = None  # llama3: factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
    tied: bool = False
    legacy_embedding: bool = False  # Llama 1/2: tok_embeddings MP-split along dim 1
    max_position_embeddings: int = 4096
    bos_token_id: int | list | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None
    extra_hf: dict = field(default_factory=dict, compare=False)  # config fields passed through (name, ...)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def with_(self, **changes) -> "Arch":
        return replace(self, **changes)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("extra_hf")
        return d

    # -- validation ------------------------------------------------------------

    def check_mp(self, mp: int, *, path=None) -> None:
        """Meta's model-parallel code needs every split dimension to divide evenly."""
        splits = {"attention heads": self.n_heads, "kv heads": self.n_kv_heads,
                  "FFN hidden size": self.hidden_dim, "model dim": self.dim}
        if not self.legacy_embedding:
            splits["vocabulary"] = self.vocab_size
        bad = [f"{n} {what}" for what, n in splits.items() if n % mp]
        if bad:
            ok = [d for d in range(1, self.n_kv_heads + 1) if all(n % d == 0 for n in splits.values())]
            raise UsageError(
                f"--mp {mp} does not divide the model's {', '.join(bad)}",
                path=path,
                fix=f"choose --mp from {ok}",
            )

    # -- Meta params.json ------------------------------------------------------

    @classmethod
    def from_params_json(cls, params: dict, *, path: Path, vocab_size: int, hidden_dim: int, tied: bool,
                         legacy_embedding: bool, rope_given: dict | None = None) -> "Arch":
        """The numbers a validated params.json states plus the facts only the weights know (not yet decided:
        see decide.py for rope scaling, tying and context)."""
        multiple_of = params.get("multiple_of", 256)
        mult = params.get("ffn_dim_multiplier")
        expected = meta_ffn_dim(params["dim"], multiple_of, mult)
        if expected != hidden_dim:
            raise ConversionError(
                f"params.json gives an FFN hidden size of {expected} (multiple_of={multiple_of}, "
                f"ffn_dim_multiplier={mult}) but the weights have {hidden_dim}",
                path=path, fix="the params.json does not belong to these shards",
            )
        if params.get("vocab_size", -1) > 0 and params["vocab_size"] != vocab_size:
            raise ConversionError(
                f"params.json says vocab_size {params['vocab_size']} but tok_embeddings has {vocab_size} rows",
                path=path, fix="the params.json does not belong to these shards",
            )
        gen3 = not legacy_embedding
        return cls(
            dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
            n_kv_heads=params.get("n_kv_heads") or params["n_heads"], vocab_size=vocab_size, hidden_dim=hidden_dim,
            norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=float(params.get("rope_theta", 10000.0)),
            # only what params.json states (llamakit's rope_* keys); decide.py fills the rest
            rope_scaling=rope_given or None, tied=tied, legacy_embedding=legacy_embedding,
            max_position_embeddings=8192 if gen3 else 4096,  # placeholder: Meta's files record no context (decide.py)
        )

    # -- transformers config.json ---------------------------------------------

    def to_hf_config(self, dtype: str) -> dict:
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope = {"rope_type": "llama3", "rope_theta": self.rope_theta, **self.rope_scaling}
        cfg = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": self.dim, "intermediate_size": self.hidden_dim, "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads, "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim,
            "vocab_size": self.vocab_size, "rms_norm_eps": self.norm_eps, "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings, "tie_word_embeddings": self.tied,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "dtype": dtype,
        }
        return {**self.extra_hf, **cfg}

    @classmethod
    def from_hf_config(cls, config_path: Path, *, legacy_embedding: bool | None = None) -> "Arch":
        try:
            raw = json.loads(Path(config_path).read_text())
        except (OSError, ValueError) as exc:
            raise InputFileError(f"unreadable config.json: {exc}", path=config_path) from None
        if raw.get("model_type") != "llama":
            raise ConversionError(
                f"model_type is {raw.get('model_type')!r}, not 'llama'", path=config_path,
                fix="llamakit converts Llama-architecture checkpoints only",
            )
        from transformers import LlamaConfig

        try:
            c = LlamaConfig.from_pretrained(str(Path(config_path).parent))
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad config
            raise InputFileError(f"config.json does not load as a LlamaConfig: {exc}", path=config_path) from None
        if c.attention_bias or c.mlp_bias:
            raise ConversionError("attention/MLP biases have no place in Meta's Llama", path=config_path)
        if getattr(c, "head_dim", None) not in (None, c.hidden_size // c.num_attention_heads):
            raise ConversionError(f"head_dim {c.head_dim} != hidden_size / heads; Meta's code cannot express it", path=config_path)
        rope = dict(c.rope_parameters or {})
        rope_type = rope.get("rope_type", "default")
        scaling = None
        if rope_type == "llama3":
            scaling = {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
        elif rope_type != "default":
            raise ConversionError(f"rope_type {rope_type!r} has no Meta equivalent", path=config_path)
        if legacy_embedding is None:
            legacy_embedding = float(rope["rope_theta"]) == 10000.0 and scaling is None
        keep = {k: raw[k] for k in ("_model_name_or_path",) if k in raw}
        return cls(
            dim=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
            n_kv_heads=c.num_key_value_heads or c.num_attention_heads, vocab_size=c.vocab_size,
            hidden_dim=c.intermediate_size, norm_eps=float(c.rms_norm_eps), rope_theta=float(rope["rope_theta"]),
            rope_scaling=scaling, tied=bool(c.tie_word_embeddings), legacy_embedding=legacy_embedding,
            max_position_embeddings=c.max_position_embeddings, bos_token_id=c.bos_token_id,
            eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id, extra_hf=keep,
        )


def validate_params_json(path: Path) -> dict:
    """params.json parsed and type-checked, or InputFileError naming the field."""
    try:
        params = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputFileError("params.json is missing", path=path, fix="a Meta checkpoint directory has params.json beside its shards") from None
    except (OSError, ValueError) as exc:
        raise InputFileError(f"params.json is not valid JSON ({exc})", path=path, fix="re-download it") from None
    if not isinstance(params, dict):
        raise InputFileError("params.json is not a JSON object", path=path)
    ints = {"dim": True, "n_layers": True, "n_heads": True, "n_kv_heads": False, "vocab_size": False, "multiple_of": False}
    for key, required in ints.items():
        val = params.get(key)
        if val is None and not required:
            continue
        if val is None:
            raise InputFileError(f"params.json lacks '{key}'", path=path, fix="re-download it")
        if not isinstance(val, int) or isinstance(val, bool) or (val <= 0 and key != "vocab_size"):
            raise InputFileError(f"params.json '{key}' must be a positive integer, got {val!r}", path=path)
    for key in ("norm_eps", "rope_theta", "ffn_dim_multiplier"):
        val = params.get(key)
        if val is not None and (not isinstance(val, (int, float)) or isinstance(val, bool) or not math.isfinite(val) or val <= 0):
            raise InputFileError(f"params.json '{key}' must be a positive number, got {val!r}", path=path)
    if params["dim"] % params["n_heads"]:
        raise InputFileError(f"params.json dim {params['dim']} is not a multiple of n_heads {params['n_heads']}", path=path)
    kv = params.get("n_kv_heads") or params["n_heads"]
    if params["n_heads"] % kv:
        raise InputFileError(f"params.json n_heads {params['n_heads']} is not a multiple of n_kv_heads {kv}", path=path)
    if (params["dim"] // params["n_heads"]) % 2:
        raise InputFileError("params.json gives an odd head dimension; rotary embeddings need it even", path=path)
    return params
