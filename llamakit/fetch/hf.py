"""The Hugging Face hub, through huggingface_hub only (no hand-rolled hub HTTP).

Metadata: one `model_info(files_metadata=True)` gives the commit, every file's
size and, for LFS files, the sha256 (non-LFS files: the git blob id). That is
the lock, so locking downloads nothing. Data, with `--out`, per file:
  * Xet-backed files (when `hf_xet` is installed): huggingface_hub's public
    `hf_hub_download(local_dir=DEST/.llamakit/hub)`, so hf_xet does the transfer;
    the engine then hashes the file against the pin and renames it into place.
  * other files: llamakit's engine, huggingface_hub's `http_get` streaming into a
    part file that hashes as it writes and resumes across runs from its verified
    prefix. Kept because it measurably wins there (BENCHMARKS.md, fetch): the public
    API of huggingface_hub 2.x downloads into a per-process temp file that it
    deletes on failure, so a killed or failed transfer starts again from byte 0,
    and verifying afterwards reads every byte a second time.
`LLAMAKIT_HF_TRANSFER=hub` (or `engine`) sends every file one way.
Without `--out` the files go into the Hugging Face cache through the public
download API (`llamakit.fetch.hf_download`). Token, HF_ENDPOINT and proxies are
huggingface_hub's own business, read its usual way.
"""

from __future__ import annotations

import os
import random
import re
import time
from fnmatch import fnmatch

from llamakit import __version__
from llamakit.errors import AccessError, ManifestError, NetworkError, UsageError
from llamakit.fetch._engine import Ctx, FetchConfig, FileSpec, Outcome, RemoteMissing
from llamakit.fetch._files import safe_relpath

_SHA = re.compile(r"^[0-9a-f]{40}$")
# Weights in other frameworks' formats: never part of the "hf" (safetensors) format.
_OTHER_FRAMEWORKS = ("*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.ot", "*.tflite", "tf_model*", "flax_model*",
                     "*.gguf", "*.mlmodel", "*.mlpackage/*", "onnx/*", "coreml/*")
_TORCH_PICKLES = ("*.bin", "*.pth", "*.pt", "pytorch_model*.bin.index.json")


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _access_error(repo: str, status: int | None) -> AccessError:
    code = f" (HTTP {status})" if status else ""
    return AccessError(f"{repo} is gated or private and this account has no access{code}",
                       fix=f"accept the licence at https://huggingface.co/{repo} while logged in, then run `hf auth login` (or set HF_TOKEN)")


def _status(exc) -> int | None:
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None)


def _classify(exc: BaseException, repo: str, what: str) -> BaseException | None:
    """A llamakit error to raise now, or None when the failure is worth a retry."""
    # huggingface_hub re-exports its HTTP client's base error: no direct dependency on that client.
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    if isinstance(exc, LocalEntryNotFoundError):  # hf_hub_download's "could not reach the hub" (not a 404)
        return None
    if isinstance(exc, (GatedRepoError, RepositoryNotFoundError)):
        return _access_error(repo, _status(exc))
    if isinstance(exc, RevisionNotFoundError):
        return UsageError(f"{repo} has no revision '{what}'", fix="pass an existing branch, tag or commit to --revision")
    if isinstance(exc, EntryNotFoundError):
        return RemoteMissing(what, 404)
    if isinstance(exc, HfHubHTTPError):
        status = _status(exc)
        if status in (401, 403):
            return _access_error(repo, status)
        if status is None or status in (408, 429) or status >= 500:
            return None
        return NetworkError(f"{repo}: {what}: HTTP {status} from the hub")
    if isinstance(exc, HTTPError):  # cut connections, timeouts
        return None
    if isinstance(exc, OSError) and exc.errno is None:  # http_get's "consistency check failed": a short read
        return None
    return exc  # a local OSError (permissions, I/O) is not the network's fault: no retry


def _with_retries(fn, cfg: FetchConfig, repo: str, what: str, progress_of=lambda: 0, retries: int | None = None):
    retries = cfg.retries if retries is None else retries
    attempt = 0
    while True:
        before = progress_of()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            err = _classify(exc, repo, what)
            if err is not None:
                if err is exc:
                    raise
                raise err from None
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        attempt = 0 if progress_of() > before else attempt + 1
        if attempt > retries:
            raise NetworkError(f"{repo}: {what}: giving up after {attempt} attempts ({why}) from {endpoint()}",
                               fix="check the connection (or HF_ENDPOINT) and rerun `llamakit fetch`: finished files are kept and partial ones resume")
        time.sleep(min(cfg.max_backoff, cfg.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2))


