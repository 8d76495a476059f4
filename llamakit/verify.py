"""`llamakit verify DIR`: every file's size and sha256 against the lock, md5 against
Meta's checklist.chk, one read per file, files hashed in parallel.

The lock is `--lock FILE`, `--lock MODEL` (manifests/locks/MODEL.*.json) or, by
default, the `DIR/.llamakit/lock.json` a fetch left there. A checklist.chk found
in DIR is always checked too; a checklist that is not `md5  path` lines is itself
a failure, never a silent pass.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llamakit.errors import InputFileError, LlamakitError, ManifestError, Mismatch, UnsafePathError, VerificationError
from llamakit.fetch.hf_cache import Snapshot, parse_snapshot

OK = "ok"


@dataclass
class FileCheck:
    path: str
    status: str  # ok | missing | extra | truncated | altered | md5 | malformed
    size: int | None = None
    expected_size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    expected_sha256: str | None = None
    expected_md5: str | None = None
    checked: list[str] = field(default_factory=list)
    detail: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}


@dataclass
class VerifyReport:
    root: str
    lock: str | None
    checklists: list[str]
    files: list[FileCheck]
    bytes_hashed: int = 0
    seconds: float = 0.0
    hf_cache: dict | None = None  # {"repo", "revision"} when the directory is a Hugging Face cache snapshot

    @property
    def mismatches(self) -> list[Mismatch]:
        out = []
        for f in self.files:
            if f.status == OK:
                continue
            if f.status == "md5":
                exp, act = f.expected_md5, f.md5
            elif f.status in ("truncated", "altered") and f.size != f.expected_size:
                exp, act = f"{f.expected_size} bytes", f"{f.size} bytes"
            elif f.status == "altered":
                exp, act = f.expected_sha256, f.sha256
            else:
                exp, act = None, f.detail
            out.append(Mismatch(f.path, f.status, exp, act))
        return out

    @property
    def ok(self) -> bool:
        return all(f.status == OK for f in self.files)

    def to_json(self) -> dict:
        # No wall time: the verdict is a function of the bytes alone, so the pipeline's verify.json (a DVC
        # output that convert depends on) stays identical across reruns. The table shows the time.
        counts: dict[str, int] = {}
        for f in self.files:
            counts[f.status] = counts.get(f.status, 0) + 1
        out = {"root": self.root, "ok": self.ok, "lock": self.lock, "checklists": self.checklists, "counts": counts,
               "bytes_hashed": self.bytes_hashed,
               "files": [f.to_json() for f in self.files]}
        if self.hf_cache is not None:
            out["hf_cache"] = self.hf_cache
        return out

    def raise_for_mismatch(self) -> None:
        bad = self.mismatches
        if bad:
            raise VerificationError(bad, root=self.root)


@dataclass
class _Expect:
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    git_oid: str | None = None
    blob: dict[str, str] = field(default_factory=dict)  # a cache snapshot's content address: {"sha256"|"git": name}


def _snapshot_lock(snap: Snapshot):
    """A committed lock pinning exactly this snapshot (repo, commit, subfolder), if there is one."""
    from llamakit.catalog import manifests_dir
    from llamakit.fetch import lockfile as lockmod

    try:
        candidates = sorted((manifests_dir() / "locks").glob("*.json"))
    except LlamakitError:
        return None, None
    for c in candidates:
        lk = lockmod.read_lock(c)
        src = lk.source
        if (src.get("kind") == "hf" and src.get("repo") == snap.repo and lk.revision == snap.commit
                and (src.get("subfolder") or "").strip("/") == snap.subfolder):
            return lk, str(c)
    return None, None


def _resolve_lock(directory: Path, lock: str | Path | None, entries: list[str], snap: Snapshot | None = None):
    """(Lock | None, where it came from)."""
    from llamakit.fetch import lockfile as lockmod

    if lock is None:
        own = directory / ".llamakit" / "lock.json"
        if own.exists():
            return lockmod.read_lock(own), str(own)
        return _snapshot_lock(snap) if snap is not None else (None, None)
    p = Path(lock)
    if p.exists() or str(lock).endswith(".json"):  # else a model name, alias or hub repo id
        return lockmod.read_lock(p), str(p)
    from llamakit import catalog

    rel = catalog.get_release(str(lock))  # unknown model -> UnknownModelError with suggestions
    candidates = lockmod.locks_for(rel.name)
    if not candidates:
        raise ManifestError(f"no lock for {rel.name} in manifests/locks", fix=f"create one with `llamakit lock {rel.name}`")
    present = set(entries)
    best = max(candidates, key=lambda c: len(present & set(lockmod.read_lock(c).by_path())))
    return lockmod.read_lock(best), str(best)


def _inside(directory: Path, rel: str, source: str | None, snap: Snapshot | None) -> Path:
    """`directory/rel`, refusing a path that leaves it (a cache snapshot's links into its own blobs/ excepted)."""
    from llamakit.fetch._files import safe_dest, safe_relpath

    if snap is None:
        return safe_dest(directory, rel, source=source)
    rel = safe_relpath(rel, source=source)
    target = Path(directory, *rel.split("/"))
    real = os.path.realpath(target)
    root_real = os.path.realpath(directory)
    if not (real.startswith(root_real.rstrip(os.sep) + os.sep) or snap.allows(real)):
        raise UnsafePathError(rel, source=source or f"a symlink in {directory}")
    return target


def _walk(directory: Path, snap: Snapshot | None = None) -> list[str]:
    """Every file under `directory` (relative POSIX paths), refusing symlinks that leave it (in a cache
    snapshot: that resolve anywhere but the same repo's blobs/)."""
    from llamakit.fetch._files import IGNORED_DIRS

    root_real = os.path.realpath(directory)
    out = []
    for dirpath, dirnames, filenames in os.walk(directory):
        rel_dir = os.path.relpath(dirpath, directory)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                real = os.path.realpath(full)
                inside = real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)
                if not inside and not (snap is not None and snap.allows(real)):
                    raise UnsafePathError(os.path.relpath(full, directory), source=f"a symlink in {directory}")
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name)).replace(os.sep, "/")
            out.append(rel)
    return sorted(out)


