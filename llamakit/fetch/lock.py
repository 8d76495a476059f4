"""`llamakit lock`: pin a release from the hub, its package, or a directory already fetched.

From the hub the sha256s come from the LFS metadata the API already reports, so
locking a 140 GB release downloads nothing; small non-LFS files carry their git
blob id instead (byte-exact too). Meta's md5 list is tied in: an entry has both
sha256 and md5 when both exist. The schema and I/O live in `llamakit.fetch.lockfile`
(a leaf the sources and `verify` import); this module is the command on top.
"""

from __future__ import annotations

from pathlib import Path

from llamakit.errors import UsageError
from llamakit.fetch.lockfile import (  # noqa: F401  (re-exported: the lock API)
    LOCK_VERSION,
    Lock,
    LockEntry,
    find_lock,
    lock_path,
    locks_for,
    parse_lock,
    read_lock,
    save_lock,
)


def write_lock(name: str, *, fmt: str | None = None, revision: str | None = None, source: str | None = None,
               out: str | Path | None = None, token: str | None = None) -> Path:
    """Pin `name`: resolve the revision and record every file's size and digests."""
    from llamakit import catalog

    rel = catalog.get_release(name)
    kind = source or ("pypi" if rel.sources.pypi and fmt in (None, "gguf") else "hf" if rel.sources.hf else None)
    if kind is None:
        raise UsageError(f"{rel.name} has no hub or package source to lock from",
                         fix=f"fetch it first, then run `llamakit lock {rel.name} --source DIR`")
    if kind == "pypi":
        from llamakit.fetch import pypi

        lock = pypi.make_lock(rel)
    elif kind == "hf":
        from llamakit.fetch import hf

        lock = hf.make_lock(rel, fmt=fmt or "hf", revision=revision, token=token)
    elif kind in ("meta-url", "meta_url") or kind.startswith(("http://", "https://")):
        raise UsageError(f"locking from {kind} would download the whole release",
                         fix=f"fetch it, then run `llamakit lock {rel.name} --source DIR`")
    else:
        from llamakit.fetch.hf_cache import resolve_local

        # "cache": the release's snapshot in the Hugging Face cache; else a directory (a snapshot too) or a cached repo id
        lock = lock_from_dir(rel.name, resolve_local(rel.name if kind == "cache" else kind, revision=revision), fmt=fmt)
    if fmt is not None and lock.format != fmt:
        raise UsageError(f"the source holds format '{lock.format}', not '{fmt}'")
    if out is None:
        out = lock_path(rel.name, lock.format)
        if catalog.is_packaged(out):  # never write into an installed package: the current directory instead
            out = Path.cwd() / out.name
    return save_lock(lock, Path(out))


def lock_from_dir(name: str, directory: Path, *, fmt: str | None) -> Lock:
    """Hash a fetched directory (one read per file gives sha256 and, where a checklist lists it, md5)."""
    from llamakit.fetch.hf_cache import parse_snapshot
    from llamakit.verify import verify_dir

    if not directory.is_dir():
        raise UsageError(f"--source {directory}: not a directory, and not hf/pypi/meta-url")
    own = directory / ".llamakit" / "lock.json"
    base = read_lock(own) if own.exists() else None
    report = verify_dir(directory, lock=str(own) if base else None, show_progress=False, hash_all=True,
                        allow_extra=base is None)
    report.raise_for_mismatch()
    files = [LockEntry(path=f.path, size=f.size, sha256=f.sha256, md5=f.md5) for f in report.files if f.sha256]
    if not files:
        raise UsageError(f"{directory} holds no files to lock")
    snap = parse_snapshot(directory)
    if snap is not None and base is None:  # a cache snapshot names its repo and commit in its path
        source = {"kind": "hf", "repo": snap.repo, **({"subfolder": snap.subfolder} if snap.subfolder else {})}
        return Lock(name=name, format=fmt or guess_format([f.path for f in files]), source=source,
                    revision=snap.commit, files=files)
    if base is not None:
        return Lock(name=name, format=fmt or base.format, source=base.source, revision=base.revision, files=files)
    return Lock(name=name, format=fmt or guess_format([f.path for f in files]), source={"kind": "dir"}, revision=None, files=files)


def guess_format(paths: list[str]) -> str:
    names = [p.rsplit("/", 1)[-1] for p in paths]
    if any(n.endswith(".gguf") for n in names):
        return "gguf"
    if any(n.startswith("consolidated.") and n.endswith(".pth") for n in names):
        return "meta"
    return "hf"