def _layout(release, fmt: str) -> tuple[str, str | None]:
    hf = release.sources.hf
    if hf is None:
        raise UsageError(f"{release.name} is not on the hub", fix="use --source pypi or --source meta-url")
    if fmt == "meta":
        if hf.original_repo:
            return hf.original_repo, hf.original_dir or ""
        if not hf.original_dir:
            raise UsageError(f"{hf.repo} has no Meta-format (original/) files", fix="use --format hf")
        return hf.repo, hf.original_dir
    return hf.repo, None


def _select(names: list[str], fmt: str, release) -> dict[str, str]:
    """{repo path: destination path} for the files that make up `fmt`."""
    hf = release.sources.hf
    out: dict[str, str] = {}
    if fmt == "meta":
        _, sub = _layout(release, fmt)
        prefix = f"{sub.strip('/')}/" if sub else ""
        for n in names:
            if n.startswith(prefix) and n != ".gitattributes":
                out[n] = n[len(prefix):]
        return out
    if fmt == "gguf":
        return {n: n for n in names if n.endswith(".gguf")}
    skip = list(_OTHER_FRAMEWORKS) + [".gitattributes"]
    if hf.original_dir and not hf.original_repo:
        skip.append(f"{hf.original_dir.strip('/')}/*")
    if any(n.endswith(".safetensors") for n in names):
        skip += _TORCH_PICKLES
    return {n: n for n in names if not any(fnmatch(n, pat) for pat in skip)}


def _pinned_revision(release, fmt: str, revision: str | None):
    from llamakit.fetch.lockfile import find_lock

    lock = find_lock(release.name, fmt)
    if lock is not None and lock.source.get("kind") != "hf":
        lock = None
    if revision:
        return revision, lock if lock is not None and lock.revision == revision else None
    if lock is not None and lock.revision:
        return lock.revision, lock
    return (release.sources.hf.revision or "main"), None


def plan(release, fmt: str, revision: str | None, cfg: FetchConfig, *, token: str | None = None):
    """(repo, commit, specs, notes) for `release` in `fmt` at `revision` (hub metadata only)."""
    from huggingface_hub import HfApi

    repo, sub = _layout(release, fmt)
    rev, lock = _pinned_revision(release, fmt, revision)
    # token None: huggingface_hub's own lookup (HF_TOKEN, then the `hf auth login` file)
    api = HfApi(endpoint=endpoint(), token=token, library_name="llamakit", library_version=__version__)
    # Few retries for the one metadata call: when the hub is unreachable, say so in seconds, not minutes.
    info = _with_retries(lambda: api.model_info(repo, revision=rev, files_metadata=True), cfg, repo, rev,
                         retries=min(cfg.retries, 3))
    commit = info.sha
    if not commit or not _SHA.match(commit):
        raise NetworkError(f"{repo}: the hub did not report a commit for '{rev}'")
    if _SHA.match(rev) and commit != rev:
        raise NetworkError(f"{repo}: asked for commit {rev}, the hub answered {commit}")
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    chosen = _select(sorted(siblings), fmt, release)
    if not chosen:
        raise UsageError(f"{repo}@{commit[:12]} has no files for format '{fmt}'")
    by_lock = lock.by_path() if lock is not None else {}
    specs = []
    for repo_path, dest in chosen.items():
        s = siblings[repo_path]
        dest = safe_relpath(dest, source=f"the hub listing of {repo}")
        safe_relpath(repo_path, source=f"the hub listing of {repo}")
        sha = s.lfs.sha256 if s.lfs is not None else None
        oid = s.blob_id if s.lfs is None else None
        size = s.lfs.size if s.lfs is not None else s.size
        if size is None or not (sha or oid):
            raise NetworkError(f"{repo}: the hub listing has no size/hash for {repo_path}", fix="is HF_ENDPOINT a real hub?")
        e = by_lock.get(dest)
        if e is not None and ((e.sha256 and sha and e.sha256 != sha) or (e.git_oid and oid and e.git_oid != oid) or e.size != size):
            raise ManifestError(f"the hub and the lock disagree on {dest} at {commit[:12]}",
                                path=f"manifests/locks/{release.name}.{fmt}.json", fix="regenerate the lock with `llamakit lock`")
        specs.append(FileSpec(dest, size, sha256=sha, git_oid=oid, md5=e.md5 if e else None, ref=repo_path,
                              identity={"repo": repo}))
    notes = []
    if rev != commit:
        notes.append(f"revision {rev} resolved to {commit}" + ("" if lock else "; pin it with --revision or `llamakit lock`"))
    return repo, commit, specs, notes, sub


