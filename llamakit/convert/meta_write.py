"""Writing Meta's layout: any source split into N consolidated.NN.pth shards + params.json + checklist.chk,
block by block (never a whole tensor in memory)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from llamakit.convert import keymap
from llamakit.convert.decide import params_json
from llamakit.convert.entries import Entry, part_rows
from llamakit.convert.pth import writer_group


def write_meta(source, out: Path, *, mp: int, dtype, progress: Callable[[str, int], None]) -> list[Path]:
    """Split `source` into `mp` consolidated.NN.pth files + params.json + checklist.chk, block by block."""
    arch = source.arch
    entries = source.entries()
    # (entry, the source tensor it is read from): Meta's code always has an output projection, so a tied
    # model gets output.weight as a copy of the embedding, as Meta ships Llama 3.2 1B/3B.
    sources = [(e, e.name) for e in entries]
    if arch.tied:
        emb = next(e for e in entries if e.name == "tok_embeddings.weight")
        sources.append((Entry("output.weight", emb.shape, emb.dtype), emb.name))
    plans = []
    for e, src_name in sources:
        rule, _ = keymap.lookup(e.name, "meta")
        d = keymap.split_dim(rule, legacy_embedding=arch.legacy_embedding)
        shard_shape = list(e.shape)
        if d is not None:
            shard_shape[d] //= mp
        plans.append((e, d, tuple(shard_shape), dtype or e.dtype, src_name))
    paths = [out / f"consolidated.{r:02d}.pth" for r in range(mp)]
    with writer_group(paths, [(e.name, shape, dt) for e, _, shape, dt, _ in plans]) as writers:
        for e, d, shard_shape, out_dtype, src_name in plans:
            for w in writers:
                w.begin(e.name)
            row = 0  # rows of the full tensor written so far (dim-0 splits send each row to one shard)
            for part in source.parts(src_name, part_rows(e, arch.head_dim, out_dtype.itemsize)):
                if part.dtype != out_dtype:
                    part = part.to(out_dtype)
                if d is None:
                    for w in writers:
                        w.write(part)
                elif d == 1:
                    for w, chunk in zip(writers, part.chunk(mp, dim=1)):
                        w.write(chunk)
                else:
                    while part.shape[0]:
                        r, within = divmod(row, shard_shape[0])
                        take = min(part.shape[0], shard_shape[0] - within)
                        writers[r].write(part[:take])
                        part, row = part[take:], row + take
            for w in writers:
                w.end()
            progress(e.name, e.nbytes)
    (out / "params.json").write_text(json.dumps(params_json(arch), indent=2) + "\n")
    write_checklist(out)
    return paths + [out / "params.json", out / "checklist.chk"]


def write_checklist(directory: Path) -> Path:
    """checklist.chk as Meta ships it: `md5  name` for every file beside it."""
    lines = []
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name != "checklist.chk":
            h = hashlib.md5(usedforsecurity=False)
            with open(p, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
            lines.append(f"{h.hexdigest()}  {p.name}\n")
    path = directory / "checklist.chk"
    path.write_text("".join(lines))
    return path
