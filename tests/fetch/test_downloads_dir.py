"""Unfinished downloads outside the destination ($LLAMAKIT_DOWNLOADS_DIR): the pipeline's fetch stage
keeps them there because DVC deletes the stage's output (the destination) before it reruns it."""

from __future__ import annotations

import json
import shutil
import signal
import time

from _release import meta_files, tree_digest
from _servers import MetaRelease
from test_fetch_safety import _size, cli_popen, truth_of

from llamakit.fetch import fetch_release


def _kill_mid_download(meta_server, out, env_extra, parts):
    p = cli_popen(["fetch", "tiny-llama", "--meta-url", meta_server.url("r"), "--out", str(out), "--workers", "1"],
                  env_extra={"LLAMAKIT_FETCH_FSYNC": "1", "LLAMAKIT_FETCH_CHUNK": str(32 << 10), **env_extra})
    deadline = time.time() + 60
    big = []
    while time.time() < deadline and not big:
        big = [f for f in parts.glob("*.part") if _size(f) > 100_000] if parts.exists() else []
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert big, "the download never got going"
    return {json.loads(m.read_text())["path"]: m.with_suffix(".part").stat().st_size for m in parts.glob("*.json")}


def _first_offsets(meta_server, mark, rels):
    return {rel: next(r for r in meta_server.log[mark:] if r.path.endswith("/" + rel) or r.path.endswith(rel)).start
            for rel in rels}


def test_destination_deleted_between_runs_still_resumes(manifests, meta_server, fast_env, tmp_path, monkeypatch):
    files = meta_files(4, shard_kb=(600, 601))
    meta_server.add("r", MetaRelease(files))
    meta_server.delay_per_send = 0.01
    out, downloads = tmp_path / "work" / "fetch", tmp_path / "work" / "fetch-downloads"
    on_disk = _kill_mid_download(meta_server, out, {"LLAMAKIT_DOWNLOADS_DIR": str(downloads)}, downloads / "parts")
    assert not (out / ".llamakit" / "parts").exists()  # nothing unfinished inside the destination
    shutil.rmtree(out)  # what DVC does to a stage's outputs before it reruns the stage

    meta_server.delay_per_send = 0
    mark = len(meta_server.log)
    monkeypatch.setenv("LLAMAKIT_DOWNLOADS_DIR", str(downloads))
    fetch_release("tiny-llama", source="meta-url", meta_url=meta_server.url("r"), out=out, show_progress=False)
    starts = _first_offsets(meta_server, mark, on_disk)
    assert all(size - (32 << 10) <= starts[rel] <= size and starts[rel] > 0 for rel, size in on_disk.items()), (on_disk, starts)
    assert tree_digest(out) == truth_of(files)
    assert not any(downloads.rglob("*.part"))  # finished: nothing left to persist


def test_without_it_deleting_the_destination_starts_over(manifests, meta_server, fast_env, tmp_path):
    """The negative: with the parts inside the destination (the default), the same deletion loses them."""
    files = meta_files(4, shard_kb=(600, 601))
    meta_server.add("r", MetaRelease(files))
    meta_server.delay_per_send = 0.01
    out = tmp_path / "work" / "fetch"
    on_disk = _kill_mid_download(meta_server, out, {}, out / ".llamakit" / "parts")
    shutil.rmtree(out)
    meta_server.delay_per_send = 0
    mark = len(meta_server.log)
    fetch_release("tiny-llama", source="meta-url", meta_url=meta_server.url("r"), out=out, show_progress=False)
    assert set(_first_offsets(meta_server, mark, on_disk).values()) == {0}
    assert tree_digest(out) == truth_of(files)