def _xet_backed(repo: str, commit: str, cfg: FetchConfig, token: str | None) -> set[str]:
    """Repo paths that hf_xet would transfer: one tree listing, asked only when hf_xet can be used."""
    from importlib.util import find_spec

    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_DISABLE_XET or find_spec("hf_xet") is None:
        return set()
    api = HfApi(endpoint=endpoint(), token=token, library_name="llamakit", library_version=__version__)
    tree = _with_retries(lambda: list(api.list_repo_tree(repo, revision=commit, recursive=True)), cfg, repo, commit,
                         retries=min(cfg.retries, 3))
    return {e.path for e in tree if getattr(e, "xet_hash", None)}


def _bar_class(on_bytes):
    """A tqdm stand-in that hands huggingface_hub's byte counts to llamakit's own progress display."""
    from huggingface_hub.utils.tqdm import silent_tqdm

    class Bar(silent_tqdm):
        def __init__(self, *args, **kwargs):
            self.n, self.total = 0, kwargs.get("total")
            # hf_xet reports reconstructed bytes and network bytes on two bars: count the file's bytes once
            self._counts = "downloading bytes" not in str(kwargs.get("desc") or "")

        def update(self, n=1) -> None:
            if n and self._counts:
                self.n += n
                on_bytes(int(n))

        def __getattr__(self, name):  # set_postfix_str, refresh, close, ...: nothing to draw
            return lambda *a, **k: None

    return Bar


def fetch(ctx: Ctx) -> Outcome:
    from huggingface_hub import constants, hf_hub_download, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers
    from huggingface_hub.utils.tqdm import silent_tqdm

    from llamakit.fetch._files import state_dir

    cfg = ctx.config
    if cfg.timeout:
        constants.HF_HUB_DOWNLOAD_TIMEOUT = cfg.timeout  # the knob HF_HUB_DOWNLOAD_TIMEOUT sets at import
    repo, commit, specs, notes, sub = plan(ctx.release, ctx.fmt, ctx.revision, cfg, token=ctx.token)
    base = endpoint()
    headers = build_hf_headers(token=ctx.token, library_name="llamakit", library_version=__version__)

    def transfer(spec: FileSpec, part) -> None:  # own engine: resumable part file, hashed as it is written
        url = hf_hub_url(repo, spec.ref, revision=commit, endpoint=base)
        _with_retries(lambda: http_get(url, part, resume_size=part.size, headers=headers, expected_size=spec.size,
                                       displayed_filename=spec.ref, tqdm_class=silent_tqdm),
                      cfg, repo, spec.ref, progress_of=lambda: part.size)

    def staged(spec: FileSpec, on_bytes):  # the public API, into a staging dir the engine verifies and renames from
        return _with_retries(
            lambda: hf_hub_download(repo, spec.ref, revision=commit, local_dir=state_dir(ctx.out) / "hub", endpoint=base,
                                    token=ctx.token, etag_timeout=cfg.timeout or constants.HF_HUB_ETAG_TIMEOUT,
                                    library_name="llamakit", library_version=__version__, tqdm_class=_bar_class(on_bytes)),
            cfg, repo, spec.ref)

    mode = cfg.hf_transfer
    if ctx.dry_run or mode == "engine":
        via_hub = set()
    elif mode == "hub":
        via_hub = {s.ref for s in specs}
    else:
        via_hub = _xet_backed(repo, commit, cfg, ctx.token)
    files, warnings = ctx.run(specs, transfer, staged=staged, use_staged=lambda spec: spec.ref in via_hub)
    return Outcome(files, {"kind": "hf", "repo": repo, **({"subfolder": sub} if sub else {})}, commit, warnings, notes)


def make_lock(release, *, fmt: str, revision: str | None, token: str | None = None):
    from llamakit.fetch.lockfile import Lock, LockEntry

    repo, commit, specs, _, sub = plan(release, fmt, revision, FetchConfig.from_env(), token=token)
    entries = [LockEntry(path=s.path, size=s.size, sha256=s.sha256, git_oid=s.git_oid, md5=s.md5) for s in specs]
    return Lock(name=release.name, format=fmt, source={"kind": "hf", "repo": repo, **({"subfolder": sub} if sub else {})},
                revision=commit, files=entries)
