"""Synthetic releases (random bytes, real checklists) and a catalog that names them."""

from __future__ import annotations

import hashlib
import json
import random
import zipfile
from pathlib import Path

from _servers import md5_checklist

CATALOG = """\
family: tiny
defaults:
  gated: false
  license: test-only
  context_length: 128
architectures:
  t: {{dim: 64, n_layers: 2, n_heads: 8, n_kv_heads: 8, vocab_size: 128, multiple_of: 32, norm_eps: 1.0e-5}}
meta_layout:
  folder_files: [params.json, checklist.chk]
  root_files: [tokenizer.model, tokenizer_checklist.chk]
  optional: [LICENSE, USE_POLICY.md]
releases:
  - {{name: tiny-llama, params: 1M, variant: base, arch: t, mp_shards: 2, meta_folder: tiny-llama, formats: [meta, hf],
     hf: {{repo: test-org/tiny-llama, original_dir: original}}}}
  - {{name: tiny-gated, params: 1M, variant: chat, arch: t, mp_shards: 2, meta_folder: tiny-gated, formats: [meta, hf],
     gated: true, hf: {{repo: test-org/tiny-gated, original_dir: original}}}}
{extra}"""

WHEEL_ENTRY = """\
  - name: tiny-wheel
    params: 1M
    variant: base
    arch: t
    formats: [gguf]
    sources:
      pypi: {{package: tiny-wheel, version: 0.1.0, wheel_sha256: '{wheel_sha256}', file: tiny_wheel/tiny.gguf, file_sha256: '{file_sha256}'}}
"""


def rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def meta_files(seed: int = 0, *, shard_kb: tuple[int, int] = (120, 320), folder: str = "tiny-llama") -> dict[str, bytes]:
    """Meta's layout under the presigned URL's '*': shards, params.json, checklists, tokenizer."""
    rng = random.Random(seed)
    folder_files = {
        "consolidated.00.pth": rand_bytes(rng, rng.randrange(*shard_kb) * 1024 + rng.randrange(1024)),
        "consolidated.01.pth": rand_bytes(rng, rng.randrange(*shard_kb) * 1024 + rng.randrange(1024)),
        "params.json": json.dumps({"dim": 64, "n_layers": 2, "n_heads": 8, "seed": seed}).encode(),
    }
    tok = {"tokenizer.model": rand_bytes(rng, rng.randrange(20, 60) * 1024)}
    out = {f"{folder}/{k}": v for k, v in folder_files.items()}
    out[f"{folder}/checklist.chk"] = md5_checklist(folder_files)
    out.update(tok)
    out["tokenizer_checklist.chk"] = md5_checklist(tok)
    out["LICENSE"] = b"test licence text\n"
    return out


def hub_files(seed: int = 0, *, weight_kb: tuple[int, int] = (120, 320)) -> dict[str, bytes]:
    """A hub repo: HF format at the root, Meta format under original/."""
    rng = random.Random(seed + 1000)
    meta = meta_files(seed, shard_kb=weight_kb)
    files = {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "seed": seed}).encode(),
        "generation_config.json": b'{"do_sample": false}',
        "model-00001-of-00002.safetensors": rand_bytes(rng, rng.randrange(*weight_kb) * 1024),
        "model-00002-of-00002.safetensors": rand_bytes(rng, rng.randrange(*weight_kb) * 1024),
        "model.safetensors.index.json": b'{"weight_map": {}}',
        "tokenizer.json": rand_bytes(rng, 700).hex().encode(),
        "pytorch_model.bin": rand_bytes(rng, 2048),  # skipped: safetensors exist
        ".gitattributes": b"*.safetensors filter=lfs\n",
    }
    for k, v in meta.items():
        if "/" in k:
            k = k.split("/", 1)[1]
        if k != "LICENSE":
            files[f"original/{k}"] = v
    return files


def write_catalog(root: Path, extra: str = "") -> Path:
    (root / "catalog").mkdir(parents=True, exist_ok=True)
    (root / "locks").mkdir(exist_ok=True)
    (root / "catalog" / "tiny.yaml").write_text(CATALOG.format(extra=extra))
    return root


def build_wheel(dest: Path, payload: bytes, *, name: str = "tiny_wheel", version: str = "0.1.0") -> Path:
    """A minimal valid wheel holding `payload` as tiny_wheel/tiny.gguf."""
    dest.mkdir(parents=True, exist_ok=True)
    whl = dest / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{name}/tiny.gguf": payload,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    import base64

    record = []
    for p, d in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode()
        record.append(f"{p},sha256={digest},{len(d)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as zf:
        for p, d in files.items():
            zf.writestr(p, d)
    return whl


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def tree_digest(root: Path, skip=(".llamakit",)) -> dict[str, str]:
    """{relative path: sha256} of every file under root outside llamakit's state dir."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not any(rel == s or rel.startswith(s + "/") for s in skip):
            out[rel] = sha256(p.read_bytes())
    return out