def verify_dir(directory: str | Path, *, lock: str | Path | None = None, workers: int | None = None,
               show_progress: bool = True, hash_all: bool = False, allow_extra: bool = False) -> VerifyReport:
    """Check `directory` against its lock and checklists. `hash_all` also hashes files nothing expects
    (for `llamakit lock DIR`), and `allow_extra` then does not count them as mismatches.

    `directory` may be a Hugging Face cache snapshot (or a model name / repo id, resolved to its cached
    snapshot): every file is then checked against its blob's name (sha256 or git blob id), offline and
    with no lock; a committed lock pinning that repo and commit is checked as well."""
    from llamakit.fetch._hashing import hash_files, needed_algos
    from llamakit.fetch._progress import make_progress
    from llamakit.fetch.checklist import is_checklist, read_checklist

    t0 = time.perf_counter()
    from llamakit.fetch.hf_cache import resolve_local

    directory = resolve_local(directory)
    if not directory.is_dir():
        raise InputFileError("not a directory", path=directory,
                             fix="pass the directory a fetch wrote, a Hugging Face cache snapshot, or a cached model's name")
    snap = parse_snapshot(directory)
    present = _walk(directory, snap)
    lk, lock_src = _resolve_lock(directory, lock, present, snap)

    expect: dict[str, _Expect] = {}
    if lk is not None:
        for e in lk.files:
            expect[e.path] = _Expect(e.size, e.sha256, e.md5, e.git_oid)
    checks: dict[str, FileCheck] = {}
    checklists = [p for p in present if is_checklist(p)]
    for c in checklists:
        try:
            listed = read_checklist(directory / c, root=directory)
        except InputFileError as exc:
            checks[c] = FileCheck(c, "malformed", size=(directory / c).stat().st_size, detail=exc.message)
            continue
        checks[c] = FileCheck(c, OK, size=(directory / c).stat().st_size, checked=["format"])
        for rel, md5 in listed.items():
            expect.setdefault(rel, _Expect()).md5 = md5
    if snap is not None:
        for rel in present:
            blob = snap.expected_from_blob(rel)
            if blob:
                expect.setdefault(rel, _Expect()).blob = blob
    if not expect and not (hash_all and allow_extra):
        raise _nothing_to_verify(directory, [checks[c] for c in checklists])

    jobs, job_paths = [], []
    for rel, exp in sorted(expect.items()):
        if rel in checks and checks[rel].status != OK:  # a malformed checklist stays reported as such
            continue
        full = _inside(directory, rel, lock_src, snap)
        fc = FileCheck(rel, OK, expected_size=exp.size, expected_sha256=exp.sha256, expected_md5=exp.md5)
        checks[rel] = fc
        if not full.is_file():
            fc.status = "missing"
            continue
        fc.size = full.stat().st_size
        if exp.size is not None:
            fc.checked.append("size")
            if fc.size != exp.size:
                fc.status = "truncated" if fc.size < exp.size else "altered"
                continue
        algos = needed_algos(sha256=bool(exp.sha256) or "sha256" in exp.blob or hash_all, md5=bool(exp.md5),
                             git=bool(exp.git_oid) or "git" in exp.blob)
        jobs.append((full, algos))
        job_paths.append(rel)
    for rel in present:
        if rel in checks or (rel in checklists and rel not in expect):
            continue
        full = directory / rel
        checks[rel] = FileCheck(rel, OK if allow_extra else "extra", size=full.stat().st_size)
        if hash_all:
            jobs.append((full, ("sha256",)))
            job_paths.append(rel)

    total = sum(os.stat(p).st_size for p, _ in jobs)
    with make_progress(show_progress and total > 0, f"verifying {len(jobs)} files") as prog:
        prog.advance_total(0, total)
        results = hash_files(jobs, workers=workers, on_bytes=prog.advance_total)
    hashed = 0
    for rel, res in zip(job_paths, results):
        fc = checks[rel]
        if isinstance(res, BaseException):
            fc.status, fc.detail = "missing", f"unreadable: {res}"
            continue
        n, got = res
        hashed += n
        fc.sha256, fc.md5 = got.get("sha256"), got.get("md5")
        exp = expect.get(rel)
        if exp is None:
            continue
        wants = [(algo, algo, want) for algo, want in (("sha256", exp.sha256), ("git", exp.git_oid), ("md5", exp.md5))]
        wants += [(algo, f"blob-{algo}", want) for algo, want in exp.blob.items()]  # the cache's content address
        for algo, label, want in wants:
            if want:
                fc.checked.append(label)
                if got.get(algo) != want and fc.status == OK:
                    fc.status = "md5" if algo == "md5" else "altered"
                    if label.startswith("blob-"):
                        fc.expected_sha256 = fc.expected_sha256 or (want if algo == "sha256" else None)
                        fc.detail = f"bytes differ from their blob's name {want[:12]}"
    files = sorted(checks.values(), key=lambda f: f.path)
    cache = {"repo": snap.repo, "revision": snap.commit} if snap is not None else None
    return VerifyReport(str(directory), lock_src, checklists, files, hashed, time.perf_counter() - t0, cache)


