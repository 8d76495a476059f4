"""The hub through huggingface_hub against the loopback hub server (HF_ENDPOINT)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from _release import hub_files, tree_digest
from _servers import HubRepo

from llamakit.errors import AccessError, ManifestError, UnsafePathError, UsageError
from llamakit.fetch import fetch_release
from llamakit.fetch.lock import read_lock, write_lock
from llamakit.verify import verify_dir

REPO = "test-org/tiny-llama"
HF_FILES = {"config.json", "generation_config.json", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json"}


@pytest.fixture(params=["engine", "hub"])
def hub_env(request, hub, manifests, fast_env, monkeypatch):
    """Every test runs both ways a hub file travels: llamakit's resumable engine and huggingface_hub's
    public hf_hub_download (what Xet-backed files take); the guarantees must not depend on the route."""
    monkeypatch.setenv("HF_ENDPOINT", hub.base)
    monkeypatch.setenv("LLAMAKIT_HF_TRANSFER", request.param)
    return hub


def resolves(hub):
    return [r for r in hub.log if not r.path.startswith("api/")]


def test_hf_format_is_the_safetensors_side_pinned_and_verified(hub_env, tmp_path):
    files = hub_files(1)
    repo = hub_env.add(HubRepo(REPO, files))
    res = fetch_release("tiny-llama", source="hf", out=tmp_path / "o", show_progress=False)
    assert set(tree_digest(tmp_path / "o")) == HF_FILES  # no original/, no .bin next to safetensors, no .gitattributes
    assert tree_digest(tmp_path / "o") == {k: hashlib.sha256(files[k]).hexdigest() for k in HF_FILES}
    assert res.revision == repo.commit and any(repo.commit in n for n in res.notes)  # resolved and printed
    lock = read_lock(tmp_path / "o/.llamakit/lock.json")
    assert lock.revision == repo.commit and lock.source == {"kind": "hf", "repo": REPO}
    assert verify_dir(tmp_path / "o", show_progress=False).ok


def test_meta_format_is_the_original_folder_flattened(hub_env, tmp_path):
    files = hub_files(2)
    hub_env.add(HubRepo(REPO, files))
    fetch_release("tiny-llama", source="hf", fmt="meta", out=tmp_path / "o", show_progress=False)
    want = {k.split("/", 1)[1]: hashlib.sha256(v).hexdigest() for k, v in files.items() if k.startswith("original/")}
    assert tree_digest(tmp_path / "o") == want
    rep = verify_dir(tmp_path / "o", show_progress=False)  # lock sha256 and Meta's checklist.chk md5, one read each
    assert rep.ok and "md5" in next(f for f in rep.files if f.path == "consolidated.00.pth").checked


def test_lock_from_the_hub_downloads_nothing_and_pins_the_fetch(hub_env, manifests, tmp_path):
    files = hub_files(3)
    repo = hub_env.add(HubRepo(REPO, files))
    path = write_lock("tiny-llama", fmt="hf", source="hf")
    assert path == manifests / "locks" / "tiny-llama.hf.json"
    assert resolves(hub_env) == []  # metadata only
    lock = read_lock(path)
    by = lock.by_path()
    assert lock.revision == repo.commit
    assert by["model-00001-of-00002.safetensors"].sha256 == hashlib.sha256(files["model-00001-of-00002.safetensors"]).hexdigest()
    assert by["config.json"].git_oid and by["config.json"].sha256 is None  # small non-LFS file: its git blob id
    res = fetch_release("tiny-llama", source="hf", out=tmp_path / "o", show_progress=False)
    assert res.revision == repo.commit and not any("resolved" in n for n in res.notes)
    # a lock that disagrees with the hub is refused before any byte moves
    data = json.loads(path.read_text())
    data["files"][2]["size"] += 1
    path.write_text(json.dumps(data))
    n = len(resolves(hub_env))
    with pytest.raises(ManifestError, match="disagree"):
        fetch_release("tiny-llama", source="hf", out=tmp_path / "o2", show_progress=False)
    assert len(resolves(hub_env)) == n


def test_unknown_revision_is_bad_input(hub_env, tmp_path):
    hub_env.add(HubRepo(REPO, hub_files(4)))
    with pytest.raises(UsageError, match="no revision 'nope'"):
        fetch_release("tiny-llama", source="hf", revision="nope", out=tmp_path / "o", show_progress=False)


def test_gated_repo_says_where_to_accept_and_how_to_log_in(hub_env, tmp_path, cli):
    hub_env.add(HubRepo("test-org/tiny-gated", hub_files(5), gated=True, tokens={"hf_accepted"}))
    with pytest.raises(AccessError) as ei:
        fetch_release("tiny-gated", source="hf", out=tmp_path / "o", show_progress=False)
    msg = ei.value.one_line()
    assert "https://huggingface.co/test-org/tiny-gated" in msg and "hf auth login" in msg
    assert tree_digest(tmp_path / "o") == {}
    p = cli("fetch", "tiny-gated", "--source", "hf", "--out", str(tmp_path / "o2"))
    assert p.returncode == 2 and "hf auth login" in p.stderr and "Traceback" not in p.stderr


def test_token_is_used_but_never_shown_or_stored(hub_env, tmp_path, cli, isolated_hf):
    token = "hf_SECRETsecretSECRET0123456789"
    hub_env.add(HubRepo("test-org/tiny-gated", hub_files(6), gated=True, tokens={token}))
    env = {"HF_TOKEN": token, "HF_HUB_DISABLE_IMPLICIT_TOKEN": ""}
    outs = []
    for extra in ([], ["--json"]):
        p = cli("fetch", "tiny-gated", "--source", "hf", "--out", str(tmp_path / "o"), *extra, env=env)
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout + p.stderr)
    p = cli("verify", str(tmp_path / "o"), env=env)
    outs.append(p.stdout + p.stderr)
    p = cli("lock", "tiny-gated", "--source", "hf", env=env)
    assert p.returncode == 0, p.stderr
    outs.append(p.stdout + p.stderr)
    # --token instead of the environment: used, not shown, not stored (the walk below covers the cache too)
    p = cli("fetch", "tiny-gated", "--source", "hf", "--token", token, "--json", env={"HF_HUB_DISABLE_IMPLICIT_TOKEN": ""})
    assert p.returncode == 0, p.stderr
    outs.append(p.stdout + p.stderr)
    p = cli("fetch", "tiny-gated", "--source", "hf", "--out", str(tmp_path / "o4"), env={"HF_HUB_DISABLE_IMPLICIT_TOKEN": ""})
    assert p.returncode == 2  # and without it, no access: the flag is what carried it
    # a wrong token fails without echoing it either
    p = cli("fetch", "tiny-gated", "--source", "hf", "--out", str(tmp_path / "o3"), env={**env, "HF_TOKEN": token + "x"})
    assert p.returncode == 2
    outs.append(p.stdout + p.stderr)
    assert any(r.auth for r in resolves(hub_env))  # the token really went to the hub
    assert not any(token in o for o in outs)
    for root in (tmp_path, isolated_hf):
        for dirpath, _, names in os.walk(root):
            for name in names:
                with open(os.path.join(dirpath, name), "rb") as f:
                    assert token.encode() not in f.read(), os.path.join(dirpath, name)


@pytest.mark.parametrize("bad", ["../escape.safetensors", "/etc/escape.safetensors"])
def test_hub_listing_with_unsafe_paths_is_refused(hub_env, tmp_path, bad):
    files = hub_files(7)
    files[bad] = b"x" * 2048
    hub_env.add(HubRepo(REPO, files))
    with pytest.raises(UnsafePathError):
        fetch_release("tiny-llama", source="hf", out=tmp_path / "o", show_progress=False)
    assert tree_digest(tmp_path / "o") == {} and not list(tmp_path.rglob("escape.safetensors"))


def test_unreachable_hub_exits_3_meaning_retry_later(manifests, fast_env, tmp_path, cli):
    p = cli("fetch", "tiny-llama", "--source", "hf", "--out", str(tmp_path / "o"), env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert p.returncode == 3, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]  # (the cleared progress display leaves a blank line)
    assert len(lines) == 1 and "giving up" in lines[0] and "Traceback" not in p.stderr


def test_lock_json_names_the_file_and_its_pins(hub_env, tmp_path, cli):
    repo = hub_env.add(HubRepo(REPO, hub_files(8)))
    p = cli("lock", "tiny-llama", "--source", "hf", "--out", str(tmp_path / "l.json"), "--json")
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["path"] == str(tmp_path / "l.json") and got["revision"] == repo.commit
    assert {f["path"] for f in got["files"]} == HF_FILES
