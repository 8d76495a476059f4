"""transformers' format: config.json + sharded model-NNNNN-of-NNNNN.safetensors (+ index).

Reading goes through `safe_open`, one tensor per open, so the pages a read touched are
unmapped right after. Writing streams: huggingface_hub's state-dict sharding decides, from
planned sizes alone, which tensor goes in which file (and names the files); each
file is then written tensor by tensor in the safetensors layout (8-byte header length,
JSON header, contiguous data), so no shard is ever held in memory, and re-opened with
`safe_open` to verify before the directory is committed.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from llamakit.convert import keymap
from llamakit.convert.arch import Arch
from llamakit.convert.entries import Entry, expected_shapes, part_rows
from llamakit.convert.output import FileSpan, SpanCopier, pwrite_all, start_writeback
from llamakit.convert.pth import tensor_bytes
from llamakit.errors import ConversionError, InputFileError, UsageError

if TYPE_CHECKING:
    import torch

_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
              "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
INDEX = "model.safetensors.index.json"


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def st_torch_dtype(st: str):
    """The torch dtype of a safetensors dtype code ("BF16" -> torch.bfloat16)."""
    import torch

    inv = {v: k for k, v in _ST_DTYPES.items()}
    return getattr(torch, inv[st])


def safetensors_files(directory: Path) -> list[Path]:
    index = directory / INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputFileError(f"unreadable index ({exc})", path=index) from None
        files = sorted({directory / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise InputFileError(f"missing shard(s) {', '.join(missing)}", path=directory, fix="re-download the checkpoint")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in directory.glob("pytorch_model*.bin"))
        why = "only pickle weights (pytorch_model*.bin); llamakit reads safetensors" if pickles else "no *.safetensors"
        raise InputFileError(why, path=directory, fix="convert it with transformers' save_pretrained(safe_serialization=True)")
    return files


class HFSource:
    """An HF Llama directory seen as the canonical (merged Meta layout) state dict."""

    fmt = "hf"
    mp = 1

    def __init__(self, directory: Path, *, legacy_embedding: bool | None = None):
        from safetensors import SafetensorError, safe_open

        self.path = Path(directory)
        self.arch = Arch.from_hf_config(self.path / "config.json", legacy_embedding=legacy_embedding)
        self._where: dict[str, tuple[Path, str, keymap.Rule]] = {}
        found: dict[str, tuple[tuple[int, ...], object]] = {}
        for f in safetensors_files(self.path):
            try:
                with safe_open(f, framework="pt") as st:
                    for hf_key in st.keys():
                        if keymap.is_dropped(hf_key, "hf"):
                            continue
                        rule, layer = keymap.lookup(hf_key, "hf", path=f)
                        if rule.optional and self.arch.tied:
                            continue  # a tied lm_head saved anyway is the embedding again
                        meta_key = keymap.name_of(rule, "meta", layer)
                        sl = st.get_slice(hf_key)
                        found[meta_key] = (tuple(sl.get_shape()), st_torch_dtype(sl.get_dtype()))
                        self._where[meta_key] = (f, hf_key, rule)
            except (SafetensorError, OSError) as exc:
                raise InputFileError(f"unreadable safetensors file ({exc})", path=f, fix="re-download it") from None
        expected = expected_shapes(self.arch)
        missing = [k for k in expected if k not in found]
        if missing:
            names = [keymap.rename(k, "meta", "hf") for k in missing[:3]]
            raise ConversionError(f"missing tensor(s) {', '.join(names)}", path=self.path, fix="the checkpoint is incomplete")
        self._entries = []
        self._shapes = expected
        for key, shape in expected.items():
            if found[key][0] != shape:
                raise ConversionError(f"'{self._where[key][1]}' has shape {found[key][0]}, config.json implies {shape}",
                                      path=self._where[key][0])
            self._entries.append(Entry(key, shape, found[key][1]))
        extra = sorted(set(found) - set(expected))
        if extra:
            raise ConversionError(f"'{self._where[extra[0]][1]}' is beyond num_hidden_layers={self.arch.n_layers}",
                                  path=self._where[extra[0]][0])

    def entries(self) -> list[Entry]:
        return self._entries

    def load(self, name: str) -> "torch.Tensor":
        from safetensors import safe_open

        f, hf_key, rule = self._where[name]
        with safe_open(f, framework="pt") as st:
            t = st.get_tensor(hf_key)
        return keymap.from_hf_layout(rule, t, self.arch.head_dim)

    def parts(self, name: str, rows: int):
        """Consecutive dim-0 blocks in Meta layout, each read by its own `safe_open` (so its pages are unmapped after)."""
        from safetensors import safe_open

        f, hf_key, rule = self._where[name]
        n = self._shapes[name][0]
        if len(self._shapes[name]) == 1 or n <= rows:
            yield self.load(name)
            return
        for a in range(0, n, rows):
            with safe_open(f, framework="pt") as st:
                block = st.get_slice(hf_key)[a:a + rows]
            yield keymap.from_hf_layout(rule, block, self.arch.head_dim)


# --- writing ----------------------------------------------------------------------


COPY_WORKERS = 2  # kernel copies of different tensors run side by side (2.09 GB: 2.4 s serial, 1.5 s on 2 threads here)


def write_safetensors(path: Path, specs: list[tuple[str, tuple[int, ...], "torch.dtype"]],
                      tensors: Iterator[tuple[str, "list[FileSpan] | Iterator[torch.Tensor]"]]) -> None:
    """A safetensors file whose tensors arrive one at a time, in `specs` order, each either as dim-0 tensor
    parts (written here) or as a list of `FileSpan`s of source files holding exactly its bytes (copied in
    the kernel by a small pool, at the tensor's offset, while the next tensors are produced)."""
    import math
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        n = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _ST_DTYPES[dtype_name(dtype)], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    base = 8 + len(raw)
    with open(path, "wb", buffering=0) as f, SpanCopier() as copier, \
            ThreadPoolExecutor(COPY_WORKERS, thread_name_prefix="llamakit-copy") as pool:
        fd = f.fileno()
        pwrite_all(fd, struct.pack("<Q", len(raw)) + raw, 0)
        pending: deque = deque()
        for (name, shape, dtype), (got_name, parts) in zip(specs, tensors, strict=True):
            start, end = header[name]["data_offsets"]
            at = base + start
            if got_name != name:
                raise AssertionError(f"{path.name}: got {got_name}, planned {name}")
            if isinstance(parts, list):  # FileSpans (dtype checked by the producer)
                got = sum(s.nbytes for s in parts)
                pending.append(pool.submit(_copy_spans, copier, parts, fd, at))
                while len(pending) > 2 * COPY_WORKERS:  # bounded: span lists of a 70B model would not fit
                    pending.popleft().result()
            else:
                got = 0
                for part in parts:
                    if dtype_name(part.dtype) != dtype_name(dtype):  # a torch-free source plans pth_index.DTypes
                        raise AssertionError(f"{path.name}: got {name} {part.dtype}, planned {dtype}")
                    data = tensor_bytes(part)
                    pwrite_all(fd, data, at + got)
                    got += data.nbytes
                start_writeback(fd)  # overlaps the disk writes with the next tensor's copy
            if got != end - start:
                raise AssertionError(f"{path.name}: {name} has {got} bytes, its planned shape {shape} needs {end - start}")
        while pending:
            pending.popleft().result()


def _copy_spans(copier: SpanCopier, spans: list[FileSpan], fd: int, at: int) -> None:
    copier.copy_all(spans, fd, at)
    start_writeback(fd)


def verify_safetensors(path: Path, specs: list[tuple[str, tuple[int, ...], "torch.dtype"]]) -> None:
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as st:  # shapes and dtypes only: no need to import torch
        got = {k: (tuple(st.get_slice(k).get_shape()), st.get_slice(k).get_dtype()) for k in st.keys()}
    want = {n: (tuple(s), _ST_DTYPES[dtype_name(d)]) for n, s, d in specs}
    if got != want:
        raise ConversionError("written safetensors file does not read back as planned", path=path)


def write_hf(source, out: Path, *, dtype, max_shard_size, progress: Callable[[str, int], None]) -> list[Path]:
    """Sharded safetensors (+ index) of `source`; returns the files written."""
    import math

    arch = source.arch
    plan: dict[str, tuple[Entry, keymap.Rule]] = {}
    for e in source.entries():
        rule, layer = keymap.lookup(e.name, "meta")
        plan[keymap.name_of(rule, "hf", layer)] = (e, rule)
    out_dtype = {hf: dtype or e.dtype for hf, (e, _) in plan.items()}
    sizes = {hf: math.prod(e.shape) * out_dtype[hf].itemsize for hf, (e, _) in plan.items()}

    def produce(names):
        for hf in names:
            e, rule = plan[hf]
            # Without a cast every byte already sits in the source files: the merge and the rotary permutation
            # only move whole rows, so the tensor goes file to file as (coalesced) row ranges.
            spans = None
            if hasattr(source, "spans") and out_dtype[hf] == e.dtype:
                spans = source.spans(e.name, keymap.hf_row_order(rule, e.shape[0], arch.head_dim) if rule.rope else None)
            if spans is not None:
                yield hf, spans
            else:
                rows = part_rows(e, arch.head_dim, out_dtype[hf].itemsize)
                yield hf, _hf_parts(source, e, rule, rows, out_dtype[hf], arch.head_dim)
            progress(hf, e.nbytes)

    return write_shards(out, sizes, lambda hf: (plan[hf][0].shape, out_dtype[hf]), produce, max_shard_size)


def write_shards(out: Path, sizes: dict[str, int], spec_of, produce, max_shard_size) -> list[Path]:
    """Plan shards by byte size, write and verify each file (`produce(names)` yields each name's
    blocks), then the index when there is more than one; returns the files written. Every HF
    writer (Llama 3 and Llama 4) goes through here."""
    from huggingface_hub.serialization import split_state_dict_into_shards_factory

    # split_torch_state_dict_into_shards is this factory with torch getters, which import torch.distributed
    # (seconds) to rule out DTensors; our planned tensors are plain, and their sizes are known from shapes.
    try:
        split = split_state_dict_into_shards_factory(sizes, get_storage_size=lambda n: n, max_shard_size=max_shard_size,
                                                     filename_pattern="model{suffix}.safetensors")
    except ValueError as exc:
        raise UsageError(f"bad --max-shard-size {max_shard_size!r} ({exc})", fix="use a size like 5GB or 500MB") from None
    written = []
    for filename, names in split.filename_to_tensors.items():
        specs = [(n, *spec_of(n)) for n in names]
        write_safetensors(out / filename, specs, produce(names))
        verify_safetensors(out / filename, specs)
        written.append(out / filename)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        written.append(out / INDEX)
    return written


def _hf_parts(source, e: Entry, rule, rows: int, dtype, head_dim: int):
    for part in source.parts(e.name, rows):
        part = keymap.to_hf_layout(rule, part, head_dim)
        yield part if dtype_name(part.dtype) == dtype_name(dtype) else part.to(dtype)


def main_dtype(source, dtype) -> str:
    """The dtype config.json records: the one most of the parameters are stored in."""
    counts: dict[str, int] = {}
    for e in source.entries():
        name = dtype_name(dtype or e.dtype)
        counts[name] = counts.get(name, 0) + e.nbytes
    return max(counts, key=counts.get)


def write_configs(arch: Arch, out: Path, *, dtype: str) -> list[Path]:
    cfg = arch.to_hf_config(dtype)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": arch.bos_token_id, "eos_token_id": arch.eos_token_id}
    if arch.pad_token_id is not None:
        gen["pad_token_id"] = arch.pad_token_id
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    return [out / "config.json", out / "generation_config.json"]
