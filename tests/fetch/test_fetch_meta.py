"""Meta presigned URLs against the loopback server: layout, checklists, expiry, resume, no double append."""

from __future__ import annotations

import hashlib
import json

import pytest
from _release import meta_files, tree_digest
from _servers import Fault, Faults, MetaRelease

from llamakit.errors import AccessError, InputFileError, NetworkError, UnsafePathError, UsageError, VerificationError
from llamakit.fetch import fetch_release
from llamakit.fetch.meta_url import DOWNLOAD_PAGE, dest_path
from llamakit.verify import verify_dir


def truth_of(files: dict[str, bytes]) -> dict[str, str]:
    return {dest_path(k): hashlib.sha256(v).hexdigest() for k, v in files.items()}


def fetch(url, out, **kw):
    return fetch_release("tiny-llama", source="meta-url", meta_url=url, out=out, show_progress=False, **kw)


def shard_gets(server, name="consolidated"):
    return [r for r in server.log if name in r.path and r.method == "GET"]


def test_fetch_places_a_flat_verified_release(manifests, meta_server, fast_env, tmp_path):
    files = meta_files(1)
    meta_server.add("r", MetaRelease(files))
    res = fetch(meta_server.url("r"), tmp_path / "out")
    assert tree_digest(tmp_path / "out") == truth_of(files)
    lock = json.loads((tmp_path / "out/.llamakit/lock.json").read_text())
    by = {e["path"]: e for e in lock["files"]}
    # Meta's md5 list tied to the sha256s
    for name in ("consolidated.00.pth", "consolidated.01.pth", "params.json", "tokenizer.model"):
        assert by[name]["md5"] == hashlib.md5(files[[k for k in files if k.endswith(name)][0]]).hexdigest()
        assert len(by[name]["sha256"]) == 64
    assert lock["source"] == {"kind": "meta-url", "host": meta_server.base.split("//")[1]}
    assert any("USE_POLICY.md" in w for w in res.warnings)  # optional and absent: a warning, not a failure
    rep = verify_dir(tmp_path / "out", show_progress=False)
    assert rep.ok and {"md5", "sha256"} <= set(next(f for f in rep.files if f.path == "consolidated.00.pth").checked)
    assert "Signature" not in json.dumps(res.to_json())  # the presigned URL is a credential


def test_rerun_transfers_no_data(manifests, meta_server, fast_env, tmp_path):
    meta_server.add("r", MetaRelease(meta_files(2)))
    fetch(meta_server.url("r"), tmp_path / "out")
    n = len(shard_gets(meta_server))
    res = fetch(meta_server.url("r"), tmp_path / "out")
    assert len(shard_gets(meta_server)) == n
    assert {f.status for f in res.files if f.path.startswith("consolidated")} == {"present"}


def test_expired_url_fails_before_any_request(manifests, meta_server, tmp_path):
    meta_server.add("r", MetaRelease(meta_files(3)))
    with pytest.raises(AccessError) as ei:
        fetch(meta_server.url("r", expires_in=-60), tmp_path / "out")
    assert "expired or is wrong" in ei.value.one_line() and DOWNLOAD_PAGE in ei.value.one_line()
    assert meta_server.log == []


def test_wrong_signature_is_a_403_with_the_renewal_hint(manifests, meta_server, fast_env, tmp_path):
    meta_server.add("r", MetaRelease(meta_files(4)))
    with pytest.raises(AccessError, match="request a new one at https://www.llama.com/llama-downloads/"):
        fetch(meta_server.url("r", forge=True), tmp_path / "out")
    assert tree_digest(tmp_path / "out") == {}


def test_url_must_hold_one_star(manifests, tmp_path):
    with pytest.raises(UsageError, match=r"\*"):
        fetch("https://download.example.com/llama-2-7b/params.json?Policy=x", tmp_path / "out")


def test_expiry_mid_download_then_rerun_resumes_where_it_stopped(manifests, meta_server, fast_env, tmp_path):
    files = meta_files(5, shard_kb=(300, 301))
    script = {"tiny-llama/consolidated.00.pth": [Fault("cut", 200_000), Fault("403")]}
    meta_server.add("r", MetaRelease(files, faults=Faults(p=0.0, script=script)))
    out = tmp_path / "out"
    with pytest.raises(AccessError, match="expired"):
        fetch(meta_server.url("r"), out, workers=1)
    assert "consolidated.00.pth" not in tree_digest(out)  # the partial shard has no final name
    parts = list((out / ".llamakit/parts").glob("*consolidated.00.pth.part"))
    on_disk = parts[0].stat().st_size
    assert on_disk == 200_000
    mark = len(meta_server.log)
    fetch(meta_server.url("r"), out, workers=1)  # a fresh URL, as the message says
    again = [r for r in meta_server.log[mark:] if r.path.endswith("consolidated.00.pth")]
    assert again[0].start == on_disk and again[0].status == 206  # nothing re-transferred
    assert tree_digest(out) == truth_of(files)


