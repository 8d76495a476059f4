"""Meta's presigned-URL downloads, done the way download.sh does them, but safely.

The URL from Meta's email holds one `*`; each file's path replaces it
(`llama-2-7b/consolidated.00.pth`, `tokenizer.model`, ...). The URL expires
(24 h): a 403 means expired or wrong, and says where to get a new one. Files
land flattened in DEST (the model folder prefix dropped) so the directory is
the same one the hub's `original/` folder gives, and one `<model>.meta.json`
lock fits both. `checklist.chk` files are fetched first, twice, and must agree
and parse as `md5  path` lines; every file they list is then checked by md5
(and by sha256 when a lock exists) before it gets its final name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import posixpath
import time
from urllib.parse import parse_qs, quote, urlsplit

from llamakit.errors import AccessError, ManifestError, NetworkError, UsageError
from llamakit.fetch._engine import Ctx, FetchedFile, FileSpec, Outcome, RemoteMissing
from llamakit.fetch._files import atomic_write_bytes, safe_dest, safe_relpath
from llamakit.fetch._hashing import MultiHash
from llamakit.fetch._http import TooLarge, download, get_bytes
from llamakit.fetch.checklist import is_checklist, parse_checklist

_MD5 = re.compile(r"[0-9a-fA-F]{32}")
DOWNLOAD_PAGE = "https://www.llama.com/llama-downloads/"
EXPIRED = f"this presigned URL has expired or is wrong; request a new one at {DOWNLOAD_PAGE}"


def expired_error(code: int | None = None) -> AccessError:
    what = f" (HTTP {code})" if code else ""
    return AccessError(f"access denied{what}: {EXPIRED}")


def check_url(url: str) -> None:
    """Shape and (when the policy says so) expiry, before any request."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError("the presigned URL must be an http(s) URL", fix=f"copy it whole from Meta's email ({DOWNLOAD_PAGE})")
    if parts.path.count("*") != 1:
        raise UsageError("the presigned URL must contain exactly one '*' in its path",
                         fix="copy the whole URL from Meta's email; do not replace the '*'")
    expires = policy_expiry(url)
    if expires is not None and expires < time.time():
        raise expired_error()


