"""`convert(SRC, DST)`: detect, stream-convert into a staging dir, prove equal, commit."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from llamakit.errors import UsageError

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}


@dataclass
class ConvertResult:
    src: str
    dst: str
    src_format: str
    dst_format: str
    generation: str
    mp_in: int
    mp_out: int
    n_tensors: int
    bytes_written: int
    files: list[str]
    tokenizer: str
    check: dict | None
    wall_s: float
    catalog: list[str] = field(default_factory=list)  # releases with exactly this architecture
    timings: dict = field(default_factory=dict)  # seconds per phase: open, weights, tokenizer and check_source
    # (both on the worker, concurrent with weights), check (what it adds after the weights), commit
    arch: dict = field(default_factory=dict)
    errata: list[str] = field(default_factory=list)  # release errata entries (manifests/errata/) the decision used

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def summary_line(self) -> str:
        shards = f" MP {self.mp_out}" if self.dst_format == "meta" else ""
        src_mp = f" (MP {self.mp_in})" if self.src_format == "meta" else ""
        if self.check and self.check.get("kind") == "inverse":  # Llama 4 / 3.2 Vision (convert/readback.py)
            check = f"check: all {self.check['tensors']} tensors read back bit-identical through the inverse map"
        else:
            check = (f"check: max |Δlogit| {self.check['max_abs']:.2e} ≤ {self.check['tol']:.1e} (positions to "
                     f"{max(self.check.get('spread_positions') or [15])}), top-1 {self.check['top1']:.1%}, "
                     f"{self.check['source']} vs {self.check['result']}") if self.check else "check: skipped (--no-check)"
        known = f", as {self.catalog[0]}" + (f" (+{len(self.catalog) - 1})" if len(self.catalog) > 1 else "") if self.catalog else ""
        known += f"; errata applied: {', '.join(self.errata)}" if self.errata else ""
        return (f"converted {self.src_format}{src_mp} → {self.dst_format}{shards}: {self.n_tensors} tensors, "
                f"{self.bytes_written / 1e9:.2f} GB in {len(self.files)} files → {self.dst} [{self.generation}{known}]; "
                f"tokenizer: {self.tokenizer}; {check}; {self.wall_s:.1f}s")


def _torch_dtype(dtype: str | None):
    if dtype is None:
        return None
    import torch

    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}", fix="use bf16, fp16 or fp32")
    return getattr(torch, DTYPES[dtype])


def convert(src, dst, *, to=None, mp=None, dtype=None, max_shard_size="5GB", check=True, force=False,
            show_progress=True, whole_model_check=False, reference="llamakit") -> ConvertResult:
    """Convert SRC (Meta dir, HF dir or .gguf) to DST (`to` = 'hf' | 'meta'), streaming, then prove equality."""
    from llamakit.convert import detect, hf, meta_write, output

    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    to = to or "hf"
    if to not in ("hf", "meta"):
        raise UsageError(f"unknown --to {to!r}", fix="use --to hf or --to meta")
    if mp is not None and to != "meta":
        raise UsageError("--mp only applies to --to meta", fix="drop --mp, or add --to meta")
    if mp is not None and mp < 1:
        raise UsageError(f"--mp must be ≥ 1, got {mp}")
    cast = _torch_dtype(dtype)
    if reference not in ("llamakit", "meta"):
        raise UsageError(f"unknown --reference {reference!r}", fix="use --reference llamakit or --reference meta")
    if reference == "meta":
        if not check:
            raise UsageError("--reference meta chooses the check's Meta-side code", fix="drop --no-check")
        from llamakit.convert import meta_code

        meta_code.require()  # before any work
    output.refuse_overlap(src, dst)
    output.sweep(dst)
    output.check_destination(dst, force=force)  # before any expensive work

    # A Meta -> HF conversion that does not cast only copies bytes: it plans and writes without torch. The
    # check imports torch itself, on the worker thread, while the bytes are copied.
    source = detect.open_source(src, torch_free=to == "hf" and cast is None)
    if getattr(source, "family", None) in ("llama4", "mllama"):  # Llama 4 / 3.2 Vision: convert/llama4*.py, mllama*.py
        if reference == "meta":
            raise UsageError("--reference meta runs Meta's Llama 1-3 code; a Llama 4 conversion is checked by "
                             "reading it back bit-identical", fix="drop --reference meta")
        from llamakit.convert import llama4_io, mllama_io

        return (mllama_io if source.family == "mllama" else llama4_io).convert(
            source, dst, to=to, mp=mp, cast=cast, max_shard_size=max_shard_size, check=check,
            force=force, show_progress=show_progress, t0=t0)
    arch = source.arch
    mp_out = mp or (source.mp if source.fmt == "meta" else 1)
    if to == "meta":
        arch.check_mp(mp_out, path=src)
    entries = source.entries()
    real_cast = cast if cast is not None and any(e.dtype != cast for e in entries) else None
    total = sum(e.nbytes for e in entries)

    timings = {"open_s": round(time.perf_counter() - t0, 3)}
    with output.staging(dst, force=force) as tmp:
        # Work that does not depend on the written weights runs meanwhile, on two worker threads: the check's
        # source side (its forward reads only the source), and the import of transformers' modeling code that
        # the result side will need, then the tokenizer. The copy's kernel work (copy_file_range, writeback)
        # overlaps them; their Python work takes turns on the GIL (the imports hold it throughout, and a
        # thread of torch operations makes little progress beside them: BENCHMARKS.md, "what bounds the
        # default command"), which is why the check's whole serial work still shows in the wall time. A
        # second process measured no faster on two cores. Leaving the pool waits for both workers, also
        # when the weights fail.
        with _short_gil_turns(), ThreadPoolExecutor(max_workers=2, thread_name_prefix="llamakit-prepare") as pool:
            side_job = pool.submit(_timed, _check_source, source, whole_model_check, reference) if check else None
            tok_job = pool.submit(_timed, _imports_then_tokenizer, source, tmp, to, arch, check and to == "hf")
            t = time.perf_counter()
            with output.progress_bar(total, enabled=show_progress, label=f"{source.fmt}→{to}") as advance:
                if to == "hf":
                    files = hf.write_hf(source, tmp, dtype=cast, max_shard_size=max_shard_size, progress=advance)
                else:
                    files = meta_write.write_meta(source, tmp, mp=mp_out, dtype=cast, progress=advance)
            timings["weights_s"] = round(time.perf_counter() - t, 3)
            (tok_note, arch), timings["tokenizer_s"] = tok_job.result()
            if to == "hf":
                files += _hf_configs(source, tmp, arch, hf.main_dtype(source, cast))
            report = None
            if check:
                from llamakit.convert import check as checkmod

                t = time.perf_counter()
                side, timings["check_source_s"] = side_job.result()
                report = checkmod.finish(side, source, tmp, to, cast=real_cast, report_path=dst)
                timings["check_s"] = round(time.perf_counter() - t, 3)  # after the weights: what the check adds
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        written = sum((tmp / f).stat().st_size for f in files)
        t_commit = time.perf_counter()
    timings["commit_s"] = round(time.perf_counter() - t_commit, 3)  # fsync + rename

    return ConvertResult(
        src=str(src), dst=str(dst), src_format=source.fmt, dst_format=to, generation=detect.generation(source),
        mp_in=source.mp, mp_out=mp_out if to == "meta" else 1, n_tensors=len(entries), bytes_written=written,
        files=files, tokenizer=tok_note, check=report.to_json() if report else None,
        wall_s=round(time.perf_counter() - t0, 3), catalog=source.decision.catalog, arch=arch.to_json(),
        timings=timings, errata=list(source.decision.errata),
    )


@contextlib.contextmanager
def _short_gil_turns(seconds: float = 2e-4):
    """While the workers run, a thread that holds the GIL (an import, the tokenizer) hands it over after `seconds`
    instead of Python's 5 ms. The check's forward and the copy release the GIL for every block and need it back
    to start the next: with 5 ms turns each of those waited behind the imports (measured on the 2.09 GB
    benchmark checkpoint: 16.2 s against 13.7 s with 0.2 ms turns, one run each, same load)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, round(time.perf_counter() - t, 3)


