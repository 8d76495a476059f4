"""Facts a Llama 4 checkpoint's files leave out, decided from the errata registry and the catalog: rope scaling
constants Meta's code fills in, the release context length, and which catalog releases the shapes match."""

from __future__ import annotations

from llamakit.convert.llama4_arch import ROPE_FIXED, Llama4Arch

ROPE_ERRATUM = "llama4-scout-rope-constants"


def decide_rope(p: dict) -> tuple[dict | None, list[str]]:
    """llama3 rope scaling of a Llama 4 params.json: what it states, the rest from the errata (Meta's code fills
    factor 16 / high_freq_factor 1 when params.json is silent, as the HF release has it)."""
    if not p.get("use_scaled_rope"):
        return None, []
    from llamakit.convert.errata import get

    fill = get(ROPE_ERRATUM).sets.rope_scaling.model_dump()
    stated = {"factor": p.get("rope_scaling_factor"), "high_freq_factor": p.get("rope_high_freq_factor")}
    rope = {k: float(stated[k] if stated.get(k) is not None else fill[k]) for k in ("factor", "high_freq_factor")}
    rope.update(ROPE_FIXED)
    rope = {"factor": rope["factor"], "low_freq_factor": rope["low_freq_factor"],
            "high_freq_factor": rope["high_freq_factor"],
            "original_max_position_embeddings": rope["original_max_position_embeddings"]}
    return rope, ([] if all(v is not None for v in stated.values()) else [ROPE_ERRATUM])


def _catalog_matches(a: Llama4Arch) -> list:
    from llamakit import catalog
    from llamakit.errors import LlamakitError

    try:
        releases = catalog.list_releases()
    except LlamakitError:
        return []
    return [r for r in releases if r.moe is not None and r.quantization is None
            and (r.meta.dim, r.meta.n_layers, r.meta.n_heads, r.meta.n_kv_heads, r.meta.vocab_size,
                 r.moe.num_experts, r.moe.interleave_moe_layer_step, r.meta.use_scaled_rope)
            == (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.num_experts, a.moe_step,
                a.rope_scaling is not None)]


def catalog_names(a: Llama4Arch) -> list[str]:
    return [r.name for r in _catalog_matches(a)]


def decide_context(a: Llama4Arch) -> int:
    """Meta's files record no context length: the catalog's, when the shapes name one release context."""
    contexts = {r.context_length for r in _catalog_matches(a)}
    return contexts.pop() if len(contexts) == 1 else a.max_position_embeddings