def policy_expiry(url: str) -> float | None:
    """The CloudFront policy's DateLessThan (or a canned `Expires=`), if the URL carries one."""
    q = parse_qs(urlsplit(url).query)
    try:
        if "Expires" in q:
            return float(q["Expires"][0])
        if "Policy" in q:
            raw = q["Policy"][0].replace("-", "+").replace("_", "=").replace("~", "/")
            policy = json.loads(base64.b64decode(raw + "=" * (-len(raw) % 4)))
            return float(policy["Statement"][0]["Condition"]["DateLessThan"]["AWS:EpochTime"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return None


def file_url(url: str, path: str) -> str:
    parts = urlsplit(url)
    path_q = quote(path, safe="/")
    return parts._replace(path=parts.path.replace("*", path_q, 1)).geturl()


def dest_path(remote: str) -> str:
    """`llama-2-7b/params.json` -> `params.json`: one flat directory, as the hub's original/ folder."""
    rel = safe_relpath(remote, source="the catalog's meta_url file list")
    return rel.split("/", 1)[1] if "/" in rel else rel


def _fetch_small(ctx: Ctx, url: str, remote: str, lock_entry, *, optional: bool = False) -> bytes:
    """Two reads that agree (or one that matches the lock). For checklists, which are the reference, and for
    small files nothing publishes a checksum for (LICENSE): corrupted bytes must not slip through unchecked."""
    prev = None
    denied = (lambda code: RemoteMissing(remote, code)) if optional else expired_error
    for _ in range(2 * (ctx.config.corrupt_retries + 1)):
        try:
            data, etag = get_bytes(file_url(url, remote), config=ctx.config, label=remote, on_denied=denied, with_etag=True)
        except RemoteMissing as exc:
            if optional:
                raise
            raise NetworkError(f"the server has no {remote} (HTTP {exc.status})",
                               fix="check the presigned URL: it must be the one Meta sent for this model") from None
        if lock_entry is not None and lock_entry.sha256:
            if _sha256(data) == lock_entry.sha256:
                return data
            continue
        if etag and _MD5.fullmatch(etag):
            # S3/CloudFront's ETag of a single-part object is its md5: a reference that does not travel in the body.
            if hashlib.md5(data, usedforsecurity=False).hexdigest() == etag.lower():
                return data
            continue
        if prev is not None and data == prev:
            return data
        prev = data
    raise NetworkError(f"{remote}: two downloads never agreed (or never matched the lock)",
                       fix="the connection is corrupting data; try again later")


def _sha256(data: bytes) -> str:
    mh = MultiHash(("sha256",))
    mh.update(data)
    return mh.hexdigests()["sha256"]


def fetch(ctx: Ctx) -> Outcome:
    from llamakit.fetch.lockfile import find_lock

    rel = ctx.release
    url = ctx.location
    if not url:
        raise UsageError(f"fetching {rel.name} from Meta needs its presigned URL",
                         fix=f"pass --meta-url 'URL' (or set LLAMAKIT_META_URL); request one at {DOWNLOAD_PAGE}")
    check_url(url)
    src = rel.sources.meta_url
    if src is None:
        raise UsageError(f"{rel.name} is not distributed through Meta's presigned URLs", fix="use --source hf")
    lock = find_lock(rel.name, "meta")
    by_lock = lock.by_path() if lock is not None else {}

    remote_of: dict[str, str] = {}
    optional: set[str] = set()
    for remote in list(src.files) + list(src.optional):
        dest = dest_path(remote)
        if dest in remote_of and remote_of[dest] != remote:
            raise ManifestError(f"'{remote}' and '{remote_of[dest]}' would both be saved as '{dest}'")
        remote_of[dest] = remote
        if remote in src.optional:
            optional.add(dest)

    # 1. the checklists: reference first, data after
    md5: dict[str, str] = {}
    done: list[FetchedFile] = []
    for dest, remote in list(remote_of.items()):
        if not is_checklist(dest) or dest in optional:
            continue
        data = _fetch_small(ctx, url, remote, by_lock.get(dest))
        listed = parse_checklist(data, name=remote, base=posixpath.dirname(dest))
        for path, digest in listed.items():
            md5[path] = digest
            if path not in remote_of:  # listed by Meta but missing from the catalog: it belongs to the release
                remote_of[path] = posixpath.join(posixpath.dirname(remote), posixpath.relpath(path, posixpath.dirname(dest) or "."))
        done.append(_place(ctx, dest, data))

    # 2. everything else, required files before optional ones
    def spec(dest: str) -> FileSpec:
        e = by_lock.get(dest)
        if e is not None and e.md5 and md5.get(dest) and e.md5 != md5[dest]:
            raise ManifestError(f"the lock and Meta's checklist disagree on {dest}'s md5",
                                path=f"manifests/locks/{rel.name}.meta.json", fix="regenerate the lock")
        return FileSpec(dest, e.size if e else None, sha256=e.sha256 if e else None, md5=md5.get(dest) or (e.md5 if e else None),
                        optional=dest in optional, ref=remote_of[dest])

    def transfer(s: FileSpec, part) -> None:
        denied = (lambda code: RemoteMissing(s.ref, code)) if s.optional else expired_error
        download(file_url(url, s.ref), part, config=ctx.config, label=s.ref, on_denied=denied)

    rest = [spec(d) for d in remote_of if not any(f.path == d for f in done)]
    warnings: list[str] = []
    unvouched: list[str] = []
    for s in [s for s in rest if not (s.md5 or s.sha256)]:
        # Nothing vouches for these bytes (LICENSE, USE_POLICY.md): the ETag md5 or two agreeing reads must.
        try:
            data = _fetch_small(ctx, url, s.ref, None, optional=s.optional)
        except RemoteMissing as exc:
            if not s.optional:
                raise NetworkError(f"the server has no {s.ref} (HTTP {exc.status})") from None
            warnings.append(f"optional file {s.path} not available (HTTP {exc.status}); skipped")
        except TooLarge:
            unvouched.append(s.path)  # too big to read twice: size is all there is to check
        else:
            done.append(_place(ctx, s.path, data))
    rest = [s for s in rest if s.md5 or s.sha256 or s.path in unvouched]
    files, w1 = ctx.run([s for s in rest if not s.optional], transfer)
    opt_files, w2 = ctx.run([s for s in rest if s.optional], transfer)
    files = done + files + opt_files
    warnings += w1 + w2
    notes = [f"no checksum published for {', '.join(unvouched)}: only its size was checked"] if unvouched else []
    host = urlsplit(url).netloc
    return Outcome(files, {"kind": "meta-url", "host": host}, None, warnings, notes)


def _place(ctx: Ctx, dest: str, data: bytes) -> FetchedFile:
    """A small, already-checked file under its final name (atomically)."""
    final = safe_dest(ctx.out, dest)
    if ctx.dry_run:  # read to learn what the release holds; nothing written
        ctx.planned.append(FileSpec(dest, len(data), ref=dest))
        return FetchedFile(dest, len(data), "", status="planned")
    same = final.is_file() and final.read_bytes() == data
    if not same:
        atomic_write_bytes(final, data)
    mh = MultiHash(("sha256",))
    mh.update(data)
    return FetchedFile(dest, len(data), mh.hexdigests()["sha256"], status="present" if same else "downloaded",
                       transferred=len(data))
