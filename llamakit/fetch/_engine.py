"""The per-file loop every source shares: skip what is verified, resume, transfer,
verify, and only then give the file its final name.

A source supplies `transfer(spec, part)`, which must leave the complete bytes in
`part` (resuming from `part.size`) or raise; or, for a client that writes files
itself (huggingface_hub's public download API), `staged(spec, on_bytes)`, which
returns the path of a complete file under a staging name on the same filesystem.
Everything about durability, checking and naming lives here, so hub, Meta URL,
mirror and wheel behave alike.
"""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from llamakit.errors import DiskFullError, Mismatch, VerificationError
from llamakit.fetch._files import VerifiedState, fsync_dir, safe_dest
from llamakit.fetch._hashing import hash_file, needed_algos
from llamakit.fetch._part import PartFile


def _env(name: str, default, cast):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return cast(raw)
    except ValueError:
        from llamakit.errors import UsageError

        raise UsageError(f"{name}={raw!r} is not a valid {cast.__name__}") from None


@dataclass
class FetchConfig:
    """Knobs for flaky networks; tests shrink them through the environment."""

    timeout: float | None = None  # per socket operation; None = 30 s here, huggingface_hub's own default on the hub
    retries: int = 8  # consecutive failed attempts (no new bytes) before giving up on a file
    backoff: float = 1.0  # first wait; doubles per failed attempt
    max_backoff: float = 30.0
    chunk: int = 8 << 20  # resume granularity: a crash re-transfers at most this much
    fsync: bool = True
    corrupt_retries: int = 2  # fresh downloads after a checksum mismatch before failing
    hf_transfer: str = "auto"  # hub files: auto (Xet-backed via the hub API, the rest own engine) | hub | engine

    @classmethod
    def from_env(cls) -> "FetchConfig":
        return cls(
            timeout=_env("LLAMAKIT_FETCH_TIMEOUT", None, float),
            retries=_env("LLAMAKIT_FETCH_RETRIES", 8, int),
            backoff=_env("LLAMAKIT_FETCH_BACKOFF", 1.0, float),
            max_backoff=_env("LLAMAKIT_FETCH_MAX_BACKOFF", 30.0, float),
            chunk=_env("LLAMAKIT_FETCH_CHUNK", 8 << 20, int),
            fsync=_env("LLAMAKIT_FETCH_FSYNC", 1, int) != 0,
            corrupt_retries=_env("LLAMAKIT_FETCH_CORRUPT_RETRIES", 2, int),
            hf_transfer=_transfer_mode(os.environ.get("LLAMAKIT_HF_TRANSFER") or "auto"),
        )


def _transfer_mode(raw: str) -> str:
    if raw not in ("auto", "hub", "engine"):
        from llamakit.errors import UsageError

        raise UsageError(f"LLAMAKIT_HF_TRANSFER={raw!r} is not one of auto, hub, engine")
    return raw


@dataclass
class FileSpec:
    path: str  # destination-relative, already checked by safe_relpath
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    git_oid: str | None = None
    optional: bool = False
    ref: str = ""  # the source's own name for it (repo path, URL path, member)
    identity: dict = field(default_factory=dict)  # what makes an old .part reusable

    def expected(self) -> dict[str, str]:
        return {k: v for k, v in (("sha256", self.sha256), ("md5", self.md5), ("git", self.git_oid)) if v}


@dataclass
class FetchedFile:
    path: str
    size: int
    sha256: str
    md5: str | None = None
    git_oid: str | None = None
    status: str = "downloaded"  # downloaded | resumed | present
    resumed_from: int = 0
    transferred: int = 0

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class RemoteMissing(Exception):
    """The server has no such file (404); fatal unless the file is optional."""

    def __init__(self, ref: str, status: int):
        super().__init__(f"{ref}: HTTP {status}")
        self.ref, self.status = ref, status


class Cancelled(Exception):
    pass


