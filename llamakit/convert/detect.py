"""What a SRC path holds: format, Llama generation, model-parallel degree, tokenizer.

Nothing here trusts a flag or a file name alone: a Meta directory is recognised by
params.json + consolidated.NN.pth (its MP degree and embedding split then come from the
shard shapes, in `meta.plan_shards`), an HF directory by config.json + safetensors, a
GGUF by its magic bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from llamakit.convert.tokenizer import find_meta_tokenizer, tokenizer_kind
from llamakit.errors import InputFileError


def detect_format(src: Path) -> tuple[str, Path]:
    """('meta' | 'hf' | 'gguf', the path to open)."""
    src = Path(src)
    if not src.exists():
        raise InputFileError("does not exist", path=src)
    if src.is_file():
        with open(src, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return "gguf", src
        if src.name.endswith(".pth"):
            raise InputFileError("a single .pth shard", path=src, fix="pass the directory that holds params.json and the shards")
        if src.suffix == ".gguf":
            raise InputFileError("not a GGUF file (bad magic)", path=src, fix="re-download it")
        raise InputFileError("not a checkpoint llamakit knows", path=src, fix="pass a Meta or HF directory or a .gguf file")
    names = {p.name for p in src.iterdir()}
    if "config.json" in names and (any(n.endswith(".safetensors") for n in names) or "pytorch_model.bin" in names
                                   or any(n.startswith("pytorch_model-") for n in names)):
        return "hf", src
    if "params.json" in names or any(n.startswith("consolidated.") and n.endswith(".pth") for n in names):
        return "meta", src
    ggufs = sorted(n for n in names if n.endswith(".gguf"))
    if len(ggufs) == 1:
        return detect_format(src / ggufs[0])
    if (src / "original" / "params.json").exists():
        raise InputFileError("an HF repo's original/ folder without HF weights", path=src, fix=f"pass {src / 'original'}")
    found = ", ".join(sorted(names)[:6]) or "nothing"
    raise InputFileError(f"no checkpoint found (saw {found})", path=src,
                         fix="expected params.json + consolidated.NN.pth, config.json + *.safetensors, or one .gguf")


def hf_uses_sentencepiece(directory: Path) -> bool | None:
    """Whether an HF dir's tokenizer is a sentencepiece one (Llama 1/2), None if it has none."""
    if (directory / "tokenizer.model").is_file() and tokenizer_kind(directory / "tokenizer.model") == "sentencepiece":
        return True
    tj = directory / "tokenizer.json"
    if tj.is_file():
        try:
            model = json.loads(tj.read_text()).get("model", {})
        except ValueError:
            return None
        return bool(model.get("byte_fallback")) or model.get("type") == "Unigram"
    return None


def generation(arch) -> str:
    if arch.rope_scaling:
        return "Llama 3.1+ layout (llama3 rope scaling)" + (", tied embeddings" if arch.tied else "")
    return "Llama 1/2 layout" if arch.legacy_embedding else "Llama 3 layout" + (", tied embeddings" if arch.tied else "")


def catalog_matches(arch) -> list:
    """Catalog releases whose text architecture is exactly `arch` (shapes, GQA, rope scaling, tying)."""
    from llamakit import catalog
    from llamakit.errors import LlamakitError

    try:
        releases = catalog.list_releases()
    except LlamakitError:  # a broken catalog must not block a conversion that does not need it
        return []
    key = (arch.dim, arch.n_layers, arch.n_heads, arch.n_kv_heads, arch.vocab_size, arch.hidden_dim,
           arch.rope_scaling is not None, arch.tied)
    return [r for r in releases
            if r.moe is None and r.vision is None and r.quantization is None
            and (r.meta.dim, r.meta.n_layers, r.meta.n_heads, r.meta.n_kv_heads, r.meta.vocab_size, r.intermediate_size,
                 r.rope_scaling is not None, r.tie_embeddings) == key]


def _with_catalog(source) -> list[str]:
    """Fill in what Meta's params.json leaves out (context length, rope factor) from matching catalog releases."""
    matches = catalog_matches(source.arch)
    contexts = {r.context_length for r in matches}
    scalings = {r.rope_scaling.model_dump_json() for r in matches if r.rope_scaling}
    changes = {}
    if len(contexts) == 1:
        changes["max_position_embeddings"] = contexts.pop()
    if len(scalings) == 1 and "rope_scaling_factor" not in source.params:
        rs = json.loads(scalings.pop())
        rs.pop("rope_type", None)
        changes["rope_scaling"] = rs
    if changes:
        source.arch = source.arch.with_(**changes)
    return [r.name for r in matches]


def open_source(src: Path, *, torch_free: bool = False):
    """The source object for SRC, with its generation settled from every clue the files give.
    `torch_free`: a Meta source plans from its zip records without importing torch (see MetaSource)."""
    fmt, path = detect_format(src)
    if fmt == "meta":
        from llamakit.convert.meta import MetaSource

        source = MetaSource(path, torch_free=torch_free)
        tok = find_meta_tokenizer(path)
        kind = tokenizer_kind(tok) if tok else None
        if source.mp == 1 and kind:  # with one shard the embedding split is invisible: the tokenizer says which code
            source.arch = source.arch.with_(legacy_embedding=kind == "sentencepiece")
        source.tokenizer_path = tok
        source.catalog = _with_catalog(source)
        return source
    if fmt == "hf":
        from llamakit.convert.hf import HFSource

        source = HFSource(path, legacy_embedding=hf_uses_sentencepiece(path))
    else:
        from llamakit.convert.gguf import GGUFSource

        source = GGUFSource(path)
    source.catalog = [r.name for r in catalog_matches(source.arch)]
    return source
