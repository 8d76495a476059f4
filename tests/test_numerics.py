"""CPU numerics: the ISA cap is set before torch starts, refused after, recorded where a run is described."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamakit import numerics
from llamakit.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
HAS_AVX2 = "avx2" in numerics.describe()["flags"]


def _fresh_python(code: str, env: dict | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in numerics.VARIABLES}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2")
def test_apply_before_torch_caps_torchs_own_kernels():
    code = ("from llamakit import numerics; numerics.apply('avx2'); import torch; "
            "print(torch.backends.cpu.get_cpu_capability())")
    assert _fresh_python(code) == "AVX2"


def test_apply_after_torch_started_is_refused_not_ignored():
    import torch  # noqa: F401  (torch is in this process now)

    saved = {k: os.environ.pop(k) for k in numerics.VARIABLES if k in os.environ}
    try:
        with pytest.raises(UsageError, match="before torch starts"):
            numerics.apply("avx2")
        assert not any(k in os.environ for k in numerics.VARIABLES)  # nothing half-applied
        assert numerics.apply("native") == {}
    finally:
        os.environ.update(saved)


def test_apply_after_torch_is_fine_when_the_environment_already_has_the_pins(monkeypatch):
    import torch  # noqa: F401

    for k, v in numerics.PINS["avx2"].items():
        monkeypatch.setenv(k, v)
    assert numerics.apply("avx2") == numerics.PINS["avx2"]


def test_unknown_isa_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown cpu_isa 'avx512'"):
        numerics.apply("avx512")


def test_describe_reads_the_cpu_without_importing_torch():
    out = json.loads(_fresh_python(
        "import json, sys; from llamakit import numerics; d = numerics.describe(); "
        "print(json.dumps({**d, 'torch_loaded': 'torch' in sys.modules}))",
        env={"MKL_CBWR": "AVX2"}))
    assert out["torch_loaded"] is False and "torch_capability" not in out
    assert out["pins"] == {"MKL_CBWR": "AVX2"}
    if Path("/proc/cpuinfo").is_file():
        assert out["model"] and out["vendor"]
        assert set(out["flags"]) <= set(numerics.ISA_FLAGS)
        assert out["isa"] == ("avx512" if "avx512f" in out["flags"] else "avx2" if "avx2" in out["flags"] else out["isa"])