class Engine:
    def __init__(self, root: Path, *, config: FetchConfig, progress, workers: int = 4):
        self.root = Path(root)
        self.cfg = config
        self.progress = progress
        self.workers = max(1, int(workers))
        self.state = VerifiedState(self.root)
        self.cancel = threading.Event()
        self.warnings: list[str] = []
        self._lock = threading.Lock()

    def run(self, specs: list[FileSpec], transfer: Callable[[FileSpec, PartFile], None] | None = None,
            staged: Callable[[FileSpec, Callable[[int], None]], Path] | None = None,
            use_staged: Callable[[FileSpec], bool] = lambda spec: True) -> list[FetchedFile]:
        """Every spec verified under its final name; `staged` (when given) serves the specs `use_staged` picks."""
        finals = {s.path: safe_dest(self.root, s.path) for s in specs}  # refuse unsafe paths before any byte moves
        self._check_space(specs, finals)
        results: dict[str, FetchedFile] = {}
        errors: list[BaseException] = []

        def one(spec: FileSpec) -> None:
            if self.cancel.is_set():
                return
            try:
                if staged is not None and use_staged(spec):
                    got = self._one_staged(spec, finals[spec.path], staged)
                else:
                    got = self._one(spec, finals[spec.path], transfer)
                if got is not None:
                    results[spec.path] = got
            except RemoteMissing as exc:
                if spec.optional:
                    with self._lock:
                        self.warnings.append(f"optional file {spec.path} not available (HTTP {exc.status}); skipped")
                else:
                    errors.append(exc)
                    self.cancel.set()
            except Cancelled:
                pass
            except BaseException as exc:  # noqa: BLE001 - collected, re-raised on the main thread
                errors.append(exc)
                self.cancel.set()

        try:
            if self.workers == 1 or len(specs) <= 1:
                for s in specs:
                    one(s)
            else:
                with ThreadPoolExecutor(max_workers=min(self.workers, len(specs)), thread_name_prefix="llamakit-fetch") as pool:
                    for f in [pool.submit(one, s) for s in specs]:
                        f.result()
        except BaseException:
            self.cancel.set()  # Ctrl-C: workers stop at their next write and keep their parts
            raise
        finally:
            self.state.save()
        if errors:
            first = errors[0]
            if isinstance(first, RemoteMissing):
                from llamakit.errors import NetworkError

                raise NetworkError(f"the server has no {first.ref} (HTTP {first.status})", fix="check the source; nothing was written under that name")
            raise first
        return [results[s.path] for s in specs if s.path in results]

    def _check_space(self, specs: list[FileSpec], finals: dict[str, Path]) -> None:
        need = sum(s.size or 0 for s in specs if not finals[s.path].exists())
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            return
        if need > free:
            raise DiskFullError(self.root, OSError(28, f"need {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free"))

    def _present(self, spec: FileSpec, final: Path) -> FetchedFile | None:
        """A final file that is already right (a rerun, or another fetch got there first)."""
        if not final.is_file() or (spec.size is not None and final.stat().st_size != spec.size):
            return None
        want = spec.expected()
        rec = self.state.data.get(spec.path, {})
        if rec.get("sha256") and self.state.matches(spec.path, final, want):
            return FetchedFile(spec.path, rec["size"], rec["sha256"], rec.get("md5"), rec.get("git"), status="present")
        if not want:
            return None  # nothing to check a stray file against: fetch it again
        algos = needed_algos(sha256=True, md5=bool(spec.md5), git=bool(spec.git_oid))
        n, got = hash_file(final, algos)
        if any(got.get(k) != v for k, v in want.items()):
            return None
        self.state.record(spec.path, final, got)
        return FetchedFile(spec.path, n, got["sha256"], got.get("md5"), got.get("git"), status="present")

    def _one(self, spec: FileSpec, final: Path, transfer) -> FetchedFile | None:
        found = self._present(spec, final)
        if found is not None:
            return found
        algos = needed_algos(sha256=True, md5=bool(spec.md5), git=bool(spec.git_oid))
        identity = {"size": spec.size, **spec.expected(), **spec.identity}
        task = self.progress.add(spec.path, spec.size)
        cancel = self.cancel

        def on_bytes(n: int) -> None:
            if cancel.is_set():
                raise Cancelled()
            self.progress.advance(task, n)

        attempt = 0
        try:
            while True:
                part = PartFile(self.root, spec.path, identity=identity, size=spec.size, algos=algos,
                                chunk=self.cfg.chunk, fsync=self.cfg.fsync, on_bytes=on_bytes)
                part.on_total = lambda total: self.progress.set_total(task, total)
                try:
                    start = part.open()
                    self.progress.reset(task, start)
                    transfer(spec, part)
                    part.checkpoint()
                    got = part.digests()
                    size = part.size
                except BaseException:
                    part.close()  # keep what arrived: the next attempt or run resumes from it
                    raise
                bad = self._mismatch(spec, size, got)
                if bad is None:
                    part.commit(final)
                    self.state.record(spec.path, final, got)
                    return FetchedFile(spec.path, size, got["sha256"], got.get("md5"), got.get("git"),
                                       status="resumed" if start else "downloaded", resumed_from=start,
                                       transferred=size - start)
                part.discard()  # wrong bytes never get a final name, and are not resumed from
                attempt += 1
                if attempt > self.cfg.corrupt_retries:
                    raise VerificationError([bad], root=self.root)
                with self._lock:
                    self.warnings.append(f"{spec.path}: {bad.kind} after download; fetched again")
        finally:
            self.progress.done(task)

    def _one_staged(self, spec: FileSpec, final: Path, staged) -> FetchedFile:
        """A client that writes whole files: hash what it wrote, and only then give it the final name."""
        found = self._present(spec, final)
        if found is not None:
            return found
        algos = needed_algos(sha256=True, md5=bool(spec.md5), git=bool(spec.git_oid))
        task = self.progress.add(spec.path, spec.size)

        def on_bytes(n: int) -> None:
            if self.cancel.is_set():
                raise Cancelled()
            self.progress.advance(task, n)

        try:
            for attempt in range(self.cfg.corrupt_retries + 1):
                self.progress.reset(task, 0)
                path = Path(staged(spec, on_bytes))
                if self.cancel.is_set():
                    raise Cancelled()
                size, got = hash_file(path, algos)
                bad = self._mismatch(spec, size, got)
                if bad is None:
                    if self.cfg.fsync:
                        with open(path, "rb") as f:
                            os.fsync(f.fileno())
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, final)
                    fsync_dir(final.parent)
                    self.state.record(spec.path, final, got)
                    return FetchedFile(spec.path, size, got["sha256"], got.get("md5"), got.get("git"), transferred=size)
                path.unlink(missing_ok=True)  # wrong bytes never get a final name, and are not served again
                if attempt < self.cfg.corrupt_retries:
                    with self._lock:
                        self.warnings.append(f"{spec.path}: {bad.kind} after download; fetched again")
            raise VerificationError([bad], root=self.root)
        finally:
            self.progress.done(task)

    @staticmethod
    def _mismatch(spec: FileSpec, size: int, got: dict[str, str]) -> Mismatch | None:
        if spec.size is not None and size != spec.size:
            return Mismatch(spec.path, "truncated" if size < spec.size else "altered", str(spec.size), str(size))
        for key, want in spec.expected().items():
            if got.get(key) != want:
                return Mismatch(spec.path, "md5" if key == "md5" else "altered", want, got.get(key))
        return None


