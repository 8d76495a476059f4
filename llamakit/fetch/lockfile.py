"""The lock file: its schema and I/O, and nothing else (a leaf: every command that reads or
writes a lock imports this, and this imports none of them).

`manifests/locks/<model>.<format>.json` (committed) and `DEST/.llamakit/lock.json`
(what a fetch placed there) share one schema: a release pinned to a revision and to
every file's size and digests (sha256; Meta's md5 where a checklist lists it; a small
non-LFS hub file's git blob id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llamakit.errors import ManifestError, UnsafePathError
from llamakit.fetch._files import atomic_write_json, safe_relpath

LOCK_VERSION = 1


class LockEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    size: int = Field(ge=0)
    sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    md5: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    git_oid: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{40}$")

    @model_validator(mode="after")
    def _has_digest(self) -> "LockEntry":
        if not (self.sha256 or self.md5 or self.git_oid):
            raise ValueError("needs at least one of sha256, md5, git_oid")
        return self


class Lock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lock_version: int = LOCK_VERSION
    name: str
    format: str
    source: dict[str, Any]
    revision: Optional[str] = None
    files: list[LockEntry] = Field(min_length=1)

    @field_validator("source")
    @classmethod
    def _kind(cls, v: dict) -> dict:
        if not isinstance(v.get("kind"), str):
            raise ValueError("source needs a 'kind'")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "Lock":
        if self.lock_version != LOCK_VERSION:
            raise ValueError(f"lock_version {self.lock_version} is not supported (expected {LOCK_VERSION})")
        seen = set()
        for e in self.files:
            if e.path in seen:
                raise ValueError(f"path '{e.path}' is listed twice")
            seen.add(e.path)
        return self

    def by_path(self) -> dict[str, LockEntry]:
        return {e.path: e for e in self.files}

    def to_json(self) -> dict:
        d = self.model_dump(exclude_none=True)
        d["files"] = [e.model_dump(exclude_none=True) for e in self.files]
        if self.revision is None:
            d["revision"] = None
        return d


def parse_lock(data: Any, *, path: str | Path) -> Lock:
    if not isinstance(data, dict):
        raise ManifestError("a lock must be a JSON object", path=path, fix="regenerate it with `llamakit lock`")
    try:
        lock = Lock.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(x) for x in e["loc"])
        raise ManifestError(f"invalid lock field '{where}': {e['msg']}", path=path, fix="regenerate it with `llamakit lock`") from exc
    for e in lock.files:  # a lock is a listing like any other: its paths must stay inside the destination
        if safe_relpath(e.path, source=str(path)) != e.path:
            raise UnsafePathError(e.path, source=str(path))
    return lock


def read_lock(path: str | Path) -> Lock:
    """A lock file, validated (schema, digests, paths that stay inside the destination)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError("lock file not found", path=path, fix="pass an existing lock file or a model name") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"malformed lock: {exc}", path=path, fix="regenerate it with `llamakit lock`") from exc
    return parse_lock(data, path=path)


def lock_path(name: str, fmt: str) -> Path:
    from llamakit.catalog import manifests_dir

    return manifests_dir() / "locks" / f"{name}.{fmt}.json"


def locks_for(name: str) -> list[Path]:
    from llamakit.catalog import manifests_dir

    return sorted((manifests_dir() / "locks").glob(f"{name}.*.json"))


def find_lock(name: str, fmt: str) -> Lock | None:
    p = lock_path(name, fmt)
    return read_lock(p) if p.exists() else None


def save_lock(lock: Lock, path: Path) -> Path:
    atomic_write_json(Path(path), lock.to_json())
    return Path(path)
