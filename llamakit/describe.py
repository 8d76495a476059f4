"""`llamakit info --local`: what a local checkpoint holds, read from its files alone.

The same detection `convert` uses (format, architecture, Llama generation, the
catalog releases with exactly these shapes), without loading a tensor or importing
torch (a Meta Llama 4 directory is read through torch's memory-mapped loader: its
shipped layout is a pickle of tensors, not the zip records the Llama 1-3 reader parses).
A Hugging Face cache snapshot, or a model name resolved to its cached snapshot, is
described like any directory, plus the repo and revision its path names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def describe_local(arg: str | Path) -> dict[str, Any]:
    from llamakit.convert.detect import detect_format, generation, open_source
    from llamakit.fetch.hf_cache import parse_snapshot, resolve_local

    path = resolve_local(arg)
    fmt, opened = detect_format(path)
    source = open_source(path, torch_free=True)
    info: dict[str, Any] = {"path": str(path), "format": fmt}
    snap = parse_snapshot(path) if path.is_dir() else None
    if snap is not None:
        info["hf_cache"] = {"repo": snap.repo, "revision": snap.commit}
    info["generation"] = generation(source)
    if getattr(source, "family", None) == "llama4" and source.vision is not None:
        info["vision"] = source.vision.to_json()  # the encoder's vision_args
    info["catalog_matches"] = list(getattr(source, "catalog", []) or [])
    mp = getattr(source, "mp", None)
    if mp is not None:
        info["mp_shards"] = mp
    info["architecture"] = source.arch.to_json()
    return info