def _check_source(source, whole_model: bool, reference: str):
    import torch

    from llamakit.convert import check

    # Half the cores for it: the others are the copy's and the imports' meanwhile, and torch's threads would
    # only wait on each other (all cores: 22.5 s user time for the default command, half: 19.4 s, one run each
    # here). The result side, which runs alone, gets them all back.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    try:
        return check.source_side(source, whole_model=whole_model, reference_code=reference)
    finally:
        torch.set_num_threads(threads)


def _imports_then_tokenizer(source, out: Path, to: str, arch, result_side_imports: bool):
    """One worker's turn: the imports the check's result side will need (transformers' model), then the tokenizer.
    Both are plain Python, which threads cannot overlap (GIL), so they share one worker rather than two."""
    if result_side_imports:
        import transformers.models.llama.modeling_llama  # noqa: F401
    return _tokenizer(source, out, to, arch)


def _tokenizer(source, out: Path, to: str, arch):
    from llamakit.convert import tokenizer

    if source.fmt == "meta" and to == "hf":
        note, ids = tokenizer.meta_to_hf(source.tokenizer_path, out, llama31=arch.rope_scaling is not None)
        if ids:
            arch = arch.with_(**ids)
        elif arch.bos_token_id is None:
            arch = arch.with_(**({"bos_token_id": 1, "eos_token_id": 2} if arch.legacy_embedding else {}))
        return note, arch
    if source.fmt == "meta":
        return tokenizer.meta_to_meta(source.path, out), arch
    if source.fmt == "hf":
        return (tokenizer.hf_to_hf(source.path, out) if to == "hf" else tokenizer.hf_to_meta(source.path, out)), arch
    if to == "hf":
        return tokenizer.gguf_to_hf(source.path, out), arch
    return "skipped (Meta's format has no equivalent of a GGUF vocabulary)", arch


def _hf_configs(source, out: Path, arch, dtype: str) -> list[Path]:
    """config.json + generation_config.json: the source's own when it is HF (only the dtype changes)."""
    from llamakit.convert import hf

    if source.fmt != "hf":
        return hf.write_configs(arch, out, dtype=dtype)
    cfg = json.loads((source.path / "config.json").read_text())
    cfg.pop("torch_dtype", None)
    cfg["dtype"] = dtype
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    paths = [out / "config.json"]
    if (source.path / "generation_config.json").is_file():
        (out / "generation_config.json").write_bytes((source.path / "generation_config.json").read_bytes())
        paths.append(out / "generation_config.json")
    return paths
