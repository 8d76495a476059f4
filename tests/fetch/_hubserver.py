"""The Hugging Face hub side of the loopback servers (see _servers.py)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from _servers import Faults, Req, _Base, _Loopback

def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubRepo:
    repo: str
    files: dict[str, bytes]
    gated: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens that accepted the licence
    lfs_min: int = 1024  # files at least this big (or with weight suffixes) are LFS
    faults: Faults | None = None
    api_faults: Faults | None = None  # on the model-info / tree calls
    commit: str = ""
    xet: set[str] = field(default_factory=set)  # paths the tree listing calls Xet-backed (bytes still served by resolve)

    def __post_init__(self):
        if not self.commit:
            h = hashlib.sha1(self.repo.encode())
            for p in sorted(self.files):
                h.update(p.encode() + hashlib.sha256(self.files[p]).digest())
            self.commit = h.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return len(self.files[path]) >= self.lfs_min or path.endswith((".safetensors", ".pth", ".bin", ".gguf", ".model"))

    def sibling(self, path: str) -> dict:
        data = self.files[path]
        s = {"rfilename": path, "size": len(data), "blobId": git_oid(data)}
        if self.is_lfs(path):
            s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return s

    def tree_entry(self, path: str) -> dict:
        data = self.files[path]
        e = {"type": "file", "path": path, "size": len(data), "oid": git_oid(data)}
        if self.is_lfs(path):
            e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        if path in self.xet:
            e["xetHash"] = hashlib.sha256(b"xet" + data).hexdigest()
        return e


class _HubHandler(_Base):
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        hub: HubServer = self.owner
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path.startswith("/api/models/"):
            return self._api(hub, path[len("/api/models/"):], parse_qs(url.query))
        m = re.match(r"^/(.+?/.+?)/resolve/([^/]+)/(.+)$", path)
        if not m:
            return self._error(404, headers={"X-Error-Code": "RepoNotFound"})
        repo = hub.repos.get(m.group(1))
        if repo is None:
            return self._error(401, b"Repository not found", {"X-Error-Code": "RepoNotFound",
                                                              "X-Error-Message": "Repository not found"})
        if m.group(2) not in ("main", repo.commit):
            return self._error(404, headers={"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
        fpath = m.group(3)
        if fpath not in repo.files:
            return self._error(404, headers={"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
        if repo.gated:
            auth = self.headers.get("Authorization", "")
            token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
            if token is None or token not in repo.tokens:
                status = 401 if token is None else 403
                msg = f"Access to model {repo.repo} is restricted. You must have access to it and be authenticated to access it. Please log in."
                return self._error(status, msg.encode(), {"X-Error-Code": "GatedRepo", "X-Error-Message": msg},
                                   log_path=f"{repo.repo}/{fpath}")
        data = repo.files[fpath]
        sha = hashlib.sha256(data).hexdigest()
        headers = {"X-Repo-Commit": repo.commit, "Content-Type": "application/octet-stream"}
        if repo.is_lfs(fpath):
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_oid(data)}"'
        self._serve(f"{repo.repo}/{fpath}", data, headers, repo.faults)

    def _api(self, hub: "HubServer", rest: str, query: dict):
        m = re.match(r"^(.+?/[^/]+?)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?$", rest)
        if not m or m.group(1) not in hub.repos:
            return self._json({"error": "Repository not found"}, 401, {"X-Error-Code": "RepoNotFound"})
        repo = hub.repos[m.group(1)]
        rev = m.group(3) or "main"
        if rev not in ("main", repo.commit):
            return self._json({"error": f"Invalid rev id: {rev}"}, 404, {"X-Error-Code": "RevisionNotFound"})
        if repo.api_faults is not None:
            f = repo.api_faults.decide(1)
            if f is not None and f.kind in ("500", "429"):
                hub.log_req(Req(f"api/{repo.repo}", "GET", 0, int(f.kind), 0, f.kind, False))
                return self._json({"error": "busy"}, int(f.kind), {"Retry-After": "0"})
        hub.log_req(Req(f"api/{repo.repo}", "GET", 0, 200, 0, None, bool(self.headers.get("Authorization"))))
        if m.group(2) == "tree":
            return self._json([repo.tree_entry(p) for p in sorted(repo.files)])
        info = {"id": repo.repo, "modelId": repo.repo, "sha": repo.commit, "private": False,
                "gated": "manual" if repo.gated else False, "siblings": [repo.sibling(p) for p in sorted(repo.files)]}
        if "blobs" not in query:
            info["siblings"] = [{"rfilename": p} for p in sorted(repo.files)]
        return self._json(info)


class HubServer(_Loopback):
    handler = _HubHandler

    def __init__(self, repos: list[HubRepo] = ()):
        self.repos = {r.repo: r for r in repos}
        super().__init__()

    def add(self, repo: HubRepo) -> HubRepo:
        self.repos[repo.repo] = repo
        return repo


