"""`llamakit verify`: sizes + sha256 against a lock, md5 against checklist.chk, one read per file, in parallel."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from llamakit.errors import InputFileError, ManifestError, UnsafePathError, VerificationError
from llamakit.fetch._hashing import hash_file, hash_files
from llamakit.fetch.lock import Lock, LockEntry, save_lock
from llamakit.verify import report_table, verify_dir


def llamakit(*args, env=None):
    full = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "llamakit", *args], capture_output=True, text=True, env=full)


def make_release(root: Path, *, checklist: bool = True, lock: bool = True, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {"consolidated.00.pth": rng.randbytes(300_000), "consolidated.01.pth": rng.randbytes(200_000),
             "params.json": b'{"dim": 64}', "sub/tokenizer.model": rng.randbytes(50_000)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    if checklist:
        (root / "checklist.chk").write_text("".join(f"{hashlib.md5(d).hexdigest()}  {p}\n" for p, d in files.items() if "/" not in p))
        (root / "sub/tokenizer_checklist.chk").write_text(f"{hashlib.md5(files['sub/tokenizer.model']).hexdigest()}  tokenizer.model\n")
    if lock:
        entries = [LockEntry(path=p, size=len(d), sha256=hashlib.sha256(d).hexdigest()) for p, d in files.items()]
        save_lock(Lock(name="tiny", format="meta", source={"kind": "dir"}, files=entries), root / ".llamakit" / "lock.json")
    return files


def flip(path: Path, at: int = 1000) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))


def test_good_release_checks_sha256_and_md5_in_one_read(tmp_path):
    files = make_release(tmp_path)
    rep = verify_dir(tmp_path, show_progress=False)
    assert rep.ok, rep.to_json()
    by = {f.path: f for f in rep.files}
    assert set(by["consolidated.00.pth"].checked) == {"size", "sha256", "md5"}
    assert by["sub/tokenizer.model"].md5 == hashlib.md5(files["sub/tokenizer.model"]).hexdigest()  # relative to its checklist
    assert rep.bytes_hashed == sum(len(d) for d in files.values())  # each file read once for both digests


@pytest.mark.parametrize("damage,kind", [
    (lambda p: flip(p), "altered"),
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
    (lambda p: p.unlink(), "missing"),
    (lambda p: p.write_bytes(p.read_bytes() + b"x"), "altered"),
])
def test_each_kind_of_damage_is_named(tmp_path, damage, kind):
    make_release(tmp_path)
    damage(tmp_path / "consolidated.01.pth")
    rep = verify_dir(tmp_path, show_progress=False)
    assert [(m.path, m.kind) for m in rep.mismatches] == [("consolidated.01.pth", kind)]
    with pytest.raises(VerificationError, match=f"consolidated.01.pth \\({kind}\\)"):
        rep.raise_for_mismatch()


def test_extra_file_and_checklist_only_md5(tmp_path):
    make_release(tmp_path, lock=False)  # what Meta's download.sh leaves: data + checklist.chk
    assert verify_dir(tmp_path, show_progress=False).ok
    (tmp_path / "stray.bin").write_bytes(b"?")
    flip(tmp_path / "consolidated.00.pth")
    rep = verify_dir(tmp_path, show_progress=False)
    assert sorted((m.path, m.kind) for m in rep.mismatches) == [("consolidated.00.pth", "md5"), ("stray.bin", "extra")]


def test_html_checklist_is_a_failure_not_a_pass(tmp_path):
    make_release(tmp_path, lock=False)
    (tmp_path / "checklist.chk").write_text("<!DOCTYPE html><html><body>Error</body></html>\n")
    rep = verify_dir(tmp_path, show_progress=False)
    assert ("checklist.chk", "malformed") in [(m.path, m.kind) for m in rep.mismatches]


def test_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.bin").write_bytes(b"a")
    with pytest.raises(InputFileError, match="nothing to verify against"):
        verify_dir(tmp_path / "empty", show_progress=False)
    with pytest.raises(InputFileError, match="not a directory"):
        verify_dir(tmp_path / "nope", show_progress=False)
    make_release(tmp_path / "r")
    (tmp_path / "bad.json").write_text('{"files": ')
    with pytest.raises(ManifestError):
        verify_dir(tmp_path / "r", lock=tmp_path / "bad.json", show_progress=False)
    evil = json.loads((tmp_path / "r/.llamakit/lock.json").read_text())
    evil["files"][0]["path"] = "../../etc/passwd"
    (tmp_path / "evil.json").write_text(json.dumps(evil))
    with pytest.raises(UnsafePathError):
        verify_dir(tmp_path / "r", lock=tmp_path / "evil.json", show_progress=False)
    os.symlink("/etc/hostname", tmp_path / "r" / "hostname")
    with pytest.raises(UnsafePathError):
        verify_dir(tmp_path / "r", show_progress=False)


def test_lock_by_model_name(tmp_path, monkeypatch):
    root = tmp_path / "manifests"
    (root / "catalog").mkdir(parents=True)
    (root / "locks").mkdir()
    (root / "catalog" / "t.yaml").write_text(
        "family: t\nreleases:\n  - {name: tiny, params: 1M, variant: base, gated: false, license: x, context_length: 8,\n"
        "     formats: [meta], mp_shards: 2, meta: {dim: 8, n_layers: 1, n_heads: 2, vocab_size: 8, multiple_of: 4, norm_eps: 1.0e-5}}\n")
    monkeypatch.setenv("LLAMAKIT_MANIFESTS", str(root))
    make_release(tmp_path / "r")
    os.replace(tmp_path / "r/.llamakit/lock.json", root / "locks" / "tiny.meta.json")
    assert verify_dir(tmp_path / "r", lock="tiny", show_progress=False).ok
    from llamakit.errors import UnknownModelError

    with pytest.raises(UnknownModelError):
        verify_dir(tmp_path / "r", lock="tinyy", show_progress=False)


def test_cli_exit_codes_and_names(tmp_path):
    make_release(tmp_path / "r")
    p = llamakit("verify", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr
    flip(tmp_path / "r" / "params.json", at=3)
    p = llamakit("verify", str(tmp_path / "r"))
    assert p.returncode == 1 and "params.json (altered)" in p.stderr and "Traceback" not in p.stderr
    p = llamakit("verify", str(tmp_path / "r"), "--json")
    assert p.returncode == 1 and json.loads(p.stdout)["counts"] == {"ok": 5, "altered": 1}
    p = llamakit("verify", str(tmp_path / "nope"))
    assert p.returncode == 2


def test_json_verdict_is_the_same_on_every_run(tmp_path):
    # The pipeline's verify.json is a DVC output that convert depends on: a rerun over the same bytes
    # must not change it (a wall time in it would rerun convert every time).
    make_release(tmp_path / "r")
    runs = [llamakit("verify", str(tmp_path / "r"), "--json") for _ in range(2)]
    assert all(p.returncode == 0 for p in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout and json.loads(runs[0].stdout)["bytes_hashed"] > 0


def test_parallel_hashing_matches_hashlib(tmp_path):
    rng = random.Random(5)
    paths = []
    for i in range(6):
        p = tmp_path / f"f{i}"
        p.write_bytes(rng.randbytes(rng.randrange(1, 3_000_000)))
        paths.append(p)
    got = hash_files([(p, ("sha256", "md5", "git")) for p in paths], workers=3)
    for p, (n, d) in zip(paths, got):
        data = p.read_bytes()
        assert n == len(data)
        assert d == {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest(),
                     "git": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
    assert hash_file(paths[0])[1] == {"sha256": got[0][1]["sha256"]}  # only the digests asked for


def test_report_table_renders(tmp_path):
    from rich.console import Console

    make_release(tmp_path)
    flip(tmp_path / "consolidated.00.pth")
    con = Console(record=True, width=200)
    con.print(report_table(verify_dir(tmp_path, show_progress=False)))
    text = con.export_text()
    assert "consolidated.00.pth" in text and "altered" in text and "1 mismatched" in text
