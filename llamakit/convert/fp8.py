"""Meta's FP8 releases are refused, naming the release and the bf16 release to convert instead.

Maverick FP8 and Llama 3.1 405B FP8 keep fp8 weights with per-row scales in fp8_scales_N.pt beside
each shard, for Meta's fp8 inference kernels; neither transformers' Llama/Llama4 modules nor Meta's
bf16 layout hold them, and dequantising would invent a bf16 model Meta never published.
"""

from __future__ import annotations

from pathlib import Path

from llamakit.errors import ConversionError


def fp8_release_and_alternative(params: dict) -> tuple[list[str], list[str]]:
    """(catalog FP8 releases with these shapes, their unquantized counterparts)."""
    from llamakit import catalog
    from llamakit.errors import LlamakitError

    try:
        releases = catalog.list_releases()
    except LlamakitError:
        return [], []
    key = (params.get("dim"), params.get("n_layers"), (params.get("moe_args") or {}).get("num_experts"))
    fp8 = [r for r in releases if r.quantization and r.quantization.startswith("fp8")
           and (r.meta.dim, r.meta.n_layers, r.moe.num_experts if r.moe else None) == key]
    names = {r.name for r in releases if not r.quantization}
    alt = []
    for r in fp8:
        base = r.name.removesuffix("-fp8")
        alt += [base] if base in names else [n for n in sorted(names) if n.startswith(base.rsplit("-instruct", 1)[0])][:1]
    return [r.name for r in fp8], list(dict.fromkeys(alt))


def refuse_fp8(directory: Path, params: dict) -> None:
    scales = sorted(p.name for p in Path(directory).glob("fp8_scales_*.pt"))
    if not scales:
        return
    names, alt = fp8_release_and_alternative(params)
    what = f" ({' / '.join(names)})" if names else ""
    instead = f"fetch and convert the bf16 release {' or '.join(alt)}" if alt else "fetch and convert the bf16 release"
    raise ConversionError(f"an FP8 checkpoint{what}: {scales[0]} holds fp8 scales that neither transformers nor Meta's "
                          "bf16 layout can take; llamakit refuses FP8 releases rather than dequantise them",
                          path=directory, fix=f"{instead}, or use Meta's fp8 inference code as is")
