"""What a SRC path holds: format, Llama generation, model-parallel degree, tokenizer.

Nothing here trusts a flag or a file name alone: a Meta directory is recognised by
params.json + consolidated.NN.pth (its MP degree and embedding split then come from the
shard shapes, in `meta_plan.plan_shards`), an HF directory by config.json + safetensors, a
GGUF by its magic bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from llamakit.convert.tokenizer import tokenizer_kind
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


def open_source(src: Path, *, torch_free: bool = False):
    """The source object for SRC, its architecture decided (decide.py) from every clue the files give.
    `torch_free`: a Meta source plans from its zip records without importing torch (see MetaSource)."""
    fmt, path = detect_format(src)
    if fmt == "meta":
        from llamakit.convert.meta import MetaSource

        params = _json_or_none(path / "params.json")
        if params is not None:
            from llamakit.convert import llama4, mllama

            if llama4.is_llama4_params(params):  # Llama 4's shipped layout has its own reader (convert/llama4.py)
                return llama4.open_meta(path, params)
            if mllama.is_mllama_params(params):  # Llama 3.2 Vision (convert/mllama*.py)
                return mllama.MllamaMetaSource(path, params)

        return MetaSource(path, torch_free=torch_free)  # decides in plan_shards: its facts need the shards
    from llamakit.convert.decide import Facts, decide

    if fmt == "hf":
        from llamakit.convert import llama4, mllama
        from llamakit.convert.hf import HFSource
        from llamakit.convert.quantized import refuse_quantized_hf

        config = _json_or_none(path / "config.json")
        if config is not None:  # every HF family, before any weight is read (an unreadable one: its reader says why)
            refuse_quantized_hf(path, config)

        if llama4.is_llama4_config(path / "config.json"):
            return llama4.Llama4HFSource(path)
        if mllama.is_mllama_config(path / "config.json"):  # Llama 3.2 Vision (convert/mllama*.py)
            return mllama.MllamaHFSource(path)

        source = HFSource(path, legacy_embedding=hf_uses_sentencepiece(path))
        output = "absent" if source.arch.tied else "distinct"  # config.json states it
    else:
        from llamakit.convert.gguf import GGUFSource

        source = GGUFSource(path)
        output = source.output
    source.decision = decide(Facts(source.arch, source.arch.rope_scaling is not None, output, context_given=True))
    source.arch, source.catalog = source.decision.arch, source.decision.catalog
    return source


def generation(source) -> str:
    """The layout line `convert` and `info --local` print for an opened source: Llama 4 and Llama 3.2 Vision
    describe their own layouts (experts, vision encoder, cross-attention), Llama 1-3 by generation (decide.py)."""
    family = getattr(source, "family", None)
    if family == "llama4":
        return source.arch.describe(vision=source.vision)
    if family == "mllama":
        return source.arch.describe()
    from llamakit.convert.decide import generation as text_generation

    return text_generation(source.arch)


def _json_or_none(path: Path):
    """A JSON object file's content, or None (the regular reader then names what is wrong with it)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None
