"""The Hugging Face cache as a place llamakit reads, verifies and fills.

Layout (huggingface_hub's, shared with transformers and `hf`):

    $HF_HUB_CACHE/models--ORG--NAME/
        blobs/<sha256 of an LFS file | git blob sha1 of a small file>
        refs/<branch or tag>              -> a commit hash
        snapshots/<commit>/<repo path>    -> symlink to ../../blobs/<id>

The cache is content-addressed: a blob's own name is its digest, so every byte of
a snapshot can be checked offline with no lock. Symlinks that resolve into the same
repo's `blobs/` are part of that design and are followed; anything that resolves
elsewhere is refused like any other escaping symlink. No huggingface_hub import
here: reading the layout needs none, and `verify`/`lock` stay light.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from llamakit.errors import UsageError

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TRUE = {"1", "on", "yes", "true"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def offline() -> bool:
    """HF_HUB_OFFLINE (read now, not at import: huggingface_hub freezes it when first imported)."""
    return _env_flag("HF_HUB_OFFLINE")


def progress_disabled() -> bool:
    return _env_flag("HF_HUB_DISABLE_PROGRESS_BARS")


def cache_root() -> Path:
    """$HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub (huggingface_hub's order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def repo_dir(repo: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / ("models--" + repo.replace("/", "--"))


@dataclass(frozen=True)
class Snapshot:
    """A snapshot directory of the cache: where it is and what it claims to be."""

    path: Path  # .../snapshots/<commit> (or a folder inside it)
    repo_dir: Path  # .../models--ORG--NAME
    repo: str  # ORG/NAME
    commit: str
    subfolder: str = ""  # the part of the snapshot `path` points into ("" = its root)

    @property
    def blobs(self) -> Path:
        return self.repo_dir / "blobs"

    @property
    def root(self) -> Path:
        return self.repo_dir / "snapshots" / self.commit

    def expected_from_blob(self, rel: str) -> dict[str, str]:
        """{"sha256": …} or {"git": …} from the name of the blob `rel` resolves to ({} if it is no blob)."""
        real = os.path.realpath(self.path / rel)
        if os.path.dirname(real) != os.path.realpath(self.blobs):
            return {}
        name = os.path.basename(real)
        if _SHA256.match(name):
            return {"sha256": name}
        if _COMMIT.match(name):
            return {"git": name}
        return {}

    def allows(self, real: str) -> bool:
        """Whether a symlink's resolved target is one of this repo's blobs."""
        blobs = os.path.realpath(self.blobs)
        return real.startswith(blobs.rstrip(os.sep) + os.sep)


def parse_snapshot(path: str | Path) -> Snapshot | None:
    """The snapshot `path` is (or lies in), judged by its place in the cache layout; else None."""
    p = Path(os.path.abspath(path))
    parts = p.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--") and _COMMIT.match(parts[i + 1]):
            name = parts[i - 1][len("models--"):]
            if "--" not in name:
                return None
            org, _, rest = name.partition("--")
            return Snapshot(path=p, repo_dir=Path(*parts[:i]), repo=f"{org}/{rest}", commit=parts[i + 1],
                            subfolder="/".join(parts[i + 2:]))
    return None


def read_ref(repo: str, rev: str, root: Path | None = None) -> str | None:
    """The commit a branch/tag points at in the cache (or `rev` itself when it is a commit)."""
    if _COMMIT.match(rev):
        return rev
    try:
        commit = (repo_dir(repo, root) / "refs" / rev).read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.match(commit) else None


def write_ref(repo: str, rev: str, commit: str, root: Path | None = None) -> None:
    """Point refs/<rev> at `commit`, as huggingface_hub does after a download by branch name, so
    `from_pretrained(repo)` finds the snapshot offline. A commit hash is no ref: nothing to write."""
    from llamakit import atomic

    if _COMMIT.match(rev) or ".." in rev.split("/") or rev.startswith("/"):
        return
    atomic.write_bytes(repo_dir(repo, root) / "refs" / rev, commit.encode(), fsync=False)


def cached_snapshot(repo: str, rev: str = "main", root: Path | None = None) -> Snapshot | None:
    commit = read_ref(repo, rev, root)
    if commit is None:
        return None
    path = repo_dir(repo, root) / "snapshots" / commit
    return parse_snapshot(path) if path.is_dir() else None


def resolve_local(arg: str | Path, *, revision: str | None = None) -> Path:
    """A directory argument as given, or a model name / hub repo id resolved to its cached snapshot."""
    p = Path(arg)
    if p.exists():
        return p
    text = str(arg)
    repo = None
    if not text.startswith((".", "/", "~")):
        from llamakit import catalog
        from llamakit.errors import UnknownModelError

        try:
            rel = catalog.get_release(text)
            repo = rel.sources.hf.repo if rel.sources.hf is not None else None
        except UnknownModelError:
            repo = text if text.count("/") == 1 else None
    if repo is None:
        return p  # the caller reports "not a directory"
    snap = cached_snapshot(repo, revision or "main")
    if snap is None:
        raise UsageError(f"'{text}' is neither a directory nor cached: no snapshot of {repo}"
                         f"{'@' + revision if revision else ''} in {cache_root()}",
                         fix=f"fetch it first (`llamakit fetch {text} --source hf`) or pass a directory")
    return snap.path
