"""Meta's quantized releases are refused, naming the release and the bf16 release to convert instead.

Two kinds, each recognised by what Meta's own loader (llama-models `llama3/quantization/loader.py`) keys on:

  * FP8 (Llama 3.1 405B FP8, Llama 4 Maverick FP8): fp8 weights with per-row scales in fp8_scales_N.pt beside
    each shard, for Meta's fp8 kernels.
  * INT4 (Llama 3.2 1B/3B Instruct QLoRA and SpinQuant, "EO8"): params.json carries `quantization_args` (group
    size), and the QLoRA ones `lora_args` as well (llama-models `sku_list.py`); the shards hold int4 weights
    in groups with their scales, int8 embedding and output, and LoRA adaptors, for ExecuTorch and Meta's int4
    kernels.

and one kind in HF format:

  * a config.json with `quantization_config` (Llama Guard 3 8B INT8: bitsandbytes int8 weights, each with its
    `SCB` scales), for transformers' quantized loading.

Neither transformers' plain Llama/Llama4 modules nor Meta's bf16 layout hold such weights, and dequantising
them would invent a bf16 model Meta never published.
"""

from __future__ import annotations

from pathlib import Path

from llamakit.errors import ConversionError


def _shape_key(params: dict) -> tuple:
    return params.get("dim"), params.get("n_layers"), (params.get("moe_args") or {}).get("num_experts")


def refuse_quantized_hf(directory: Path, config: dict) -> None:
    """Raise ConversionError if an HF directory's config.json says its weights are quantized."""
    q = config.get("quantization_config")
    if not q:
        return
    method = str(q.get("quant_method", "quantized")) if isinstance(q, dict) else "quantized"
    kind = "int8" if isinstance(q, dict) and q.get("load_in_8bit") else "int4" if isinstance(q, dict) and \
        q.get("load_in_4bit") else method
    params = {"dim": config.get("hidden_size"), "n_layers": config.get("num_hidden_layers")}
    _refuse(directory / "config.json", params, kind, f"an {kind} quantized checkpoint",
            f"config.json's quantization_config says {method} {kind} weights",
            "load it with transformers' quantized loading as is")


def releases_and_alternatives(params: dict, kind: str) -> tuple[list[str], list[str]]:
    """(catalog releases quantized as `kind` ("fp8", "int4-qlora", "int4-spinquant", "int8") with these shapes, the
    unquantized release each one extends: the longest catalog name of the same variant that its name begins with)."""
    from llamakit import catalog
    from llamakit.errors import LlamakitError

    try:
        releases = catalog.list_releases()
    except LlamakitError:
        return [], []
    key = _shape_key(params)

    def shapes(r) -> tuple:
        return r.meta.dim, r.meta.n_layers, r.moe.num_experts if r.moe else None

    quantized = [r for r in releases if r.quantization and r.quantization.startswith(kind) and r.meta and shapes(r) == key]
    plain = [r for r in releases if not r.quantization]
    alt = []
    for q in quantized:
        bases = [r.name for r in plain if r.variant == q.variant and q.name.startswith(r.name + "-")]
        alt += sorted(bases, key=len)[-1:]
    return [r.name for r in quantized], list(dict.fromkeys(alt))


def refuse_quantized(directory: Path, params: dict) -> None:
    """Raise ConversionError if `directory` (with its parsed params.json) is one of Meta's quantized releases."""
    scales = sorted(p.name for p in Path(directory).glob("fp8_scales_*.pt"))
    if scales:
        _refuse(directory, params, "fp8", "an FP8 checkpoint", f"{scales[0]} holds fp8 scales",
                "use Meta's fp8 inference code as is")
    q = params.get("quantization_args")
    if q is not None:
        kind = "int4-qlora" if params.get("lora_args") else "int4-spinquant"
        group = f" in groups of {q['group_size']}" if isinstance(q, dict) and q.get("group_size") else ""
        lora = " and LoRA adaptors (lora_args)" if params.get("lora_args") else ""
        _refuse(directory / "params.json", params, kind, "an INT4 quantized checkpoint",
                f"params.json's quantization_args says int4 weights{group}{lora}", "use Meta's int4 inference code as is")


def _refuse(path: Path, params: dict, kind: str, what: str, evidence: str, otherwise: str) -> None:
    names, alt = releases_and_alternatives(params, kind)
    named = f" ({' / '.join(names)})" if names else ""
    instead = f"fetch and convert the bf16 release {' or '.join(alt)}" if alt else "fetch and convert the bf16 release"
    raise ConversionError(f"{what}{named}: {evidence} that neither transformers' plain Llama nor Meta's bf16 layout "
                          "can take; llamakit refuses quantized releases rather than dequantise them",
                          path=path, fix=f"{instead}, or {otherwise}")
