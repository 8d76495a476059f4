"""A local directory or an http(s) mirror with the hub's layout.

What to fetch and what each file must hash to comes from, in order: the
committed lock (`manifests/locks/<model>.<format>.json`), the mirror's own
`.llamakit/lock.json` (a directory llamakit fetched, served or copied as is),
or, for a local directory only, its listing (then sizes, and md5s from any
checklist.chk, are all there is to check, and the result says so).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from llamakit.errors import AccessError, ManifestError, UsageError
from llamakit.fetch._engine import Ctx, FileSpec, Outcome, RemoteMissing
from llamakit.fetch._files import IGNORED_DIRS, safe_dest, safe_relpath
from llamakit.fetch._http import download, get_bytes, redact

_COPY = 4 << 20


def _is_url(loc: str) -> bool:
    return loc.startswith(("http://", "https://"))


def _remote_lock(ctx: Ctx, loc: str):
    from llamakit.fetch.lockfile import parse_lock, read_lock

    if _is_url(loc):
        url = loc.rstrip("/") + "/.llamakit/lock.json"
        try:
            data = get_bytes(url, config=ctx.config, label=redact(url),
                             on_denied=lambda code: AccessError(f"{redact(url)}: access denied (HTTP {code})"))
        except RemoteMissing:
            return None
        import json

        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise ManifestError(f"malformed lock: {exc}", path=redact(url)) from None
        return parse_lock(obj, path=redact(url))
    own = Path(loc) / ".llamakit" / "lock.json"
    return read_lock(own) if own.exists() else None


def _listing(root: Path) -> list[FileSpec]:
    from llamakit.fetch.checklist import is_checklist, read_checklist

    specs, md5 = [], {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS]
        for name in filenames:
            rel = Path(dirpath, name).relative_to(root).as_posix()
            safe_dest(root, rel, source=str(root))  # a symlink out of the mirror is refused too
            specs.append(FileSpec(rel, os.stat(Path(dirpath, name)).st_size, ref=rel))
            if is_checklist(rel):
                md5.update(read_checklist(root / rel, root=root))
    for s in specs:
        s.md5 = md5.get(s.path)
    return specs


def fetch(ctx: Ctx) -> Outcome:
    from llamakit.fetch.lockfile import find_lock

    loc = ctx.location
    url = _is_url(loc)
    if not url and not Path(loc).is_dir():
        raise UsageError(f"--source {loc}: not a directory or an http(s) URL")
    lock = find_lock(ctx.release.name, ctx.fmt)
    where = "committed lock"
    if lock is None:
        lock = _remote_lock(ctx, loc)
        where = "mirror's lock"
        if lock is not None and lock.name != ctx.release.name:
            raise ManifestError(f"the mirror holds {lock.name}, not {ctx.release.name}", path=loc)
        if lock is not None and lock.format != ctx.fmt:
            raise UsageError(f"the mirror holds format '{lock.format}', not '{ctx.fmt}'", fix=f"pass --format {lock.format}")
    notes = []
    if lock is not None:
        specs = [FileSpec(safe_relpath(e.path, source=where), e.size, e.sha256, e.md5, e.git_oid, ref=e.path)
                 for e in lock.files]
        revision = lock.revision
    elif url:
        raise ManifestError(f"no lock for {ctx.release.name} ({ctx.fmt}) and none at the mirror",
                            path=redact(loc), fix=f"commit one with `llamakit lock {ctx.release.name}`, or serve a fetched directory")
    else:
        specs, revision = _listing(Path(loc)), None
        notes.append("no lock for this mirror: sizes (and checklist md5s) checked, sha256s recorded")

    def transfer(spec: FileSpec, part) -> None:
        if url:
            src = loc.rstrip("/") + "/" + quote(spec.ref, safe="/")
            download(src, part, config=ctx.config, label=spec.ref)
            return
        src = safe_dest(Path(loc), spec.ref, source=loc)
        if not src.is_file():
            raise RemoteMissing(spec.ref, 404)
        with open(src, "rb") as f:
            f.seek(part.size)
            while b := f.read(_COPY):
                part.write(b)
        if part.expected_size is None:
            part.expected_size = part.size

    files, warnings = ctx.run(specs, transfer)
    source = {"kind": "mirror", "location": redact(loc) if url else str(Path(loc).resolve())}
    return Outcome(files, source, revision, warnings, notes)

