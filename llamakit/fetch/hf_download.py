"""`llamakit fetch --source hf` without `--out`: into the standard Hugging Face cache.

Transfers go through huggingface_hub's public `hf_hub_download` (so the cache is
exactly what `hf download`, `from_pretrained` and `snapshot_download` write and
read, Xet-backed repos use `hf_xet` when it is installed, and HF_HOME /
HF_HUB_CACHE / HF_TOKEN / HF_ENDPOINT / HF_HUB_DISABLE_PROGRESS_BARS mean what
they mean there). llamakit adds what the hub client does not: the lock's pins,
a check of every file against the hub's sha256 / git blob id (a file already in
the cache is re-hashed, not re-downloaded), a branch's ref written only after
everything verified, and HF_HUB_OFFLINE=1 served from a complete snapshot, or
refused naming the files the snapshot lacks.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from llamakit import __version__
from llamakit.errors import Mismatch, NetworkError, VerificationError
from llamakit.fetch import hf, hf_cache
from llamakit.fetch._engine import FetchConfig, FetchedFile, FileSpec, RemoteMissing
from llamakit.fetch._hashing import hash_file, needed_algos


@dataclass
class CacheOutcome:
    out: Path  # the snapshot (or its subfolder for the meta format)
    files: list[FetchedFile]
    source: dict
    revision: str
    specs: list[FileSpec] = field(default_factory=list)  # the plan (what --dry-run reports)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _check(path: Path, spec: FileSpec) -> tuple[FetchedFile | None, Mismatch | None]:
    """Hash a cached file against what the hub (or the lock) says it must be."""
    algos = needed_algos(sha256=True, md5=bool(spec.md5), git=bool(spec.git_oid))
    n, got = hash_file(path, algos)
    if spec.size is not None and n != spec.size:
        return None, Mismatch(spec.path, "truncated" if n < spec.size else "altered", str(spec.size), str(n))
    for key, want in spec.expected().items():
        if got.get(key) != want:
            return None, Mismatch(spec.path, "md5" if key == "md5" else "altered", want, got.get(key))
    return FetchedFile(spec.path, n, got["sha256"], got.get("md5"), got.get("git")), None


def _discard(link: Path) -> None:
    """Drop a bad cached file (its blob and the snapshot's link) so the next download starts clean."""
    blob = Path(os.path.realpath(link))
    for p in (link, blob):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _snapshot_files(root: Path) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(out)


def _index_shards(root: Path, names: list[str]) -> set[str]:
    """Weight shards that a cached *.index.json names: how an offline run knows a shard is missing."""
    import json

    shards = set()
    for n in names:
        if n.endswith(".index.json"):
            try:
                wm = json.loads((root / n).read_text()).get("weight_map") or {}
            except (OSError, ValueError, AttributeError):
                continue
            base = n.rsplit("/", 1)[0] + "/" if "/" in n else ""
            shards |= {base + v for v in wm.values() if isinstance(v, str)}
    return shards


def _offline(release, fmt: str, revision: str | None, root: Path, select) -> CacheOutcome:
    repo, sub = hf._layout(release, fmt)
    rev, lock = hf._pinned_revision(release, fmt, revision)
    commit = hf_cache.read_ref(repo, rev, root)
    snap_root = hf_cache.repo_dir(repo, root) / "snapshots" / (commit or "-")
    if commit is None or not snap_root.is_dir():
        raise NetworkError(f"HF_HUB_OFFLINE is set and {repo}@{rev} is not in the Hugging Face cache ({root})",
                           fix="run once without HF_HUB_OFFLINE=1 to download it (or point HF_HOME/HF_HUB_CACHE at the cache that has it)")
    prefix = f"{sub.strip('/')}/" if sub else ""
    if lock is not None and lock.revision == commit:  # the lock lists every file, with sizes and digests
        specs = [FileSpec(e.path, e.size, sha256=e.sha256, md5=e.md5, git_oid=e.git_oid, ref=prefix + e.path)
                 for e in lock.files]
    else:  # what the snapshot holds and what its index files name; each file checked against its blob's name
        names = sorted(set(_snapshot_files(snap_root)) | _index_shards(snap_root, _snapshot_files(snap_root)))
        chosen = hf._select(names, fmt, release)
        specs = []
        snap = hf_cache.parse_snapshot(snap_root)
        for ref, dest in chosen.items():
            blob = snap.expected_from_blob(ref) if (snap_root / ref).exists() else {}
            specs.append(FileSpec(dest, None, sha256=blob.get("sha256"), git_oid=blob.get("git"), ref=ref))
    specs = select(specs)
    missing = [s.ref for s in specs if not (snap_root / s.ref).is_file()]
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise NetworkError(f"HF_HUB_OFFLINE is set and the cached snapshot {repo}@{commit[:12]} lacks "
                           f"{len(missing)} file(s): {', '.join(missing[:8])}{more}",
                           fix="run without HF_HUB_OFFLINE=1 to download them")
    files, bad = [], []
    for s in specs:
        if not s.expected():
            bad.append(Mismatch(s.path, "altered", "a blob of this cache repo", "not content-addressed"))
            continue
        got, mismatch = _check(snap_root / s.ref, s)
        if mismatch is not None:
            bad.append(mismatch)
        else:
            got.status = "present"
            files.append(got)
    if bad:
        raise VerificationError(bad, root=snap_root)
    out = snap_root / sub.strip("/") if sub else snap_root
    source = {"kind": "hf", "repo": repo, **({"subfolder": sub} if sub else {})}
    return CacheOutcome(out, files, source, commit, specs, notes=[f"offline: served from the Hugging Face cache ({root})"])


def fetch_to_cache(release, *, fmt: str, revision: str | None, workers: int, cfg: FetchConfig, token: str | None = None,
                   show_progress: bool = True, select=lambda specs: specs, dry_run: bool = False) -> CacheOutcome:
    """Every file of `release` in `fmt`, verified, in the Hugging Face cache; returns where its snapshot is."""
    root = hf_cache.cache_root()
    if hf_cache.offline():
        return _offline(release, fmt, revision, root, select)
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils.tqdm import silent_tqdm

    if cfg.timeout:
        constants.HF_HUB_DOWNLOAD_TIMEOUT = cfg.timeout
    repo, commit, specs, notes, sub = hf.plan(release, fmt, revision, cfg, token=token)
    specs = select(specs)
    rev, _ = hf._pinned_revision(release, fmt, revision)
    snap_root = hf_cache.repo_dir(repo, root) / "snapshots" / commit
    out = snap_root / sub.strip("/") if sub else snap_root
    source = {"kind": "hf", "repo": repo, **({"subfolder": sub} if sub else {})}
    if dry_run:
        return CacheOutcome(out, [], source, commit, specs, notes=notes)
    quiet = not show_progress or hf_cache.progress_disabled()

    def one(spec: FileSpec) -> FetchedFile:
        link = snap_root / spec.ref
        if link.is_file():
            got, _ = _check(link, spec)
            if got is not None:
                got.status = "present"
                return got
            _discard(link)
        for attempt in range(cfg.corrupt_retries + 1):
            try:
                path = hf._with_retries(
                    lambda: hf_hub_download(repo, spec.ref, revision=commit, cache_dir=root, endpoint=hf.endpoint(),
                                            token=token, library_name="llamakit", library_version=__version__,
                                            **({"tqdm_class": silent_tqdm} if quiet else {})),
                    cfg, repo, spec.ref)
            except RemoteMissing as exc:
                raise NetworkError(f"{repo}: the hub has no {spec.ref} at {commit[:12]} (HTTP {exc.status})") from None
            got, bad = _check(Path(path), spec)
            if got is not None:
                got.transferred = got.size
                return got
            _discard(link)  # wrong bytes never stay in the cache under a content address
        raise VerificationError([bad], root=snap_root)

    if workers <= 1 or len(specs) <= 1:
        files = [one(s) for s in specs]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(specs)), thread_name_prefix="llamakit-hf") as pool:
            files = list(pool.map(one, specs))
    hf_cache.write_ref(repo, rev, commit, root)  # only now: a ref never points at an incomplete snapshot
    return CacheOutcome(out, files, source, commit, specs, notes=notes + [f"in the Hugging Face cache ({root})"])
