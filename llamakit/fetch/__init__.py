"""`llamakit fetch`: a release from the hub, Meta's presigned URLs, PyPI or a mirror.

Every source ends the same way (see `_engine`): bytes land in a resumable part
file under `DEST/.llamakit/`, are checked against the lock / checklist / hub
metadata, and only then are renamed to their final name. A file lock on DEST
keeps two fetches from interleaving; the second one finds the files verified.
Nothing heavy is imported here: `llamakit --help` stays instant.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["fetch_release", "FetchResult"]


@dataclass
class FetchResult:
    name: str
    out: Path
    format: str
    source: dict
    revision: str | None
    files: list = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_transferred(self) -> int:
        return sum(f.transferred for f in self.files)

    def to_json(self) -> dict:
        return {"name": self.name, "out": str(self.out), "format": self.format, "source": self.source,
                "revision": self.revision, "files": [f.to_json() for f in self.files], "bytes": self.bytes_total,
                "bytes_transferred": self.bytes_transferred, "seconds": round(self.seconds, 3),
                "warnings": self.warnings, "notes": self.notes, "verified": True}

    def summary_line(self) -> str:
        n = len(self.files)
        kinds = {}
        for f in self.files:
            kinds[f.status] = kinds.get(f.status, 0) + 1
        what = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        moved = self.bytes_transferred
        rate = f", {moved / 1e6:.1f} MB transferred at {moved / self.seconds / 1e6:.1f} MB/s" if moved and self.seconds > 0 else ""
        rev = f", revision {self.revision}" if self.revision else ""
        extra = "".join(f"; {x}" for x in self.notes + self.warnings)
        return f"{n} file{'s' if n != 1 else ''} ({what}), {self.bytes_total / 1e6:.1f} MB{rate}{rev}{extra}"


def _choose(release, source: str | None, fmt: str | None, meta_url: str | None) -> tuple[str, str]:
    from llamakit.errors import UsageError

    src = release.sources
    if meta_url and source not in (None, "meta-url", "meta_url"):
        raise UsageError(f"--meta-url goes with --source meta-url, not --source {source}")
    kind = source
    if kind is None:
        if meta_url:
            kind = "meta-url"
        elif fmt in (None, "gguf") and src.pypi is not None:
            kind = "pypi"
        elif src.hf is not None:
            kind = "hf"
        elif src.meta_url is not None:
            kind = "meta-url"
        else:
            raise UsageError(f"{release.name} has no source to fetch from")
    kind = "meta-url" if kind == "meta_url" else kind
    if fmt is not None and fmt not in ("hf", "meta", "gguf"):
        raise UsageError(f"unknown format '{fmt}'", fix="use one of hf, meta, gguf")
    natural = {"pypi": "gguf", "meta-url": "meta", "hf": "hf"}.get(kind, "hf")
    fmt = fmt or natural
    if kind == "pypi" and fmt != "gguf":
        raise UsageError(f"the package source holds the gguf format, not '{fmt}'")
    if kind == "meta-url" and fmt != "meta":
        raise UsageError(f"Meta's presigned URLs serve the meta format, not '{fmt}'")
    if fmt not in release.formats and kind in ("hf", "pypi", "meta-url"):
        raise UsageError(f"{release.name} is not published in format '{fmt}'", fix=f"use one of {', '.join(release.formats)}")
    if kind not in ("hf", "pypi", "meta-url") and not (kind.startswith(("http://", "https://")) or Path(kind).is_dir()):
        raise UsageError(f"--source {kind}: not hf, meta-url, pypi, an existing directory or an http(s) URL")
    return kind, fmt


def fetch_release(name: str, *, fmt: str | None = None, revision: str | None = None, out: str | Path | None = None,
                  source: str | None = None, meta_url: str | None = None, workers: int = 4,
                  show_progress: bool = True, config=None) -> FetchResult:
    """Fetch `name` into `out` (default ./<name>), verified, and leave `out/.llamakit/lock.json`."""
    from llamakit import catalog
    from llamakit.errors import UsageError
    from llamakit.fetch._engine import Ctx, FetchConfig
    from llamakit.fetch._files import dest_lock
    from llamakit.fetch._progress import make_progress
    from llamakit.fetch.lockfile import Lock, LockEntry, save_lock

    t0 = time.perf_counter()
    release = catalog.get_release(name)
    meta_url = meta_url or os.environ.get("LLAMAKIT_META_URL") or None
    kind, fmt = _choose(release, source, fmt, meta_url)
    out = Path(out) if out is not None else Path.cwd() / release.name
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or FetchConfig.from_env()
    with dest_lock(out):
        with make_progress(show_progress, f"{release.name} ({fmt})") as prog:
            ctx = Ctx(release=release, fmt=fmt, out=out, revision=revision, workers=workers, config=cfg, progress=prog,
                      location=meta_url if kind == "meta-url" else None if kind in ("hf", "pypi") else kind)
            if kind == "hf":
                from llamakit.fetch import hf as mod
            elif kind == "pypi":
                from llamakit.fetch import pypi as mod
            elif kind == "meta-url":
                from llamakit.fetch import meta_url as mod
            else:
                from llamakit.fetch import mirror as mod
            outcome = mod.fetch(ctx)
        entries = [LockEntry(path=f.path, size=f.size, sha256=f.sha256, md5=f.md5, git_oid=f.git_oid) for f in outcome.files]
        if entries:
            save_lock(Lock(name=release.name, format=fmt, source=outcome.source, revision=outcome.revision, files=entries),
                      out / ".llamakit" / "lock.json")
    return FetchResult(release.name, out, fmt, outcome.source, outcome.revision, outcome.files, outcome.warnings,
                       outcome.notes, time.perf_counter() - t0)
