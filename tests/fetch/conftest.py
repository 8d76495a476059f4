"""Fixtures for fetch tests: a synthetic catalog, the loopback servers, fast retry settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # _servers, _release

from _release import write_catalog  # noqa: E402
from _servers import HubServer, MetaServer  # noqa: E402


@pytest.fixture
def manifests(tmp_path, monkeypatch) -> Path:
    root = write_catalog(tmp_path / "manifests")
    monkeypatch.setenv("LLAMAKIT_MANIFESTS", str(root))
    return root


@pytest.fixture
def fast_env(monkeypatch):
    """Short timeouts and backoff so fault tests take seconds, not minutes."""
    for k, v in {"LLAMAKIT_FETCH_TIMEOUT": "0.5", "LLAMAKIT_FETCH_BACKOFF": "0.01", "LLAMAKIT_FETCH_MAX_BACKOFF": "0.05",
                 "LLAMAKIT_FETCH_RETRIES": "6", "LLAMAKIT_FETCH_CHUNK": str(32 << 10), "LLAMAKIT_FETCH_FSYNC": "0"}.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def hub():
    with HubServer() as srv:
        yield srv


@pytest.fixture
def meta_server():
    with MetaServer() as srv:
        yield srv


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`llamakit ARGS` in a subprocess with the test's environment (plus `env`)."""
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "llamakit", *args], capture_output=True, text=True, env=full, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
