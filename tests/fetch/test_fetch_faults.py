"""Fault injection: >= 200 seeded trials across the hub and the Meta URL server (default run),
a larger count behind `slow`. See _trials.py for what each trial checks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from _release import write_catalog
from _servers import HubServer, MetaServer
from _trials import hub_trial, meta_trial

HUB_ENTRY = ("  - {{name: hub-{i}, params: 1M, variant: base, arch: t, mp_shards: 2, formats: [meta, hf],"
             " hf: {{repo: hub{i}/tiny-llama, original_dir: original}}}}\n")


def _suite(tmp_path, monkeypatch, n_meta: int, n_hub: int, first_seed: int = 0):
    # huggingface_hub narrates every retry at WARNING; hundreds of injected faults would drown the output.
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    root = write_catalog(tmp_path / "manifests", extra="".join(HUB_ENTRY.format(i=i) for i in range(first_seed, first_seed + n_hub)))
    monkeypatch.setenv("LLAMAKIT_MANIFESTS", str(root))
    with MetaServer() as ms, HubServer() as hs:
        monkeypatch.setenv("HF_ENDPOINT", hs.base)
        # Trials are independent (own release, own destination); threads overlap their sleeps and stalls.
        with ThreadPoolExecutor(max_workers=8) as pool:
            futs = [pool.submit(meta_trial, ms, tmp_path, first_seed + i) for i in range(n_meta)]
            futs += [pool.submit(hub_trial, hs, tmp_path, first_seed + i) for i in range(n_hub)]
            results = [f.result() for f in futs]
    problems = [f"{r.kind} seed {r.seed}: {p}" for r in results for p in r.problems]
    assert not problems, "\n".join(problems[:20])
    faults = sum(r.faults for r in results)
    resumed = sum(r.resumes for r in results)
    reruns = sum(r.runs - 1 for r in results)
    # The plan must really have bitten: faults everywhere, reruns after 403s, resumes across runs.
    assert len(results) == n_meta + n_hub
    assert faults >= len(results), (faults, len(results))
    assert reruns > 0 and resumed > 0, (reruns, resumed)
    assert max(r.max_retransfer for r in results) <= 32 << 10
    return results


def test_fault_injection_200_trials(tmp_path, monkeypatch):
    results = _suite(tmp_path, monkeypatch, n_meta=130, n_hub=70)
    kinds = {e for r in results for e in r.errors}
    assert "AccessError" in kinds  # expired-URL 403s happened and were recovered from by a rerun


@pytest.mark.slow
def test_fault_injection_many_trials(tmp_path, monkeypatch):
    _suite(tmp_path, monkeypatch, n_meta=700, n_hub=300, first_seed=10_000)
