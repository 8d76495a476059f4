"""llama.cpp's GGUF: header parsed here, tensors dequantized one at a time with the `gguf` package.

llama.cpp converts HF checkpoints by permuting q/k back to Meta's interleaved rotary
layout, so a GGUF tensor *is* the canonical (Meta-layout) tensor: only names change
here, and the HF writer applies the same permutation it applies to Meta weights.
Quantized tensors dequantize to float32 (exactly the numbers the file encodes); F16,
BF16 and F32 tensors keep their type.

The header is parsed by hand because `gguf.GGUFReader` builds a numpy view per array
element: ~100k of them for a tokenizer, seconds of work before the first tensor.
Array values are skipped except the few scalars the config needs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llamakit.convert import keymap
from llamakit.convert.arch import Arch
from llamakit.convert.entries import Entry, expected_shapes
from llamakit.convert.pth import prefetch, release
from llamakit.errors import ConversionError, InputFileError

if TYPE_CHECKING:
    import torch

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # torch order (ggml lists dims fastest-first)
    qtype: int
    offset: int  # absolute, in the file
    nbytes: int


class _Cursor:
    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise InputFileError("GGUF header is truncated", path=self.path, fix="re-download it")
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self) -> str:
        n = self.take("<Q")
        if n > 1 << 24 or self.pos + n > len(self.buf):
            raise InputFileError("GGUF header is corrupt (string length out of range)", path=self.path, fix="re-download it")
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s.decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool):
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.take("<I"), self.take("<Q")
            if itype in _SCALAR and not keep:  # skip fixed-size arrays in one step
                self.pos += count * struct.calcsize(_SCALAR[itype])
                return count
            items = [self.value(itype, keep) for _ in range(count)]
            return items if keep else count
        raise InputFileError(f"GGUF header is corrupt (value type {vtype})", path=self.path, fix="re-download it")


def read_header(path: Path) -> tuple[dict, list[GGUFTensor]]:
    """(metadata, tensors) of a GGUF v2/v3 file. Arrays in the metadata come back as their length."""
    import mmap

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputFileError(f"cannot open ({exc.strerror})", path=path) from None
    with f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if Path(path).stat().st_size else _empty(path) as buf:
        c = _Cursor(buf, path)
        if bytes(buf[:4]) != b"GGUF":
            raise InputFileError("not a GGUF file (bad magic)", path=path, fix="re-download it")
        c.pos = 4
        version = c.take("<I")
        if version not in (2, 3):
            raise InputFileError(f"unsupported GGUF version {version}", path=path)
        n_tensors, n_kv = c.take("<Q"), c.take("<Q")
        meta = {}
        for _ in range(n_kv):
            key = c.string()
            meta[key] = c.value(c.take("<I"), keep=False)
        infos = []
        for _ in range(n_tensors):
            name = c.string()
            dims = [c.take("<Q") for _ in range(c.take("<I"))]
            infos.append((name, tuple(reversed(dims)), c.take("<I"), c.take("<Q")))
        align = meta.get("general.alignment", 32)
        if type(align) is not int or align <= 0 or align & (align - 1):  # llama.cpp's own rule: a power of two
            raise InputFileError(f"GGUF header is corrupt (general.alignment {align!r}: not a positive power of two)",
                                 path=path, fix="re-download it, or re-export it with llama.cpp's convert script")
        data_start = c.pos + (-c.pos % align)
        size = len(buf)
    tensors = []
    for name, shape, qtype, off in infos:
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        except (ValueError, KeyError):
            raise InputFileError(f"tensor '{name}' has unknown ggml type {qtype}", path=path) from None
        n = 1
        for d in shape:
            n *= d
        t = GGUFTensor(name, shape, qtype, data_start + off, n // block * type_size)
        if t.offset + t.nbytes > size:
            raise InputFileError(f"GGUF file is truncated (tensor '{name}' ends past the end of the file)", path=path,
                                 fix="re-download it")
        tensors.append(t)
    return meta, tensors


def _empty(path):
    raise InputFileError("GGUF file is empty", path=path, fix="re-download it")


class GGUFSource:
    fmt = "gguf"
    mp = 1

    def __init__(self, path: Path):
        import numpy as np
        import torch
        from gguf import GGMLQuantizationType as Q

        self.path = Path(path)
        self.meta, tensors = read_header(self.path)
        if self.meta.get("general.architecture") != "llama":
            raise ConversionError(f"GGUF architecture is {self.meta.get('general.architecture')!r}, not 'llama'",
                                  path=path, fix="llamakit converts Llama-architecture checkpoints only")
        plain = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
        self._tensors: dict[str, GGUFTensor] = {}
        found = {}
        rope_freqs = None
        for t in tensors:
            if t.name == "rope_freqs.weight":  # llama.cpp's llama3 scaling (every Llama 3.1+ GGUF): checked, then dropped
                rope_freqs = t
                continue
            rule, layer = keymap.lookup(t.name, "gguf", path=path)
            meta_key = keymap.name_of(rule, "meta", layer)
            found[meta_key] = (t.shape, plain.get(Q(t.qtype), torch.float32))
            self._tensors[meta_key] = t
        self._data = np.memmap(self.path, dtype=np.uint8, mode="c")  # copy-on-write: writable views, never written
        self.output = self._output()
        if self.output == "same_as_embedding":  # the tie stored twice: converted as the tie
            found.pop("output.weight")
            self._tensors.pop("output.weight")
        self.arch = self._arch(found)
        self.rope_freqs = None
        if rope_freqs is not None:
            self.rope_freqs = self._read_rope_freqs(rope_freqs)
            self.arch = self.arch.with_(rope_scaling=llama3_scaling_for(self.rope_freqs, self.arch, path=self.path))
        expected = expected_shapes(self.arch)
        missing = [keymap.rename(k, "meta", "gguf") for k in expected if k not in found]
        if missing:
            raise ConversionError(f"missing tensor(s) {', '.join(missing[:3])}", path=path, fix="the file is incomplete")
        for key, (shape, _) in found.items():
            if expected.get(key) != shape:
                raise ConversionError(f"'{keymap.rename(key, 'meta', 'gguf')}' has shape {shape}, the metadata implies "
                                      f"{expected.get(key)}", path=path)
        self._entries = [Entry(k, expected[k], found[k][1]) for k in expected]
        self.tokenizer_model = self.meta.get("tokenizer.ggml.model")

    def _output(self) -> str:
        """'absent', 'same_as_embedding' (same type and bytes as token_embd) or 'distinct': tying by content."""
        out, emb = self._tensors.get("output.weight"), self._tensors.get("tok_embeddings.weight")
        if out is None:
            return "absent"
        if emb is None or (out.shape, out.qtype, out.nbytes) != (emb.shape, emb.qtype, emb.nbytes):
            return "distinct"
        a, b = self._data[out.offset:out.offset + out.nbytes], self._data[emb.offset:emb.offset + emb.nbytes]
        if not (a[:1 << 20] == b[:1 << 20]).all():  # an untied model differs at once: no need to read it all
            return "distinct"
        return "same_as_embedding" if bool((a == b).all()) else "distinct"

    def _arch(self, found) -> Arch:
        m = self.meta

        def need(key):
            if f"llama.{key}" not in m:
                raise InputFileError(f"GGUF metadata lacks llama.{key}", path=self.path)
            return m[f"llama.{key}"]

        dim, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
        if int(m.get("llama.rope.dimension_count", dim // n_heads)) != dim // n_heads:
            raise ConversionError("partial rotary (rope.dimension_count != head dim) has no Llama equivalent", path=self.path)
        if m.get("llama.rope.scaling.type", "none") != "none":
            raise ConversionError(f"rope scaling {m['llama.rope.scaling.type']!r} is not supported", path=self.path)
        name = m.get("general.name")
        return Arch(
            dim=dim, n_layers=int(need("block_count")), n_heads=n_heads,
            n_kv_heads=int(m.get("llama.attention.head_count_kv", n_heads)),
            vocab_size=found.get("tok_embeddings.weight", ((0, 0),))[0][0],
            hidden_dim=int(need("feed_forward_length")), norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            rope_theta=float(m.get("llama.rope.freq_base", 10000.0)), rope_scaling=None,
            tied="output.weight" not in found,
            legacy_embedding=m.get("tokenizer.ggml.model") == "llama",  # a sentencepiece vocabulary: Llama 1/2
            max_position_embeddings=int(m.get("llama.context_length", 4096)),
            bos_token_id=m.get("tokenizer.ggml.bos_token_id"), eos_token_id=m.get("tokenizer.ggml.eos_token_id"),
            pad_token_id=m.get("tokenizer.ggml.padding_token_id"),
            extra_hf={"_model_name_or_path": name} if name else {},
        )

    def _read_rope_freqs(self, t: GGUFTensor) -> "torch.Tensor":
        from gguf import GGMLQuantizationType as Q

        head_dim = int(self.meta["llama.embedding_length"]) // int(self.meta["llama.attention.head_count"])
        if Q(t.qtype) != Q.F32 or t.shape != (head_dim // 2,):
            raise ConversionError(f"rope_freqs is {Q(t.qtype).name} {t.shape}, llama.cpp writes F32 ({head_dim // 2},)",
                                  path=self.path, fix="re-convert the GGUF with llama.cpp")
        return _decode(self._data[t.offset:t.offset + t.nbytes].reshape(1, -1), t.qtype).reshape(-1).clone()

    def entries(self) -> list[Entry]:
        return self._entries

    def load(self, name: str) -> "torch.Tensor":
        return next(self.parts(name, 1 << 62)).clone()

    def parts(self, name: str, rows: int):
        """Consecutive dim-0 blocks, dequantized block by block (ggml quantizes within rows)."""
        t = self._tensors[name]
        n = t.shape[0]
        raw = self._data[t.offset:t.offset + t.nbytes].reshape(n if len(t.shape) > 1 else 1, -1)
        if len(t.shape) == 1:
            rows = 1
        for a in range(0, raw.shape[0], rows):
            block = raw[a:a + rows]
            prefetch(block)
            out = _decode(block, t.qtype)
            yield out.reshape(t.shape if len(t.shape) == 1 else (block.shape[0], *t.shape[1:]))
            release(block)


def _decode(raw, qtype: int) -> "torch.Tensor":
    """Rows of raw GGUF bytes as a tensor: plain floats keep their type, quantized blocks become float32."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    q = Q(qtype)
    if q in (Q.F32, Q.F16, Q.BF16):
        out = torch.from_numpy(np.ascontiguousarray(raw).view({Q.F32: np.float32, Q.F16: np.float16, Q.BF16: np.int16}[q]))
        return out.view(torch.bfloat16) if q == Q.BF16 else out
    return torch.from_numpy(np.ascontiguousarray(dequantize(raw, q), dtype=np.float32))


