"""The destination: symlinks out of it, a full disk, two fetches at once, a kill mid-download."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from _release import meta_files, tree_digest
from _servers import MetaRelease

from llamakit.errors import UnknownModelError, UnsafePathError
from llamakit.fetch import fetch_release
from llamakit.fetch.meta_url import dest_path
from llamakit.verify import verify_dir


def _size(p) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:  # renamed to its final name between glob and stat
        return 0


def truth_of(files):
    return {dest_path(k): hashlib.sha256(v).hexdigest() for k, v in files.items()}


def cli_popen(args, env_extra=None, preexec_fn=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "llamakit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=preexec_fn)


def test_unknown_model_suggests(manifests, tmp_path, cli):
    with pytest.raises(UnknownModelError) as ei:
        fetch_release("tiny-lama", out=tmp_path / "o", show_progress=False)
    assert "tiny-llama" in ei.value.one_line()
    p = cli("fetch", "tiny-lama", "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "did you mean tiny-llama" in p.stderr


def test_symlink_in_destination_pointing_outside_is_refused(manifests, meta_server, fast_env, tmp_path):
    files = meta_files(1)
    meta_server.add("r", MetaRelease(files))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "params.json").write_text("precious")
    out = tmp_path / "o"
    out.mkdir()
    os.symlink(outside / "params.json", out / "params.json")
    with pytest.raises(UnsafePathError, match="params.json"):
        fetch_release("tiny-llama", source="meta-url", meta_url=meta_server.url("r"), out=out, show_progress=False)
    assert (outside / "params.json").read_text() == "precious"


def _fsize_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_is_a_clear_error_and_nothing_is_left_under_a_final_name(manifests, meta_server, fast_env, tmp_path):
    files = meta_files(2, shard_kb=(200, 260))
    meta_server.add("r", MetaRelease(files))
    out = tmp_path / "o"
    p = cli_popen(["fetch", "tiny-llama", "--meta-url", meta_server.url("r"), "--out", str(out), "--workers", "1"],
                  preexec_fn=_fsize_limit(100_000))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 4, err  # local I/O failure (LocalIOError)
    assert "file too large" in err and "consolidated.0" in err and "Traceback" not in err
    truth = truth_of(files)
    placed = tree_digest(out)
    assert not any(k.startswith("consolidated") for k in placed)  # the big files never got a final name
    assert all(truth[k] == v for k, v in placed.items())  # and whatever did is right
    # with space again, the rerun completes and verifies
    fetch_release("tiny-llama", source="meta-url", meta_url=meta_server.url("r"), out=out, show_progress=False)
    assert tree_digest(out) == truth


def test_two_concurrent_fetches_into_one_directory(manifests, meta_server, fast_env, tmp_path):
    files = meta_files(3)
    meta_server.add("r", MetaRelease(files))
    meta_server.delay_per_send = 0.002  # long enough for the two runs to overlap
    out = tmp_path / "o"
    args = ["fetch", "tiny-llama", "--meta-url", meta_server.url("r"), "--out", str(out), "--json"]
    procs = [cli_popen(args) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1] for r in results]
    statuses = [sorted({f["status"] for f in json.loads(r[0])["files"] if f["path"].startswith("consolidated")}) for r in results]
    assert sorted(statuses) == [["downloaded"], ["present"]]  # one did the work, the other waited and found it verified
    assert tree_digest(out) == truth_of(files)
    assert verify_dir(out, show_progress=False).ok


def test_kill_mid_download_resumes_within_one_chunk(manifests, meta_server, fast_env, tmp_path):
    chunk = 32 << 10
    files = meta_files(4, shard_kb=(600, 601))
    meta_server.add("r", MetaRelease(files))
    meta_server.delay_per_send = 0.01  # ~0.4 s per shard: a wide window to kill it in
    out = tmp_path / "o"
    p = cli_popen(["fetch", "tiny-llama", "--meta-url", meta_server.url("r"), "--out", str(out), "--workers", "1"],
                  env_extra={"LLAMAKIT_FETCH_FSYNC": "1", "LLAMAKIT_FETCH_CHUNK": str(chunk)})
    parts = out / ".llamakit" / "parts"
    deadline = time.time() + 60
    while time.time() < deadline:
        big = [f for f in parts.glob("*.part") if _size(f) > 100_000] if parts.exists() else []
        if big:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)  # no cleanup of any kind
    p.wait()
    assert big, "the download never got going"
    on_disk = {json.loads(m.read_text())["path"]: m.with_suffix(".part").stat().st_size for m in parts.glob("*.json")}
    assert all(not k.startswith("consolidated") or k not in tree_digest(out) for k in on_disk)
    placed = tree_digest(out)
    truth = truth_of(files)
    assert all(truth[k] == v for k, v in placed.items())
    meta_server.delay_per_send = 0
    mark = len(meta_server.log)
    fetch_release("tiny-llama", source="meta-url", meta_url=meta_server.url("r"), out=out, show_progress=False)
    for rel, size in on_disk.items():
        first = next(r for r in meta_server.log[mark:] if r.path.endswith("/" + rel) or r.path.endswith(rel))
        assert size - chunk <= first.start <= size, (rel, size, first.start)
    assert tree_digest(out) == truth


def test_interrupt_keeps_the_part_and_says_so(manifests, meta_server, fast_env, tmp_path):
    # ~4 s of transfer per shard (16 KiB per 0.05 s), so the interrupt lands mid-file even on a loaded machine
    files = meta_files(5, shard_kb=(1200, 1201))
    meta_server.add("r", MetaRelease(files))
    meta_server.delay_per_send = 0.05
    out = tmp_path / "o"
    # A shell's background jobs (`cmd &`, as CI runners and nohup start them) inherit SIGINT ignored, and Python
    # then keeps ignoring it; give the child the terminal's default, as a user's Ctrl-C would find it.
    p = cli_popen(["fetch", "tiny-llama", "--meta-url", meta_server.url("r"), "--out", str(out), "--workers", "1"],
                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    parts = out / ".llamakit" / "parts"
    deadline = time.time() + 60
    while time.time() < deadline and not (parts.exists() and any(_size(f) > 64_000 for f in parts.glob("*.part"))):
        time.sleep(0.01)
    assert p.poll() is None, "the fetch ended before it could be interrupted"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert not any(k.startswith("consolidated") for k in tree_digest(out))
    assert any(_size(f) > 64_000 for f in parts.glob("*.part"))
