"""Resumable HTTP GET into a PartFile (Meta presigned URLs, http mirrors).

The hub never goes through here: it goes through huggingface_hub. Rules:
a Range request answered 200 restarts the file (never appended twice); a 206
must start exactly where the part ends and agree on the total size; 5xx, 429,
timeouts and cut connections are retried with exponential backoff, counting only
attempts that brought no new byte; 403/401 are access problems and 404 is a
missing file, both raised to the caller at once.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Callable
from urllib.parse import urlsplit

from llamakit import __version__
from llamakit.errors import AccessError, NetworkError
from llamakit.fetch._engine import Cancelled, FetchConfig, RemoteMissing
from llamakit.fetch._part import PartFile

_BUF = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_TRANSIENT = (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException, OSError)


def redact(url: str) -> str:
    """Scheme, host and path only: a presigned URL's query string is a credential."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}{p.path}"


class TooLarge(Exception):
    """get_bytes() met a file bigger than it will hold in memory."""


class _Retry(Exception):
    def __init__(self, why: str, wait: float | None = None):
        super().__init__(why)
        self.wait = wait


def _retry_after(headers) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (TypeError, ValueError):
        return None


def get_bytes(url: str, *, config: FetchConfig, label: str, on_denied: Callable[[int], Exception],
              max_bytes: int = 16 << 20, with_etag: bool = False):
    """A small file fully in memory, with the same retry rules (checklists, mirror locks).
    With `with_etag`, returns (bytes, ETag without quotes or None)."""
    attempt = 0
    while True:
        try:
            req = urllib.request.Request(url, headers={"User-Agent": f"llamakit/{__version__}", "Accept-Encoding": "identity"})
            with urllib.request.urlopen(req, timeout=config.timeout or 30.0) as resp:
                length = resp.headers.get("Content-Length")
                data = resp.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise TooLarge(label)
                if length is not None and len(data) != int(length):
                    raise _Retry(f"short read ({len(data)} of {length} bytes)")
                if with_etag:
                    return data, (resp.headers.get("ETag") or "").strip().removeprefix("W/").strip('"') or None
                return data
        except (urllib.error.HTTPError, _Retry, *_TRANSIENT) as exc:
            why, wait = _why_retry(exc, label, on_denied, url)
        attempt += 1
        if attempt > config.retries:
            raise NetworkError(f"{label}: giving up after {attempt} attempts ({why})", fix="check the connection and rerun")
        _sleep(config, attempt, wait)


def _why_retry(exc: BaseException, label: str, on_denied, url: str = "") -> tuple[str, float | None]:
    """(reason, server-requested wait) for a failure worth another attempt; anything else is raised as our typed error."""
    if isinstance(exc, urllib.error.HTTPError):  # before the transient URLError family it belongs to
        err = _classify(exc, label, on_denied)
        if not isinstance(err, _Retry):
            raise err from None
        return str(err), err.wait
    if isinstance(exc, _Retry):
        return str(exc), exc.wait
    unreachable = _unreachable(exc, urlsplit(url).netloc)
    if unreachable:
        raise NetworkError(f"{label}: {unreachable}", fix="check the URL's host and port (and that the server is up)") from None
    return f"{type(exc).__name__}: {exc}", None


def _unreachable(exc: BaseException, host: str) -> str | None:
    """A host that does not resolve, or that refuses the connection: nothing is listening there, and
    retrying for minutes will not start it. Retries are for resets, timeouts and 5xx."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    host = host or "the server"
    if isinstance(reason, socket.gaierror) and reason.errno != socket.EAI_AGAIN:  # EAI_AGAIN: the DNS server hiccuped
        return f"host {host} does not resolve ({reason.strerror or reason})"
    if isinstance(reason, ConnectionRefusedError):
        return f"connection refused by {host} (nothing listens there)"
    return None


def _classify(exc: urllib.error.HTTPError, label: str, on_denied) -> Exception:
    code = exc.code
    if code in (401, 403):
        return on_denied(code)
    if code == 404 or code == 410:
        return RemoteMissing(label, code)
    if code in (408, 425, 429) or code >= 500:
        return _Retry(f"HTTP {code}", _retry_after(exc.headers))
    return NetworkError(f"{label}: HTTP {code} from the server", fix="check the URL")


def _sleep(config: FetchConfig, attempt: int, wait: float | None) -> None:
    base = wait if wait is not None else config.backoff * (2 ** (attempt - 1))
    delay = min(config.max_backoff, base) * (0.5 + random.random() / 2 if wait is None else 1.0)
    time.sleep(delay)


def download(url: str, part: PartFile, *, config: FetchConfig, label: str,
             on_denied: Callable[[int], Exception] | None = None) -> None:
    """Fill `part` with the whole resource at `url`, resuming from `part.size`."""
    on_denied = on_denied or (lambda code: AccessError(f"{label}: access denied (HTTP {code})", fix="check the URL and your access"))
    expected = part.expected_size
    attempt = 0
    while expected is None or part.size < expected:
        before = part.size
        try:
            _one_request(url, part, expected, config, label)
            expected = part.expected_size
            if expected is not None and part.size == expected:
                return
            raise _Retry(f"connection closed at byte {part.size} of {expected}")
        except Cancelled:
            raise
        except (urllib.error.HTTPError, _Retry, *_TRANSIENT) as exc:
            why, wait = _why_retry(exc, label, on_denied, url)
        expected = part.expected_size
        attempt = 0 if part.size > before else attempt + 1
        if attempt > config.retries:
            raise NetworkError(f"{label}: giving up after {attempt} attempts without progress ({why})",
                               fix="rerun `llamakit fetch`: the download resumes where it stopped")
        if attempt:
            _sleep(config, attempt, wait)


def _one_request(url, part: PartFile, expected, config, label) -> None:
    offset = part.size
    headers = {"User-Agent": f"llamakit/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=config.timeout or 30.0)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            m = re.fullmatch(r"bytes \*/(\d+)", (exc.headers.get("Content-Range") or "").strip())
            if m and int(m.group(1)) == offset and expected in (None, offset):
                part.expected_size = offset  # the part already holds the whole file (a run stopped before checking it)
                return
            # Our prefix is longer than what the server has (or the file changed): start over.
            part.truncate(0)
            raise _Retry("range not satisfiable; restarting the file") from None
        raise
    with resp:
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch((resp.headers.get("Content-Range") or "").strip())
            if not m or int(m.group(1)) != offset:
                part.truncate(0)
                raise _Retry("server answered a different range; restarting the file")
            total = int(m.group(3)) if m.group(3) != "*" else None
        elif resp.status == 200:
            if offset:
                part.truncate(0)  # the server ignored Range: rewrite from byte 0, never append
            total = length
        else:
            raise _Retry(f"unexpected HTTP {resp.status}")
        if total is not None:
            if expected is not None and total != expected:
                raise NetworkError(f"{label}: the server's file is {total} bytes, expected {expected}",
                                   fix="the release changed or the URL is for another file; check the lock")
            if part.expected_size is None:
                part.expected_size = total
        while True:
            # read1: hand over whatever arrived, so bytes received before a stall are written, not lost
            b = resp.read1(_BUF)
            if not b:
                break
            part.write(b)
            if part.expected_size is not None and part.size > part.expected_size:
                part.truncate(0)
                raise _Retry("server sent more bytes than the file has; restarting the file")
        if total is None and length is None:
            # No size anywhere (chunked): a clean end of stream is the end of the file.
            part.expected_size = part.size