# --- llama3 rope scaling as llama.cpp stores it -------------------------------------


def rope_freq_factors(scaling: dict, head_dim: int, theta: float) -> "torch.Tensor":
    """The per-frequency divisors llama.cpp writes as rope_freqs for a llama3 `scaling` (freq / factor = scaled freq)."""
    import math

    import torch

    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor, lo, hi = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / freqs
    smooth = (old / wavelen - lo) / (hi - lo)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return torch.where(wavelen < old / hi, torch.ones_like(freqs), torch.where(wavelen > old / lo, factor, mid))


def llama3_scaling_for(rope_freqs: "torch.Tensor", arch: Arch, *, path: Path) -> dict:
    """The llama3 scaling whose factors are `rope_freqs`: among those the catalog gives this architecture's shapes,
    else among every one the catalog and the release errata know; refused when none reproduces the file."""
    from llamakit.convert.decide import shape_matches
    from llamakit.convert.errata import load_errata

    import torch

    own = [r.rope_scaling.model_dump() for r in shape_matches(arch, True) if r.rope_scaling]
    known = own or [e.sets.rope_scaling.model_dump() for e in load_errata() if e.sets.rope_scaling]
    seen = []
    for sc in known:
        sc = {k: v for k, v in sc.items() if k != "rope_type"}
        if sc in seen:
            continue
        seen.append(sc)
        if torch.allclose(rope_freq_factors(sc, arch.head_dim, arch.rope_theta), rope_freqs, rtol=1e-5, atol=0):
            return sc
    said = ", ".join(f"{x:g}" for x in rope_freqs.tolist()[:8])
    raise ConversionError(f"rope_freqs [{said}{', ...' if len(rope_freqs) > 8 else ''}] matches no llama3 rope scaling "
                          f"{'the catalog gives this architecture' if own else 'llamakit knows'} "
                          f"(tried factor {', '.join(format(x['factor'], 'g') for x in seen)})", path=path,
                          fix="convert the original HF or Meta checkpoint, or add the release to the catalog")
