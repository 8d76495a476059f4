"""How a hub file travels with --out: huggingface_hub's public hf_hub_download (Xet-backed files, or all
with LLAMAKIT_HF_TRANSFER=hub) or llamakit's resumable engine (the rest), and why the engine stays."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from _release import hub_files, tree_digest, write_catalog
from _servers import Fault, Faults, HubRepo, HubServer
from _trials import hub_trial

from llamakit.errors import VerificationError
from llamakit.fetch import fetch_release

REPO = "test-org/tiny-llama"
SHARD = "model-00001-of-00002.safetensors"


@pytest.fixture
def hub_env(hub, manifests, fast_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.base)
    return hub


def _via_hub_api(out) -> set[str]:
    """Files hf_hub_download fetched into the staging dir: it leaves its own .metadata for each."""
    meta = out / ".llamakit" / "hub" / ".cache" / "huggingface" / "download"
    return {p.relative_to(meta).as_posix().removesuffix(".metadata") for p in meta.rglob("*.metadata")}


def test_auto_sends_xet_backed_files_through_the_hub_api_and_the_rest_through_the_engine(hub_env, tmp_path):
    files = hub_files(21)
    hub_env.add(HubRepo(REPO, files, xet={SHARD, "tokenizer.json"}))
    fetch_release("tiny-llama", source="hf", out=tmp_path / "o", show_progress=False)
    assert _via_hub_api(tmp_path / "o") == {SHARD, "tokenizer.json"}
    got = tree_digest(tmp_path / "o")
    assert got and got == {k: hashlib.sha256(files[k]).hexdigest() for k in got}
    assert not list((tmp_path / "o" / ".llamakit" / "hub").glob(SHARD))  # moved to its final name, not copied


def test_xet_disabled_keeps_every_file_on_the_engine(hub_env, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    hub_env.add(HubRepo(REPO, hub_files(22), xet={SHARD}))
    fetch_release("tiny-llama", source="hf", out=tmp_path / "o", show_progress=False)
    assert _via_hub_api(tmp_path / "o") == set()


def test_hub_api_route_refetches_a_flipped_byte_and_never_names_wrong_bytes(hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMAKIT_HF_TRANSFER", "hub")
    files = hub_files(23)
    flip = Faults(p=0, script={SHARD: [Fault("flip", 100)]})
    hub_env.add(HubRepo(REPO, files, faults=flip))
    res = fetch_release("tiny-llama", source="hf", out=tmp_path / "o", show_progress=False)
    assert any(SHARD in w and "fetched again" in w for w in res.warnings)
    assert tree_digest(tmp_path / "o")[SHARD] == hashlib.sha256(files[SHARD]).hexdigest()
    # every download flipped: the fetch fails with the file named, and nothing carries the final name
    (tmp_path / "o" / SHARD).unlink()
    hub_env.repos[REPO].faults = Faults(p=0, script={SHARD: [Fault("flip", 7)] * 3})
    with pytest.raises(VerificationError) as ei:
        fetch_release("tiny-llama", source="hf", out=tmp_path / "o", show_progress=False)
    assert SHARD in ei.value.one_line() and not (tmp_path / "o" / SHARD).exists()


def test_hub_api_route_survives_seeded_faults(tmp_path, monkeypatch):
    """The fault trials (cuts, flipped bytes, stalls, 500/429) on the hub-API route: wrong or partial bytes
    never carry a final name (a watcher hashes every file as it appears) and reruns finish exactly."""
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    n = 12
    extra = "".join(f"  - {{name: hubx-{i}, params: 1M, variant: base, arch: t, mp_shards: 2, formats: [meta, hf],"
                    f" hf: {{repo: hub{i}/tiny-llama, original_dir: original}}}}\n" for i in range(n))
    monkeypatch.setenv("LLAMAKIT_MANIFESTS", str(write_catalog(tmp_path / "manifests", extra=extra)))
    with HubServer() as hs:
        monkeypatch.setenv("HF_ENDPOINT", hs.base)
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda i: hub_trial(hs, tmp_path, i, transfer="hub"), range(n)))
    problems = [f"seed {r.seed}: {p}" for r in results for p in r.problems]
    assert not problems, "\n".join(problems[:20])
    assert sum(r.faults for r in results) >= n // 2  # the plan really bit


def test_the_public_api_restarts_a_failed_transfer_from_byte_0(hub_env, tmp_path):
    """Why the engine is kept for plain-HTTP files: huggingface_hub 2.x downloads into a per-process temp
    file and deletes it on failure, so after an interrupted transfer the next call asks for byte 0 again
    (the engine resumes from its verified prefix: test_fetch_part, test_fetch_faults). If this starts
    failing, huggingface_hub resumes again and the engine's reason to exist should be re-measured."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils.tqdm import silent_tqdm

    files = {**hub_files(24), SHARD: bytes(range(256)) * 4096}  # 1 MiB
    hub_env.add(HubRepo(REPO, files))
    hub_env.delay_per_send = 0.002

    class Interrupt(silent_tqdm):
        seen = 0

        def update(self, n=1):
            Interrupt.seen += n
            if Interrupt.seen > len(files[SHARD]) // 2:
                raise KeyboardInterrupt

    d = tmp_path / "d"
    with pytest.raises(KeyboardInterrupt):
        hf_hub_download(REPO, SHARD, local_dir=d, endpoint=hub_env.base, tqdm_class=Interrupt)
    first = [r for r in hub_env.log if r.path.endswith(SHARD) and r.method == "GET"]
    assert first and first[-1].sent > len(files[SHARD]) // 2
    assert not list(d.rglob("*.incomplete"))  # nothing kept to resume from
    hf_hub_download(REPO, SHARD, local_dir=d, endpoint=hub_env.base)
    again = [r for r in hub_env.log if r.path.endswith(SHARD) and r.method == "GET"][len(first):]
    assert again and again[0].start == 0
    assert (d / SHARD).read_bytes() == files[SHARD]
