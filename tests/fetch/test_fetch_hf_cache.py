"""The Hugging Face cache as a first-class place: fetched into, read offline, verified by content address.

The end-to-end tests run the built wheel from a fresh virtualenv (tests/wheel_venv.py)
against the loopback hub, with the shipped catalog: `meta-llama/Llama-3.2-1B` is
served by the loopback hub with tiny files, under its real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _release import hub_files
from _servers import HubRepo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: wheel_venv
from wheel_venv import run_in  # noqa: E402

REPO = "meta-llama/Llama-3.2-1B"
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
          "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 500000.0}


def repo_files(seed: int) -> dict[str, bytes]:
    files = hub_files(seed)
    files["config.json"] = json.dumps({**CONFIG, "torch_dtype": "float32", "seed": seed}).encode()
    files["model.safetensors.index.json"] = json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}).encode()
    return files


HF_FORMAT = {"config.json", "generation_config.json", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json"}


def snapshot_of(hf_home: Path, commit: str) -> Path:
    return hf_home / "hub" / "models--meta-llama--Llama-3.2-1B" / "snapshots" / commit


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def flip_one_byte(path: Path, at: int = 100) -> None:
    blob = Path(os.path.realpath(path))
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[at] ^= 1
    blob.write_bytes(bytes(data))


@pytest.fixture
def env(isolated_hf, fast_env):
    # The venv's commands get HF_HOME etc. from this environment (isolated per test by tests/conftest.py).
    return {"HF_HOME": str(isolated_hf), "HF_HUB_CACHE": str(isolated_hf / "hub")}


def test_fetch_fills_the_cache_that_transformers_reads_offline_and_verify_checks_it(wheel_venv, hub, env, isolated_hf):
    bin_dir, _ = wheel_venv
    files = repo_files(1)
    repo = hub.add(HubRepo(REPO, files))
    e = {**env, "HF_ENDPOINT": hub.base, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    p = run_in(bin_dir, "fetch", REPO, "--source", "hf", env=e)
    assert p.returncode == 0, p.stderr
    snap = snapshot_of(isolated_hf, repo.commit)
    assert p.stdout == f"{snap}\n"  # the path alone on stdout, like `hf download`
    assert tree(snap) == {k: hashlib.sha256(files[k]).hexdigest() for k in HF_FORMAT}
    assert (snap.parents[1] / "refs" / "main").read_text() == repo.commit
    assert all(os.path.islink(snap / k) for k in HF_FORMAT)  # huggingface_hub's own layout: links into blobs/

    # transformers finds it through the hub conventions alone, offline, with the hub still up and untouched
    n = len(hub.log)
    code = ("from transformers import AutoConfig; c = AutoConfig.from_pretrained('meta-llama/Llama-3.2-1B'); "
            "print(c.hidden_size, c.num_key_value_heads)")
    t = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert t.returncode == 0, t.stderr
    assert t.stdout.split() == ["64", "2"] and len(hub.log) == n

    # a second fetch verifies what is cached and downloads nothing again
    p = run_in(bin_dir, "fetch", REPO, "--source", "hf", "--json", env=e)
    assert p.returncode == 0, p.stderr
    assert {f["status"] for f in json.loads(p.stdout)["files"]} == {"present"}
    assert [r for r in hub.log[n:] if not r.path.startswith("api/")] == []

    # the snapshot verifies offline with no lock (content-addressed), by path or by model name
    for arg in (str(snap), REPO, "llama-3.2-1b"):
        p = run_in(bin_dir, "verify", arg, "--json", env={**env, "HF_HUB_OFFLINE": "1"})
        assert p.returncode == 0, p.stderr
        rep = json.loads(p.stdout)
        assert rep["lock"] is None and rep["hf_cache"] == {"repo": REPO, "revision": repo.commit}
        assert {f["path"] for f in rep["files"]} == HF_FORMAT and rep["ok"]
    flip_one_byte(snap / "model-00002-of-00002.safetensors")
    p = run_in(bin_dir, "verify", str(snap), env=env)
    assert p.returncode == 1 and "model-00002-of-00002.safetensors (altered)" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_offline_fetch_needs_no_server_and_names_what_an_incomplete_cache_lacks(wheel_venv, env, isolated_hf):
    bin_dir, _ = wheel_venv
    from _servers import HubServer

    files = repo_files(2)
    with HubServer([HubRepo(REPO, files)]) as hub:
        commit = hub.repos[REPO].commit
        p = run_in(bin_dir, "fetch", REPO, "--source", "hf", "-q", env={**env, "HF_ENDPOINT": hub.base})
        assert p.returncode == 0, p.stderr
        port_url = hub.base
    # the server is gone: only the cache can answer
    off = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": port_url}
    p = run_in(bin_dir, "fetch", REPO, "--source", "hf", "--json", env=off)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["out"] == str(snapshot_of(isolated_hf, commit)) and {f["path"] for f in got["files"]} == HF_FORMAT
    # an incomplete cache: a shard the index names is missing
    os.unlink(snapshot_of(isolated_hf, commit) / "model-00001-of-00002.safetensors")
    p = run_in(bin_dir, "fetch", REPO, "--source", "hf", env=off)
    assert p.returncode == 3 and "model-00001-of-00002.safetensors" in p.stderr and "HF_HUB_OFFLINE" in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) == 1
    # and nothing cached at all
    p = run_in(bin_dir, "fetch", "llama-3.2-3b", "--source", "hf", env=off)
    assert p.returncode == 3 and "not in the Hugging Face cache" in p.stderr


def test_dry_run_writes_nothing(wheel_venv, hub, env, isolated_hf, tmp_path):
    bin_dir, _ = wheel_venv
    files = repo_files(3)
    hub.add(HubRepo(REPO, files))
    e = {**env, "HF_ENDPOINT": hub.base}
    before = sorted(p.relative_to(isolated_hf) for p in isolated_hf.rglob("*"))
    p = run_in(bin_dir, "fetch", REPO, "--source", "hf", "--dry-run", "--json", env=e)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert {f["path"]: f["size"] for f in plan["files"]} == {k: len(files[k]) for k in HF_FORMAT}
    assert plan["bytes"] == sum(len(files[k]) for k in HF_FORMAT) and plan["free_bytes"] > 0 and plan["fits"]
    p = run_in(bin_dir, "fetch", REPO, "--source", "hf", "--dry-run", "--out", str(tmp_path / "o"), "--exclude", "*.json", env=e)
    assert p.returncode == 0, p.stderr
    assert "model-00001-of-00002.safetensors" in p.stdout and "config.json" not in p.stdout and "nothing written" in p.stdout
    assert sorted(p.relative_to(isolated_hf) for p in isolated_hf.rglob("*")) == before
    assert not (tmp_path / "o").exists()
    assert [r for r in hub.log if not r.path.startswith("api/")] == []  # metadata only


def test_include_lock_and_unsafe_links_in_a_snapshot(hub, env, isolated_hf, fast_env, monkeypatch, tmp_path):
    from llamakit.errors import UnsafePathError
    from llamakit.fetch import fetch_release
    from llamakit.fetch.lock import read_lock, write_lock
    from llamakit.verify import verify_dir

    monkeypatch.setenv("HF_ENDPOINT", hub.base)
    files = repo_files(4)
    repo = hub.add(HubRepo(REPO, files))
    res = fetch_release("llama-3.2-1b", source="hf", include=["*.json"], show_progress=False)
    assert {f.path for f in res.files} == {k for k in HF_FORMAT if k.endswith(".json")}
    res = fetch_release("llama-3.2-1b", source="hf", show_progress=False)
    assert {f.status for f in res.files if f.path.endswith(".json")} == {"present"}
    # a lock from the snapshot records the revision its path names
    path = write_lock("llama-3.2-1b", source=str(res.out), out=tmp_path / "l.json")
    lock = read_lock(path)
    assert lock.revision == repo.commit and lock.source == {"kind": "hf", "repo": REPO} and lock.format == "hf"
    assert {e.path for e in lock.files} == HF_FORMAT
    # a link resolving outside this repo's blobs/ is refused, even into another cache repo's blobs
    other = isolated_hf / "hub" / "models--x--y" / "blobs"
    other.mkdir(parents=True)
    (other / ("0" * 64)).write_bytes(b"x")
    for target in ("/etc/hostname", str(other / ("0" * 64))):
        link = res.out / "evil.json"
        link.unlink(missing_ok=True)
        os.symlink(target, link)
        with pytest.raises(UnsafePathError):
            verify_dir(res.out, show_progress=False)
