"""Writing a Llama 3.2 Vision conversion, checking it by inversion, committing it.

The tensors stream through llama4_io's writers (hf.write_shards for HF, pth.PthWriter for Meta): both
only need a source that lists its output tensors with block generators. The built-in check reads the
written files back through the other direction's reader: every source tensor must come back bit for
bit, except the cells of Meta's tile grids that no supported aspect ratio reaches (HF's per-ratio table
has no place for them; Meta's code never reads them: see `reached_cells`), which come back as zeros.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from llamakit.convert import keymap
from llamakit.convert.llama4_io import run
from llamakit.convert.mllama import MllamaHFSource, MllamaMetaSource, rows_of, meta_name
from llamakit.errors import ConversionError


def reached_cells(T: int):
    """Cells (i, j) of a T×T tile grid that Meta's code reads for some image: those inside an h×w ratio, h·w ≤ T."""
    import torch

    m = torch.zeros(T, T, dtype=torch.bool)
    for h, w in keymap.supported_aspect_ratios(T):
        m[:h, :w] = True
    return m


def check_inverse(source, out: Path, to: str, *, cast) -> dict:
    from llamakit.convert import readback

    t0 = time.perf_counter()
    if to == "hf":
        back = MllamaHFSource(out)
        rules = {meta_name(r, i): r for r, i in rows_of(source.arch)}

        def expect(name, w):  # HF has no place for the tile cells no aspect ratio reaches: they come back as zeros
            if rules[name].transform != "tiles":
                return w
            return w * reached_cells(w.shape[0]).reshape(*w.shape[:2], 1, 1).to(w.dtype)

        n = readback.as_meta_shards(back, source, out, cast=cast, family="Llama 3.2 Vision", expect=expect)
    else:
        back = MllamaMetaSource(out, json.loads((out / "params.json").read_text()))
        n = readback.as_hf_tensors(back, source, out, cast=cast, family="Llama 3.2 Vision")
    if _effective(back.arch) != _effective(source.arch):
        raise ConversionError("the written config does not read back as the source's architecture", path=out)
    return {"kind": "inverse", "tensors": n, "bit_identical": True, "seconds": round(time.perf_counter() - t0, 3)}


def _effective(a):
    """What the weights depend on: not the token ids or the context length, which Meta's params.json does not record."""
    return a.with_(text=a.text.with_(bos_token_id=None, eos_token_id=None, pad_token_id=None, max_position_embeddings=0))


def write_configs(arch, out: Path, dtype: str) -> list[Path]:
    (out / "config.json").write_text(json.dumps(arch.to_hf_config(dtype), indent=2, sort_keys=True) + "\n")
    t = arch.text
    gen = {"_from_model_config": True, "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    return [out / "config.json", out / "generation_config.json"]


def convert(source, dst: Path, *, to: str, mp: int | None, cast, max_shard_size, check: bool, force: bool,
            show_progress: bool, t0: float):
    from llamakit.convert import detect
    from llamakit.convert.hf import dtype_name

    arch = source.arch
    if to == "meta":
        arch.check_mp(mp or (source.mp if source.fmt == "meta" else 1), path=source.path)

    def after_weights(tmp: Path, plan) -> str:
        if to == "hf":
            write_configs(arch, tmp, dtype_name(cast if cast is not None else plan[0][2]))
        return _copy_tokenizer(source, tmp)

    return run(source, dst, to=to, mp=mp, cast=cast, max_shard_size=max_shard_size, check=check, force=force,
               show_progress=show_progress, t0=t0, after_weights=after_weights, check_inverse=check_inverse,
               generation=detect.generation(source), meta_params=arch.to_params())


def _copy_tokenizer(source, out: Path) -> str:
    """The tokenizer files travel as they are (Meta: tokenizer.model; HF: tokenizer*.json + processor configs)."""
    names = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "preprocessor_config.json", "chat_template.json"]
    copied = [n for n in names if (source.path / n).is_file()]
    for n in copied:
        (out / n).write_bytes((source.path / n).read_bytes())
    return f"{', '.join(copied)} copied" if copied else "none in the source"
