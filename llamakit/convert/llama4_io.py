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


def write_meta(source, out: Path, *, mp: int, dtype, progress) -> list[Path]:
    """consolidated.NN.pth in Meta's shipped layout + params.json + checklist.chk, tensor by tensor, block by block."""
    from llamakit.convert.meta import write_checklist
    from llamakit.convert.pth import PthWriter

    plan = [(name, shape, dtype or dt, blocks) for name, shape, dt, blocks in source.meta_tensors(mp)]
    paths = [out / f"consolidated.{r:02d}.pth" for r in range(mp)]
    writers = [PthWriter(p, [(n, s, d) for n, s, d, _ in plan]) for p in paths]
    try:
        for name, shape, dt, blocks in plan:
            for r, w in enumerate(writers):
                w.begin(name)
                for b in blocks(r):
                    w.write(b if b.dtype == dt else b.to(dt))
                w.end()
            progress(name, mp * _nbytes(shape, dt))
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    (out / "params.json").write_text(json.dumps(source.arch.to_params(), indent=2) + "\n")
    write_checklist(out)
    return paths + [out / "params.json", out / "checklist.chk"]


def _nbytes(shape, dtype) -> int:
    import math

    return math.prod(shape) * dtype.itemsize


def write_configs(arch: Llama4Arch, out: Path, dtype: str) -> list[Path]:
    (out / "config.json").write_text(json.dumps(arch.to_hf_text_config(dtype), indent=2, sort_keys=True) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": arch.bos_token_id, "eos_token_id": arch.eos_token_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    return [out / "config.json", out / "generation_config.json"]


def check_inverse(source, out: Path, to: str, *, cast) -> dict:
    """Read the written files back through the other direction's reader: every source tensor must come back bit for
    bit (after the same cast). Streams as the writers do."""
    from llamakit.convert.llama4 import Llama4HFSource, Llama4MetaSource, shard_paths_of
    from llamakit.convert.pth import release

    t = time.perf_counter()
    n = 0
    if to == "hf":
        back = Llama4HFSource(out)
        for name, _shape, _dt, blocks in back.meta_tensors(source.mp):
            for r in range(source.mp):
                want = source.shard_tensor(r, name)
                want = want.reshape(-1, want.shape[-1]) if want.dim() > 1 else want
                row = 0
                for b in blocks(r):  # block by block: the check holds no more than the conversion did
                    b = b.reshape(-1, *want.shape[1:])
                    _same(name, want[row:row + b.shape[0]], b, cast, r)
                    release(want[row:row + b.shape[0]])  # a view of the mapped source shard
                    row += b.shape[0]
                if row != want.shape[0]:
                    raise ConversionError(f"'{name}' (shard {r}) reads back {row} of {want.shape[0]} rows", path=out)
            n += 1
    else:
        back = Llama4MetaSource(out, json.loads((out / "params.json").read_text()), shard_paths_of(out))
        for name, shape, _dt, blocks in back.hf_tensors():
            row = 0
            for b in blocks():
                _same(name, source.get(name, row, row + b.shape[0]), b, cast, 0)
                row += b.shape[0]
            if row != shape[0]:
                raise ConversionError(f"'{name}' reads back {row} of {shape[0]} rows", path=out)
            n += 1
    if _effective(back.arch) != _effective(source.arch):
        raise ConversionError("the written config does not read back as the source's architecture", path=out)
    return {"kind": "inverse", "tensors": n, "bit_identical": True, "seconds": round(time.perf_counter() - t, 3)}


def _effective(a: Llama4Arch) -> tuple:
    """What the weights depend on: the layer pattern as Meta's code builds it (an interval longer than the model is
    no NoPE layer at all), not the ids or the context length the two formats record differently."""
    layers = tuple((a.uses_rope(i), a.is_moe(i)) for i in range(a.n_layers))
    return a.with_(max_position_embeddings=0, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                   nope_interval=None), layers


def _same(name, want, got, cast, rank) -> None:
    import torch

    if cast is not None:
        want = want.to(cast)
    if want.shape != got.shape or want.dtype != got.dtype or not torch.equal(want, got):
        raise ConversionError(f"'{name}' (shard {rank}) does not read back bit-identical from the written files",
                              fix="a bug in llamakit's Llama 4 key map; please report it")


def convert(source, dst: Path, *, to: str, mp: int | None, cast, max_shard_size, check: bool, force: bool,
            show_progress: bool, t0: float):
    from llamakit.convert import output
    from llamakit.convert.api import ConvertResult
    from llamakit.convert.hf import dtype_name

    arch = source.arch
    mp_out = mp or (source.mp if source.fmt == "meta" else 1)
    if to == "meta":
        arch.check_mp(mp_out, path=source.path)
    timings = {"open_s": round(time.perf_counter() - t0, 3)}
    total = sum(_nbytes(s, d) for _, s, d, _ in source.hf_tensors()) if source.fmt == "meta" else \
        sum(_nbytes(s, d) * mp_out for _, s, d, _ in source.meta_tensors(mp_out))
    n_tensors = len(list(source.hf_tensors()) if source.fmt == "meta" else list(source.meta_tensors(mp_out)))
    with output.staging(dst, force=force) as tmp:
        t = time.perf_counter()
        with output.progress_bar(total, enabled=show_progress, label=f"{source.fmt}→{to}") as advance:
            if to == "hf":
                files = write_hf(source, tmp, dtype=cast, max_shard_size=max_shard_size, progress=advance)
                main = dtype_name(cast) if cast is not None else dtype_name(next(source.hf_tensors())[2])
                files += write_configs(arch, tmp, main)
            else:
                files = write_meta(source, tmp, mp=mp_out, dtype=cast, progress=advance)
        timings["weights_s"] = round(time.perf_counter() - t, 3)
        tok = _copy_tokenizer(source, tmp, to)
        report = check_inverse(source, tmp, to, cast=cast) if check else None
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        written = sum((tmp / f).stat().st_size for f in files)
    return ConvertResult(
        src=str(source.path), dst=str(dst), src_format=source.fmt, dst_format=to,
        generation=arch.describe(vision=source.vision), mp_in=source.mp, mp_out=mp_out if to == "meta" else 1,
        n_tensors=n_tensors, bytes_written=written, files=files, tokenizer=tok, check=report,
        wall_s=round(time.perf_counter() - t0, 3), catalog=list(source.catalog), arch=arch.to_json(), timings=timings,
        errata=list(source.errata))


def _copy_tokenizer(source, out: Path, to: str) -> str:
    """Llama 4's tokenizer.model (tiktoken BPE) travels as is; its HF tokenizer.json is not generated yet."""
    src = source.path / "tokenizer.model"
    if src.is_file():
        (out / "tokenizer.model").write_bytes(src.read_bytes())
        return "tokenizer.model copied (no tokenizer.json generated for Llama 4 yet)"
    return "none in the source"