def test_server_ignoring_range_never_appends_twice(manifests, meta_server, fast_env, tmp_path):
    files = meta_files(6)
    script = {"tiny-llama/consolidated.01.pth": [Fault("cut", 70_000)]}
    meta_server.add("r", MetaRelease(files, faults=Faults(p=0.0, script=script)))
    meta_server.ignore_range = True  # like wget --continue against a CDN that answers 200: the old way made 2x files
    fetch(meta_server.url("r"), tmp_path / "out")
    got = (tmp_path / "out/consolidated.01.pth").stat().st_size
    assert got == len(files["tiny-llama/consolidated.01.pth"])
    assert tree_digest(tmp_path / "out") == truth_of(files)


def test_html_checklist_is_an_error_not_a_pass(manifests, meta_server, fast_env, tmp_path):
    files = meta_files(7)
    files["tiny-llama/checklist.chk"] = b"<!DOCTYPE html>\n<html><body>Access Denied</body></html>\n"
    meta_server.add("r", MetaRelease(files))
    with pytest.raises(InputFileError) as ei:
        fetch(meta_server.url("r"), tmp_path / "out")
    assert "checklist.chk" in ei.value.one_line() and "HTML" in ei.value.one_line()
    assert not any(k.startswith("consolidated") for k in tree_digest(tmp_path / "out"))


def test_checklist_escaping_the_destination_is_refused(manifests, meta_server, fast_env, tmp_path):
    files = meta_files(8)
    files["tiny-llama/checklist.chk"] += b"d41d8cd98f00b204e9800998ecf8427e  ../../etc/evil\n"
    meta_server.add("r", MetaRelease(files))
    with pytest.raises(UnsafePathError):
        fetch(meta_server.url("r"), tmp_path / "out")
    assert not (tmp_path / "etc").exists()


def test_missing_required_file_is_an_error(manifests, meta_server, fast_env, tmp_path):
    files = meta_files(9)
    del files["tiny-llama/params.json"]
    files["tiny-llama/checklist.chk"] = b"".join(
        ln + b"\n" for ln in files["tiny-llama/checklist.chk"].splitlines() if not ln.endswith(b"params.json"))
    meta_server.add("r", MetaRelease(files, missing_status=404))
    with pytest.raises(NetworkError, match="params.json"):
        fetch(meta_server.url("r"), tmp_path / "out")
    assert "params.json" not in tree_digest(tmp_path / "out")


def test_always_corrupted_file_fails_and_is_never_placed(manifests, meta_server, fast_env, tmp_path):
    files = meta_files(10)
    script = {"tiny-llama/consolidated.00.pth": [Fault("flip", 1234 + i) for i in range(10)]}
    meta_server.add("r", MetaRelease(files, faults=Faults(p=0.0, script=script)))
    with pytest.raises(VerificationError) as ei:
        fetch(meta_server.url("r"), tmp_path / "out")
    assert "consolidated.00.pth (md5)" in ei.value.one_line()
    assert "consolidated.00.pth" not in tree_digest(tmp_path / "out")
    assert not list((tmp_path / "out/.llamakit/parts").glob("*consolidated.00.pth.part"))  # wrong bytes are not resumed from


def test_cli_json_summary_and_expired_exit_code(manifests, meta_server, fast_env, tmp_path, cli):
    files = meta_files(11)
    meta_server.add("r", MetaRelease(files))
    url = meta_server.url("r")
    p = cli("fetch", "tiny-llama", "--source", "meta-url", "--meta-url", url, "--out", str(tmp_path / "o"), "--json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["verified"] and {f["path"] for f in summary["files"]} >= {"consolidated.00.pth", "params.json"}
    assert "Signature" not in p.stdout + p.stderr
    p = cli("fetch", "tiny-llama", "--meta-url", meta_server.url("r", expires_in=-5), "--out", str(tmp_path / "o2"))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "llama.com/llama-downloads" in p.stderr and "Traceback" not in p.stderr