@dataclass
class Ctx:
    """What a source needs: the release, where to put it, and how to run."""

    release: object  # catalog.Release
    fmt: str
    out: Path
    revision: str | None
    workers: int
    config: FetchConfig
    progress: object
    location: str | None = None  # meta-url: the presigned URL; mirror: the dir or base URL
    token: str | None = None  # --token for the hub; never logged or stored
    select: Callable[[list[FileSpec]], list[FileSpec]] = lambda specs: specs  # --include/--exclude
    dry_run: bool = False  # plan only: `run` records the specs and transfers nothing
    planned: list[FileSpec] = field(default_factory=list)

    def run(self, specs: list[FileSpec], transfer=None, **staged) -> tuple[list[FetchedFile], list[str]]:
        """`staged`: Engine.run's `staged` and `use_staged`, for a client that writes whole files."""
        specs = self.select(specs)
        if self.dry_run:
            self.planned.extend(specs)
            return [], []
        eng = Engine(self.out, config=self.config, progress=self.progress, workers=self.workers)
        return eng.run(specs, transfer, **staged), eng.warnings


@dataclass
class Outcome:
    files: list[FetchedFile]
    source: dict  # JSON-able, never a credential
    revision: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    planned: list[FileSpec] = field(default_factory=list)  # --dry-run: what would be fetched
