"""`llamakit info --local` and `convert` on a Hugging Face cache snapshot: the layout huggingface_hub
writes (snapshot links into content-addressed blobs/), built here from a real tiny HF checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_llama_model


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_snapshot(src: Path, cache: Path, repo: str) -> Path:
    """`src`'s files as huggingface_hub caches them: LFS-sized files under their sha256, small ones under their git oid."""
    rdir = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snap = rdir / "snapshots" / commit
    (rdir / "blobs").mkdir(parents=True)
    for p in sorted(src.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        name = hashlib.sha256(data).hexdigest() if len(data) > 1024 else _git_oid(data)
        (rdir / "blobs" / name).write_bytes(data)
        link = snap / p.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(rdir / "blobs" / name, link.parent), link)
    (rdir / "refs").mkdir()
    (rdir / "refs" / "main").write_text(commit)
    return snap


def llamakit(*args, env):
    return subprocess.run([sys.executable, "-m", "llamakit", *args], capture_output=True, text=True, timeout=200,
                          env={**os.environ, **env})


def test_info_local_and_convert_read_a_cache_snapshot_by_repo_id(tmp_path, isolated_hf):
    model = make_llama_model("gqa", seed=3)
    model.save_pretrained(tmp_path / "hf")
    snap = cache_snapshot(tmp_path / "hf", isolated_hf / "hub", "acme/tiny-gqa")
    env = {"HF_HUB_CACHE": str(isolated_hf / "hub")}
    p = llamakit("info", "--local", "acme/tiny-gqa", "--json", env=env)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["path"] == str(snap) and info["format"] == "hf"
    assert info["hf_cache"] == {"repo": "acme/tiny-gqa", "revision": snap.name}
    assert info["architecture"]["dim"] == 64 and info["architecture"]["n_kv_heads"] == 2
    p = llamakit("verify", "acme/tiny-gqa", env=env)
    assert p.returncode == 0, p.stderr
    p = llamakit("convert", "acme/tiny-gqa", str(tmp_path / "meta"), "--to", "meta", "--no-check", "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "meta" / "params.json").is_file() and (tmp_path / "meta" / "consolidated.00.pth").is_file()
    p = llamakit("info", "--local", "acme/nope", env=env)
    assert p.returncode == 2 and "neither a directory nor cached" in p.stderr