def _nothing_to_verify(directory: Path, checklists: list[FileCheck]) -> InputFileError:
    """No lock and no usable checklist. A checklist that is there but is not one (the HTML page Meta's
    CDN served in its place, an empty file) is named with what it holds, not called absent."""
    bad = [c for c in checklists if c.status != OK]
    if bad:
        return InputFileError(f"{bad[0].detail}, and there is no lock to verify against", path=directory / bad[0].path,
                              fix="fetch the checklist again (an expired presigned URL serves an error page), or pass --lock FILE|MODEL")
    return InputFileError("nothing to verify against: no lock and no checklist.chk", path=directory,
                          fix="pass --lock FILE|MODEL, or fetch with `llamakit fetch` (it leaves a lock)")


_STYLE = {OK: "green", "extra": "yellow"}


def report_table(report: VerifyReport):
    """A rich table: one row per file, mismatches in red."""
    from rich.table import Table

    bad = len(report.mismatches)
    title = (f"{report.root}: {len(report.files) - bad} ok, {bad} mismatched" + (f" (lock: {report.lock})" if report.lock else "")
             + (f" (Hugging Face cache {report.hf_cache['repo']}@{report.hf_cache['revision'][:12]}, content-addressed)"
                if report.hf_cache else "")
             + f"; {report.bytes_hashed / 1e6:,.1f} MB hashed in {report.seconds:.1f}s")
    t = Table(title=title, title_justify="left")
    with_md5 = any(f.md5 or f.expected_md5 for f in report.files)
    t.add_column("file", overflow="fold")
    t.add_column("size", justify="right", no_wrap=True)
    t.add_column("sha256", no_wrap=True)
    if with_md5:
        t.add_column("md5", no_wrap=True)
    t.add_column("checked", no_wrap=True)
    t.add_column("status")
    for f in report.files:
        style = _STYLE.get(f.status, "red")
        row = [f.path, "" if f.size is None else f"{f.size:,}", (f.sha256 or "")[:12]]
        if with_md5:
            row.append((f.md5 or "")[:12])
        row += [",".join(f.checked), f"[{style}]{f.status}[/]" + (f" ({f.detail})" if f.detail else "")]
        t.add_row(*row)
    return t


__all__ = ["verify_dir", "report_table", "VerifyReport", "FileCheck", "LlamakitError"]
