"""THE one place a source's architecture is decided: what the files say, plus the catalog and the release errata.

Meta's files leave facts out (params.json has `use_scaled_rope` but no factor, no
context length, nothing about tying) and Meta's release contradicts itself where they
matter (Llama 3.2 1B/3B: factor 32 in the HF release, 8 in Meta's code; an `output.weight`
stored although the output is tied). Every reader hands its file facts to `decide`,
which fills each missing fact from, in order: the release errata
(`manifests/errata/`, see llamakit/convert/errata.py), the catalog releases with these
exact shapes, the generation's published default, and records which errata it applied.

Tying is decided by content: a model is tied when it has no output projection or one
byte-equal to its embedding, never by the presence of a key alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llamakit.convert.arch import Arch, meta_ffn_params
from llamakit.convert.errata import load_errata
from llamakit.errors import ConversionError

Output = Literal["absent", "same_as_embedding", "distinct"]
ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# params.json keys llamakit adds (only when a model departs from what `decide` would infer without them);
# Meta's code ignores them, llamakit reads them back so HF → Meta → HF keeps any llama3 scaling.
PARAMS_ROPE_KEYS = {"factor": "rope_scaling_factor", "low_freq_factor": "rope_low_freq_factor",
                    "high_freq_factor": "rope_high_freq_factor",
                    "original_max_position_embeddings": "rope_original_max_position_embeddings"}


@dataclass(frozen=True)
class Facts:
    """What a source's files state. `base` holds the stated numbers; the rest says what is missing."""

    base: Arch  # rope_scaling: whatever llama3 keys the files state (may be partial or empty)
    use_scaled_rope: bool
    output: Output  # the output projection, compared with the embedding
    context_given: bool  # the files state a context length (HF config, GGUF metadata)


@dataclass(frozen=True)
class Decision:
    arch: Arch
    errata: list[str] = field(default_factory=list)  # ids of the entries whose values the decision uses
    catalog: list[str] = field(default_factory=list)  # releases with exactly this architecture
    generation: str = ""


def _shape_key(a) -> tuple:
    return (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.hidden_dim)


def shape_matches(arch: Arch, use_scaled_rope: bool) -> list:
    """Text-only, unquantized catalog releases with these shapes and rope kind (tying aside)."""
    from llamakit import catalog
    from llamakit.errors import LlamakitError

    try:
        releases = catalog.list_releases()
    except LlamakitError:  # a broken catalog must not block a conversion that does not need it
        return []
    key = _shape_key(arch) + (use_scaled_rope,)
    return [r for r in releases
            if r.moe is None and r.vision is None and r.quantization is None
            and (r.meta.dim, r.meta.n_layers, r.meta.n_heads, r.meta.n_kv_heads, r.meta.vocab_size,
                 r.intermediate_size, r.meta.use_scaled_rope) == key]


def catalog_matches(arch: Arch) -> list:
    """Catalog releases whose text architecture is exactly `arch` (shapes, rope scaling, tying)."""
    return [r for r in shape_matches(arch, arch.rope_scaling is not None) if r.tie_embeddings == arch.tied]


def _when_holds(when, facts: Facts, tied: bool) -> bool:
    checks = {"use_scaled_rope": facts.use_scaled_rope, "tied": tied, "output": facts.output,
              "legacy_embedding": facts.base.legacy_embedding, "moe": False}  # Llama 4 decides in convert/llama4.py
    return all(getattr(when, k) is None or getattr(when, k) == v for k, v in checks.items())


