"""`small_blocks`: stream tensors in tiny blocks, so every block path (views of one shard, per-block
concatenation of dim-1 splits, per-block rotary permutation, straddled shard boundaries) runs on
tiny models too. Modules opt in with `pytestmark`. The forked CLI runs of test_kill.py keep the
default block size while its in-process reruns use tiny blocks, and their bytes must match."""

from __future__ import annotations

import pytest

from llamakit.convert import entries


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(entries, "PART_BYTES", 1024)
