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

from llamakit.errors import free_space

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
    dry_run: bool = False
    planned: list = field(default_factory=list)  # --dry-run: the FileSpecs that would be fetched
    free_bytes: int | None = None  # --dry-run: free space at the destination

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_transferred(self) -> int:
        return sum(f.transferred for f in self.files)

    def to_json(self) -> dict:
        if self.dry_run:
            return {"name": self.name, "out": str(self.out), "format": self.format, "source": self.source,
                    "revision": self.revision, "dry_run": True,
                    "files": [{"path": s.path, "size": s.size} for s in self.planned],
                    "bytes": self.planned_bytes, "free_bytes": self.free_bytes,
                    "fits": None if self.free_bytes is None else self.planned_bytes <= self.free_bytes,
                    "warnings": self.warnings, "notes": self.notes}
        return {"name": self.name, "out": str(self.out), "format": self.format, "source": self.source,
                "revision": self.revision, "files": [f.to_json() for f in self.files], "bytes": self.bytes_total,
                "bytes_transferred": self.bytes_transferred, "seconds": round(self.seconds, 3),
                "warnings": self.warnings, "notes": self.notes, "verified": True}

    @property
    def planned_bytes(self) -> int:
        return sum(s.size or 0 for s in self.planned)

    def plan_lines(self) -> list[str]:
        """--dry-run as text: one line per file, then the total against the free space."""
        lines = [f"{s.size if s.size is not None else '?':>14}  {s.path}" for s in self.planned]
        free = "unknown" if self.free_bytes is None else f"{self.free_bytes / 1e9:.2f} GB"
        unknown = sum(1 for s in self.planned if s.size is None)
        lines.append(f"{len(self.planned)} files, {self.planned_bytes / 1e9:.3f} GB"
                     + (f" (+{unknown} of unknown size)" if unknown else "")
                     + f" into {self.out}; free there: {free} (dry run: nothing written)")
        return lines

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
    if kind == "meta-url":  # a rejected URL must not leave OUT behind: check it before OUT is made
        from llamakit.fetch.meta_url import DOWNLOAD_PAGE, check_url

        if not meta_url:
            raise UsageError(f"fetching {release.name} from Meta needs its presigned URL",
                             fix=f"pass --meta-url 'URL' (or set LLAMAKIT_META_URL); request one at {DOWNLOAD_PAGE}")
        if src.meta_url is None:
            raise UsageError(f"{release.name} is not distributed through Meta's presigned URLs", fix="use --source hf")
        check_url(meta_url)
    return kind, fmt


def _selector(include: list[str] | None, exclude: list[str] | None):
    """--include/--exclude (fnmatch globs, as `hf download` takes them) matched on a file's source path
    (the repo path) or its destination path."""
    from fnmatch import fnmatch

    inc, exc = list(include or []), list(exclude or [])

    def hit(spec, pats) -> bool:
        return any(fnmatch(spec.path, p) or (spec.ref and fnmatch(spec.ref, p)) for p in pats)

    def select(specs):
        from llamakit.errors import UsageError

        if not inc and not exc:
            return specs
        kept = [s for s in specs if (not inc or hit(s, inc)) and not hit(s, exc)]
        if specs and not kept:
            raise UsageError("--include/--exclude leave no file to fetch",
                             fix=f"the release has {', '.join(s.ref or s.path for s in specs[:6])}{' …' if len(specs) > 6 else ''}")
        return kept
    return select


def fetch_release(name: str, *, fmt: str | None = None, revision: str | None = None, out: str | Path | None = None,
                  source: str | None = None, meta_url: str | None = None, workers: int = 4,
                  show_progress: bool = True, config=None, token: str | None = None,
                  include: list[str] | None = None, exclude: list[str] | None = None,
                  dry_run: bool = False) -> FetchResult:
    """Fetch release `name` (catalog name, alias or hub repo id), verify every byte, and say where it is.

    From the hub (`source="hf"`) with no `out`, the files go into the standard Hugging Face cache
    (HF_HOME / HF_HUB_CACHE) and `result.out` is the snapshot directory that `from_pretrained` reads;
    HF_HUB_OFFLINE=1 serves a complete cached snapshot without the network. With `out` (and for
    every other source, default `./<name>`) the files land in that directory, with its
    `.llamakit/lock.json`. `token` overrides HF_TOKEN / `hf auth login` (never printed or stored);
    `include`/`exclude` are globs on file paths; `dry_run` plans (files, sizes, free disk) and
    writes nothing.
    """
    from llamakit import catalog
    from llamakit.errors import UsageError
    from llamakit.fetch._engine import Ctx, FetchConfig
    from llamakit.fetch._files import dest_lock
    from llamakit.fetch._progress import NullProgress, make_progress
    from llamakit.fetch.lockfile import Lock, LockEntry, save_lock

    t0 = time.perf_counter()
    release = catalog.get_release(name)
    meta_url = meta_url or os.environ.get("LLAMAKIT_META_URL") or None
    kind, fmt = _choose(release, source, fmt, meta_url)
    cfg = config or FetchConfig.from_env()
    select = _selector(include, exclude)
    if kind == "hf" and out is None:
        from llamakit.fetch.hf_download import fetch_to_cache

        got = fetch_to_cache(release, fmt=fmt, revision=revision, workers=workers, cfg=cfg, token=token,
                             show_progress=show_progress, select=select, dry_run=dry_run)
        res = FetchResult(release.name, got.out, fmt, got.source, got.revision, got.files, got.warnings, got.notes,
                          time.perf_counter() - t0)
        if dry_run:
            res.dry_run, res.planned, res.free_bytes = True, got.specs, free_space(got.out)
        return res
    out = Path(out) if out is not None else Path.cwd() / release.name
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if dry_run:
        ctx = Ctx(release=release, fmt=fmt, out=out, revision=revision, workers=workers, config=cfg, progress=NullProgress(),
                  location=meta_url if kind == "meta-url" else None if kind in ("hf", "pypi") else kind, token=token,
                  select=select, dry_run=True)
        outcome = _source_module(kind).fetch(ctx)
        res = FetchResult(release.name, out, fmt, outcome.source, outcome.revision, [], outcome.warnings, outcome.notes,
                          time.perf_counter() - t0)
        res.dry_run, res.planned, res.free_bytes = True, ctx.planned, free_space(out)
        return res
    out.mkdir(parents=True, exist_ok=True)
    with dest_lock(out):
        with make_progress(show_progress, f"{release.name} ({fmt})") as prog:
            ctx = Ctx(release=release, fmt=fmt, out=out, revision=revision, workers=workers, config=cfg, progress=prog,
                      location=meta_url if kind == "meta-url" else None if kind in ("hf", "pypi") else kind, token=token,
                      select=select)
            outcome = _source_module(kind).fetch(ctx)
        entries = [LockEntry(path=f.path, size=f.size, sha256=f.sha256, md5=f.md5, git_oid=f.git_oid) for f in outcome.files]
        if entries:
            save_lock(Lock(name=release.name, format=fmt, source=outcome.source, revision=outcome.revision, files=entries),
                      out / ".llamakit" / "lock.json")
    return FetchResult(release.name, out, fmt, outcome.source, outcome.revision, outcome.files, outcome.warnings,
                       outcome.notes, time.perf_counter() - t0)


def _source_module(kind: str):
    if kind == "hf":
        from llamakit.fetch import hf as mod
    elif kind == "pypi":
        from llamakit.fetch import pypi as mod
    elif kind == "meta-url":
        from llamakit.fetch import meta_url as mod
    else:
        from llamakit.fetch import mirror as mod
    return mod
