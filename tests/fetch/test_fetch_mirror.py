"""A local directory or http(s) mirror with the hub's layout."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from _release import hub_files, meta_files, tree_digest
from _servers import HubRepo

from llamakit.errors import UnsafePathError, VerificationError
from llamakit.fetch import fetch_release
from llamakit.fetch.meta_url import dest_path
from llamakit.verify import verify_dir


@pytest.fixture
def fetched(hub, manifests, fast_env, monkeypatch, tmp_path):
    """A directory llamakit fetched from the hub: the thing people copy or serve as a mirror."""
    monkeypatch.setenv("HF_ENDPOINT", hub.base)
    files = hub_files(1)
    hub.add(HubRepo("test-org/tiny-llama", files))
    fetch_release("tiny-llama", source="hf", out=tmp_path / "src", show_progress=False)
    return tmp_path / "src"


def test_local_directory_mirror_uses_its_lock(fetched, tmp_path):
    res = fetch_release("tiny-llama", source=str(fetched), out=tmp_path / "o", show_progress=False)
    assert tree_digest(tmp_path / "o") == tree_digest(fetched)
    assert res.source["kind"] == "mirror" and res.revision is not None
    assert verify_dir(tmp_path / "o", show_progress=False).ok


def test_http_mirror_without_range_support(fetched, tmp_path):
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(fetched))  # no Range: answers 200 always
    handler.log_message = lambda *a: None
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/"
        fetch_release("tiny-llama", source=url, out=tmp_path / "o", show_progress=False)
    finally:
        srv.shutdown()
        srv.server_close()
    assert tree_digest(tmp_path / "o") == tree_digest(fetched)


def test_plain_directory_is_checked_against_its_checklists(manifests, fast_env, tmp_path):
    src = tmp_path / "plain"
    files = meta_files(3)
    for k, v in files.items():
        p = src / dest_path(k)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(v)
    res = fetch_release("tiny-llama", source=str(src), fmt="meta", out=tmp_path / "o", show_progress=False)
    assert tree_digest(tmp_path / "o") == {dest_path(k): hashlib.sha256(v).hexdigest() for k, v in files.items()}
    assert any("no lock" in n for n in res.notes)
    assert next(f for f in res.files if f.path == "consolidated.00.pth").md5  # checked against checklist.chk
    # a mirror whose bytes disagree with its own checklist is not copied
    with open(src / "consolidated.01.pth", "r+b") as f:
        f.write(b"\0")
    with pytest.raises(VerificationError, match=r"consolidated.01.pth \(md5\)"):
        fetch_release("tiny-llama", source=str(src), fmt="meta", out=tmp_path / "o2", show_progress=False)
    assert "consolidated.01.pth" not in tree_digest(tmp_path / "o2")


def test_symlink_out_of_the_mirror_is_refused(manifests, fast_env, tmp_path):
    src = tmp_path / "plain"
    src.mkdir()
    (tmp_path / "secret.txt").write_text("not yours")
    (src / "config.json").write_text("{}")
    os.symlink(tmp_path / "secret.txt", src / "notes.txt")
    with pytest.raises(UnsafePathError):
        fetch_release("tiny-llama", source=str(src), out=tmp_path / "o", show_progress=False)
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