def decide(facts: Facts) -> Decision:
    """The architecture of a source, every missing fact filled from data, with the errata it applied."""
    base = facts.base
    tied = facts.output != "distinct"
    shapes = shape_matches(base, facts.use_scaled_rope)
    names = {r.name for r in shapes}
    applied: dict[str, str] = {}  # fact -> erratum id that set it
    values: dict[str, Any] = {}
    for e in load_errata():
        if not (names & set(e.releases) if shapes else _when_holds(e.when, facts, tied)):
            continue
        if e.sets.rope_scaling is not None and facts.use_scaled_rope:
            values["rope_scaling"], applied["rope_scaling"] = e.sets.rope_scaling.model_dump(), e.id
        if e.sets.tie_embeddings is not None and facts.output == "same_as_embedding":
            applied["tied"] = e.id  # the content decided it; the entry documents why that is right
        if e.sets.context_length is not None:
            values["context"], applied["context"] = e.sets.context_length, e.id

    exact = [r for r in shapes if r.tie_embeddings == tied]
    rope = None
    if facts.use_scaled_rope:
        given = {k: v for k, v in (base.rope_scaling or {}).items() if k in ROPE_KEYS}
        fill = values.get("rope_scaling")
        if fill is None:
            scalings = {r.rope_scaling.model_dump_json(): r.rope_scaling.model_dump() for r in exact if r.rope_scaling}
            fill = next(iter(scalings.values())) if len(scalings) == 1 else None
        if fill is None and len(given) < len(ROPE_KEYS):
            raise ConversionError("the files say llama3 rope scaling but not its parameters, and neither the errata nor "
                                  "the catalog knows this architecture", fix="add rope_scaling_factor (and the other "
                                  "rope_* keys) to params.json")
        if fill is not None and all(k in given for k in ROPE_KEYS):
            applied.pop("rope_scaling", None)  # the files said it all
        rope = {k: (given[k] if k in given else fill[k]) for k in ROPE_KEYS}
        rope["original_max_position_embeddings"] = int(rope["original_max_position_embeddings"])
        rope = {k: float(v) if k != "original_max_position_embeddings" else v for k, v in rope.items()}
    elif base.rope_scaling:
        raise ConversionError("rope scaling parameters without use_scaled_rope")

    arch = base.with_(tied=tied, rope_scaling=rope)
    if not facts.context_given:
        contexts = {r.context_length for r in exact}
        ctx = values.get("context") or (contexts.pop() if len(contexts) == 1 else None)
        if ctx is None:  # each generation's published context
            ctx = 131072 if rope else (4096 if base.legacy_embedding else 8192)
        arch = arch.with_(max_position_embeddings=ctx)
    final = [r.name for r in catalog_matches(arch)]
    used = list(dict.fromkeys(applied.values()))
    return Decision(arch, used, final, generation(arch))


def generation(arch: Arch) -> str:
    if arch.rope_scaling:
        return "Llama 3.1+ layout (llama3 rope scaling)" + (", tied embeddings" if arch.tied else "")
    return "Llama 1/2 layout" if arch.legacy_embedding else "Llama 3 layout" + (", tied embeddings" if arch.tied else "")


# --- writing Meta's params.json --------------------------------------------------


def params_json(arch: Arch) -> dict:
    """params.json as Meta writes it: only keys Meta's ModelArgs knows, defaults left out, plus llamakit's
    rope_* keys only where `decide` would otherwise read the written files back differently."""
    multiple_of, mult = meta_ffn_params(arch.dim, arch.hidden_dim)
    p: dict[str, Any] = {"dim": arch.dim, "n_layers": arch.n_layers, "n_heads": arch.n_heads}
    if arch.n_kv_heads != arch.n_heads:
        p["n_kv_heads"] = arch.n_kv_heads
    p["vocab_size"] = arch.vocab_size
    p["multiple_of"] = multiple_of
    if mult is not None:
        p["ffn_dim_multiplier"] = mult
    p["norm_eps"] = arch.norm_eps
    if arch.rope_theta != 10000.0:
        p["rope_theta"] = arch.rope_theta
    if arch.rope_scaling:
        p["use_scaled_rope"] = True
        # A Meta checkpoint llamakit writes always has output.weight (a copy of the embedding when tied).
        output: Output = "same_as_embedding" if arch.tied else "distinct"
        try:
            inferred = decide(Facts(arch.with_(rope_scaling=None), True, output, False)).arch.rope_scaling
        except ConversionError:
            inferred = {}
        for k, pk in PARAMS_ROPE_KEYS.items():
            if float(arch.rope_scaling[k]) != float(inferred.get(k, float("nan"))):
                p[pk] = arch.rope_scaling[k]
    return p


def rope_from_params(params: dict) -> dict:
    """The llama3 keys a params.json states (llamakit's rope_* extension keys)."""
    return {k: params[pk] for k, pk in PARAMS_ROPE_KEYS.items() if pk in params}
