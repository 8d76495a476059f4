"""Writing a Llama 4 conversion (HF safetensors or Meta's shipped layout), checking it by inversion, committing it.

`convert` here is `llamakit convert`'s path for a Llama 4 source (api.convert hands over once
detect has opened one): the same staging directory, progress bar and ConvertResult as every
other conversion, tensors streamed block by block in both directions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from llamakit.convert.llama4_arch import Llama4Arch
from llamakit.errors import ConversionError


def write_hf(source, out: Path, *, dtype, max_shard_size, progress) -> list[Path]:
    import math

    from llamakit.convert.hf import write_shards

    plan = {name: (shape, dtype or dt, blocks) for name, shape, dt, blocks in source.hf_tensors()}
    sizes = {n: math.prod(s) * d.itemsize for n, (s, d, _) in plan.items()}

    def produce(names):
        for n in names:
            shape, dt, blocks = plan[n]
            yield n, (b if b.dtype == dt else b.to(dt) for b in blocks())
            progress(n, sizes[n])

    return write_shards(out, sizes, lambda n: plan[n][:2], produce, max_shard_size)


def write_meta(source, out: Path, *, mp: int, dtype, progress, params: dict) -> list[Path]:
    """consolidated.NN.pth in Meta's shipped layout + `params` as params.json + checklist.chk, tensor by tensor,
    block by block."""
    from llamakit.convert.meta import write_checklist
    from llamakit.convert.pth import writer_group

    plan = [(name, shape, dtype or dt, blocks) for name, shape, dt, blocks in source.meta_tensors(mp)]
    paths = [out / f"consolidated.{r:02d}.pth" for r in range(mp)]
    with writer_group(paths, [(n, s, d) for n, s, d, _ in plan]) as writers:
        for name, shape, dt, blocks in plan:
            for r, w in enumerate(writers):
                w.begin(name)
                for b in blocks(r):
                    w.write(b if b.dtype == dt else b.to(dt))
                w.end()
            progress(name, mp * _nbytes(shape, dt))
    (out / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    write_checklist(out)
    return paths + [out / "params.json", out / "checklist.chk"]


def _nbytes(shape, dtype) -> int:
    import math

    return math.prod(shape) * dtype.itemsize


def write_configs(arch: Llama4Arch, out: Path, dtype: str, vision=None, ids: dict | None = None) -> list[Path]:
    """config.json: Llama4ForCausalLM's, or (a vision encoder) Llama4ForConditionalGeneration's with the text config
    nested and the image token ids of Meta's tokenizer. `ids`: what the converted tokenizer.model gave (its rank count,
    bos/eos/pad, the stop tokens Meta's generation ends on); the ids the source's config stated win."""
    from llamakit.convert.llama4_vision import image_token_ids

    ids = ids if ids and ids["n_ranks"] + 2048 <= arch.vocab_size else {}  # a tokenizer that fits the embeddings
    if ids and arch.bos_token_id is None:
        arch = arch.with_(bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
    n_ranks = ids.get("n_ranks")
    config = arch.to_hf_text_config(dtype)
    if vision is not None:
        text = {k: v for k, v in config.items() if k != "architectures"}
        config = {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "text_config": text,
                  "vision_config": vision.to_hf_config(), "tie_word_embeddings": False, "dtype": dtype,
                  **image_token_ids(arch.vocab_size, n_ranks)}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": arch.bos_token_id, "eos_token_id": ids.get("stop_token_ids", arch.eos_token_id)}
    if arch.pad_token_id is not None:
        gen["pad_token_id"] = arch.pad_token_id
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    return [out / "config.json", out / "generation_config.json"]


def check_inverse(source, out: Path, to: str, *, cast) -> dict:
    """Read the written files back through the other direction's reader: every source tensor must come back bit for
    bit (after the same cast). Streams as the writers do (readback.py)."""
    from llamakit.convert import readback
    from llamakit.convert.llama4 import Llama4HFSource, Llama4MetaSource, shard_paths_of

    t = time.perf_counter()
    if to == "hf":
        back = Llama4HFSource(out)
        n = readback.as_meta_shards(back, source, out, cast=cast, family="Llama 4", flatten=True)
    else:
        back = Llama4MetaSource(out, json.loads((out / "params.json").read_text()), shard_paths_of(out))
        n = readback.as_hf_tensors(back, source, out, cast=cast, family="Llama 4")
    if _effective(back.arch) != _effective(source.arch) or back.vision != source.vision:
        raise ConversionError("the written config does not read back as the source's architecture", path=out)
    return {"kind": "inverse", "tensors": n, "bit_identical": True, "seconds": round(time.perf_counter() - t, 3)}


def _effective(a: Llama4Arch) -> tuple:
    """What the weights depend on: the layer pattern as Meta's code builds it (an interval longer than the model is
    no NoPE layer at all), not the ids or the context length the two formats record differently."""
    layers = tuple((a.uses_rope(i), a.is_moe(i)) for i in range(a.n_layers))
    return a.with_(max_position_embeddings=0, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                   nope_interval=None), layers


def run(source, dst: Path, *, to: str, mp: int | None, cast, max_shard_size, check: bool, force: bool,
        show_progress: bool, t0: float, after_weights, check_inverse, generation: str, meta_params: dict):
    """The conversion both fused-layout families share (Llama 4 here, Llama 3.2 Vision in mllama_io): stream the
    tensors into a staging directory, then `after_weights(tmp, mp_out) -> tokenizer note` (configs, tokenizer),
    then `check_inverse`, then commit. `source` lists its tensors (`hf_tensors` / `meta_tensors`); `meta_params`
    is the params.json a Meta output gets."""
    from llamakit.convert import output
    from llamakit.convert.api import ConvertResult

    mp_out = mp or (source.mp if source.fmt == "meta" else 1)
    timings = {"open_s": round(time.perf_counter() - t0, 3)}
    plan = list(source.hf_tensors()) if source.fmt == "meta" else list(source.meta_tensors(mp_out))
    total = sum(_nbytes(s, d) for _, s, d, _ in plan) * (mp_out if source.fmt == "hf" else 1)
    with output.staging(dst, force=force) as tmp:
        t = time.perf_counter()
        with output.progress_bar(total, enabled=show_progress, label=f"{source.fmt}→{to}") as advance:
            if to == "hf":
                write_hf(source, tmp, dtype=cast, max_shard_size=max_shard_size, progress=advance)
            else:
                write_meta(source, tmp, mp=mp_out, dtype=cast, progress=advance, params=meta_params)
        timings["weights_s"] = round(time.perf_counter() - t, 3)
        tok = after_weights(tmp, plan)
        report = check_inverse(source, tmp, to, cast=cast) if check else None
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        written = sum((tmp / f).stat().st_size for f in files)
    return ConvertResult(
        src=str(source.path), dst=str(dst), src_format=source.fmt, dst_format=to, generation=generation,
        mp_in=source.mp, mp_out=mp_out if to == "meta" else 1, n_tensors=len(plan), bytes_written=written,
        files=files, tokenizer=tok, check=report, wall_s=round(time.perf_counter() - t0, 3),
        catalog=list(source.catalog), arch=source.arch.to_json(), timings=timings, errata=list(source.errata))


def convert(source, dst: Path, *, to: str, mp: int | None, cast, max_shard_size, check: bool, force: bool,
            show_progress: bool, t0: float):
    from llamakit.convert import detect
    from llamakit.convert.hf import dtype_name

    arch = source.arch
    if to == "meta":
        mp_out = mp or (source.mp if source.fmt == "meta" else 1)
        arch.check_mp(mp_out, path=source.path)
        if source.vision is not None:
            source.vision.check_mp(mp_out, path=source.path)

    def after_weights(tmp: Path, plan) -> str:
        tok, ids = _tokenizer(source, tmp, to)
        if to == "hf":  # the token ids config.json states come from the tokenizer when there is one
            write_configs(arch, tmp, dtype_name(cast if cast is not None else plan[0][2]), source.vision, ids)
        return tok

    return run(source, dst, to=to, mp=mp, cast=cast, max_shard_size=max_shard_size, check=check, force=force,
               show_progress=show_progress, t0=t0, after_weights=after_weights, check_inverse=check_inverse,
               generation=detect.generation(source), meta_params=_meta_params(source))


def _meta_params(source) -> dict:
    params = source.arch.to_params()
    if source.vision is not None:
        params["vision_args"] = source.vision.to_params()
    return params


def _tokenizer(source, out: Path, to: str) -> tuple[str, dict]:
    """Meta → HF: tokenizer.json from Llama 4's tiktoken tokenizer.model (Meta's specials, tokenizer.py); HF → Meta:
    the tokenizer.model the HF repo keeps (original/ or beside the weights)."""
    from llamakit.convert import tokenizer

    if to == "hf" and source.fmt == "meta":
        return tokenizer.llama4_meta_to_hf(tokenizer.find_meta_tokenizer(source.path), out)
    if to == "meta" and source.fmt == "hf":
        return tokenizer.hf_to_meta(source.path, out), {}
    return "none in the source", {}
