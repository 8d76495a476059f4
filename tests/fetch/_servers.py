"""Loopback servers for fetch tests and benchmarks, with seeded fault injection.

(`HubServer` lives in _hubserver.py and is re-exported here.) `HubServer` speaks the parts of the Hugging Face hub protocol huggingface_hub
really calls (model info with siblings + LFS sha256, the recursive tree,
`resolve` with X-Repo-Commit / ETag / X-Linked-Etag / X-Linked-Size / Range,
gated repos answering 401/403 + X-Error-Code: GatedRepo). `MetaServer` serves
Meta-style presigned URLs: one `*` in the path, a CloudFront-like signed policy
with an expiry, 403 AccessDenied when expired or wrong.

Faults are decided per data request by a `Faults` plan: cut the connection at
an offset, flip a byte, answer 500/429/403, or stall mid-body. Every request is
logged (file, range start, status, bytes sent, fault) for the tests' accounting.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
_SEND = 16 << 10


@dataclass
class Fault:
    kind: str  # cut | flip | stall | 500 | 429 | 403
    at: int = 0  # byte offset within the response body (cut, flip, stall)


@dataclass
class Faults:
    """A seeded plan: each data request is faulty with probability `p` until `budget` faults were spent."""

    seed: int = 0
    p: float = 0.5
    budget: int = 3
    kinds: tuple[str, ...] = ("cut", "flip", "stall", "500", "429")
    stall_s: float = 1.0
    deny_exempt: tuple[str, ...] = ()  # paths a 403 would mean "missing" for (optional files): get a 500 instead
    script: dict[str, list[Fault]] = field(default_factory=dict)  # exact faults for requests to a path (suffix), in order
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        self._rng = random.Random(self.seed)

    def decide(self, body_len: int, path: str = "") -> Fault | None:
        with self._lock:
            for suffix, queue in self.script.items():
                if path.endswith(suffix) and queue:
                    f = queue.pop(0)
                    return None if f is None else Fault(f.kind, min(f.at, max(0, body_len - 1)))
            if self.budget <= 0 or self._rng.random() >= self.p:
                return None
            self.budget -= 1
            kind = self._rng.choice(self.kinds)
            at = self._rng.randrange(max(1, body_len))
            if kind in ("cut", "stall", "flip") and body_len == 0:
                kind = "500"
            if kind == "403" and path.endswith(self.deny_exempt or ("\0",)):
                kind = "500"
            return Fault(kind, at)


@dataclass
class Req:
    path: str
    method: str
    start: int
    status: int
    sent: int
    fault: str | None
    auth: bool


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: "_Loopback"

    def log_message(self, *args):  # keep test output clean
        pass

    def _json(self, obj, status=200, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status, body=b"", headers=None, *, log_path=None, start=0):
        # Logged before the answer goes out: a client that has its answer must find the request in
        # the log (a test reads the log the moment the client returns).
        if log_path:
            self.owner.log_req(Req(log_path, self.command, start, status, 0, None, bool(self.headers.get("Authorization"))))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _serve(self, log_path: str, data: bytes, headers: dict, faults: Faults | None, deny_status: int = 403):
        """GET/HEAD of `data` honouring Range, with an optional fault."""
        size = len(data)
        start, end = 0, size - 1
        rng = None if self.owner.ignore_range else self.headers.get("Range")
        status = 200
        if rng:
            m = _RANGE.match(rng.strip())
            if not m:
                return self._error(400)
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size and size > 0:
                return self._error(416, headers={"Content-Range": f"bytes */{size}"}, log_path=log_path, start=start)
            status = 206
        body_len = max(0, end - start + 1)
        fault = faults.decide(body_len, log_path) if (faults is not None and self.command == "GET") else None
        auth = bool(self.headers.get("Authorization"))
        if fault is not None and fault.kind in ("500", "429", "403"):
            code = int(fault.kind)
            hdrs = {"Retry-After": "0"} if code == 429 else {}
            body = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>" if code == 403 else b"try again"
            self.owner.log_req(Req(log_path, "GET", start, code, 0, fault.kind, auth))  # before the answer, as in _error
            self._error(code, body, hdrs)
            self.close_connection = True
            return
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(body_len))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        body = data[start:end + 1]
        if fault is not None and fault.kind == "flip":
            b = bytearray(body)
            b[fault.at] ^= 0x5A
            body = bytes(b)
        stop = fault.at if fault is not None and fault.kind in ("cut", "stall") else body_len
        sent = 0
        # Logged when the request starts, so the log is in request order; `sent` is filled in as bytes go out.
        entry = Req(log_path, "GET", start, status, 0, fault.kind if fault else None, auth)
        self.owner.log_req(entry)
        try:
            self.owner.throttle()
            while sent < stop:
                n = min(self.owner.send_size, stop - sent)
                self.wfile.write(body[sent:sent + n])
                sent += n
                entry.sent = sent
                self.owner.throttle()
            if fault is not None and fault.kind == "stall":
                time.sleep(faults.stall_s)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            entry.sent = sent
        if stop < body_len:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Loopback:
    handler: type[_Base]

    def __init__(self):
        self.log: list[Req] = []
        self._log_lock = threading.Lock()
        self.delay_per_send = 0.0  # seconds per 16 KiB send: makes a download slow enough to interrupt
        self.ignore_range = False  # answer 200 with the whole file to a Range request, as some CDNs do
        self.send_size = _SEND  # bytes per socket write (faults land between writes)
        handler = type("Handler", (self.handler,), {"owner": self})
        self._srv = _Server(("127.0.0.1", 0), handler)
        self.port = self._srv.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def throttle(self):
        if self.delay_per_send:
            time.sleep(self.delay_per_send)

    def log_req(self, r: Req) -> None:
        with self._log_lock:
            self.log.append(r)

    def requests_for(self, path_part: str) -> list[Req]:
        with self._log_lock:
            return [r for r in self.log if path_part in r.path]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._srv.shutdown()
        self._srv.server_close()


# --- Meta presigned URLs ---------------------------------------------------------------


def _cf_b64(b: bytes) -> str:
    return base64.b64encode(b).decode().replace("+", "-").replace("=", "_").replace("/", "~")


@dataclass
class MetaRelease:
    files: dict[str, bytes]
    faults: Faults | None = None
    missing_status: int = 403  # CloudFront over a private bucket answers 403 for a missing key


class _MetaHandler(_Base):
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        srv: MetaServer = self.owner
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        parts = unquote(url.path).lstrip("/").split("/", 1)
        if len(parts) != 2 or parts[0] not in srv.releases:
            return self._error(403, b"<Error><Code>AccessDenied</Code></Error>")
        rel = srv.releases[parts[0]]
        if not srv.valid(q):
            return self._error(403, b"<Error><Code>AccessDenied</Code><Message>expired</Message></Error>",
                               log_path=f"{parts[0]}/{parts[1]}")
        data = rel.files.get(parts[1])
        if data is None:
            return self._error(rel.missing_status, b"<Error><Code>AccessDenied</Code></Error>", log_path=f"{parts[0]}/{parts[1]}")
        self._serve(f"{parts[0]}/{parts[1]}", data, {"Content-Type": "binary/octet-stream",
                                                     "ETag": f'"{hashlib.md5(data).hexdigest()}"'}, rel.faults)


class MetaServer(_Loopback):
    handler = _MetaHandler

    def __init__(self):
        self.releases: dict[str, MetaRelease] = {}
        self._key = b"loopback-signing-key"
        super().__init__()

    def add(self, prefix: str, release: MetaRelease) -> MetaRelease:
        self.releases[prefix] = release
        return release

    def url(self, prefix: str, *, expires_in: float = 86400.0, forge: bool = False) -> str:
        """A presigned URL for `prefix` with the '*' Meta's download.sh substitutes."""
        policy = json.dumps({"Statement": [{"Resource": f"{self.base}/{prefix}/*",
                                            "Condition": {"DateLessThan": {"AWS:EpochTime": int(time.time() + expires_in)}}}]})
        pol = _cf_b64(policy.encode())
        sig = hmac.new(self._key, pol.encode(), hashlib.sha256).hexdigest()
        if forge:
            sig = sig[::-1]
        return f"{self.base}/{prefix}/*?Policy={pol}&Signature={sig}&Key-Pair-Id=APKALOOPBACK"

    def valid(self, q: dict) -> bool:
        try:
            pol, sig = q["Policy"][0], q["Signature"][0]
        except (KeyError, IndexError):
            return False
        if not hmac.compare_digest(hmac.new(self._key, pol.encode(), hashlib.sha256).hexdigest(), sig):
            return False
        raw = pol.replace("-", "+").replace("_", "=").replace("~", "/")
        exp = json.loads(base64.b64decode(raw))["Statement"][0]["Condition"]["DateLessThan"]["AWS:EpochTime"]
        return time.time() < exp


def md5_checklist(files: dict[str, bytes]) -> bytes:
    """What `md5sum * > checklist.chk` writes."""
    return "".join(f"{hashlib.md5(d).hexdigest()}  {p}\n" for p, d in sorted(files.items())).encode()


from _hubserver import HubRepo, HubServer, git_oid  # noqa: E402,F401  (one import point for tests)
