"""Which instruction-set paths torch's CPU kernels take, chosen before torch starts; what the CPU is.

fp32 training on the CPU is deterministic on one machine but not across CPU models: torch's
CPU build dispatches its own kernels by the best ISA it finds (AVX-512 on a recent Xeon, AVX2 on
an EPYC without it), and MKL and oneDNN do the same, each with its own summation order. A
`cpu_isa` other than `native` caps all three at one ISA so that every x86-64 CPU that has it can
take the same code paths:

    MKL_CBWR=AVX2             MKL's conditional numerical reproducibility
    ATEN_CPU_CAPABILITY=avx2  torch's own vectorised kernels
    ONEDNN_MAX_CPU_ISA=AVX2   oneDNN (convolutions, some matmuls)

Each library reads its variable once, when it first runs, so `apply` must come before torch is
imported; it refuses (rather than silently doing nothing) when torch is already in the process
without those settings. Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

from llamakit.errors import UsageError

PINS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
VARIABLES = ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")

# The /proc/cpuinfo flags that decide which kernels run (the rest do not change numerics).
ISA_FLAGS = ("sse4_2", "avx", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16")


def apply(cpu_isa: str) -> dict[str, str]:
    """Set the variables for `cpu_isa` in this process (and so its children); returns them."""
    if cpu_isa not in PINS:
        raise UsageError(f"unknown cpu_isa '{cpu_isa}'", fix=f"use one of: {', '.join(PINS)}")
    want = PINS[cpu_isa]
    have = {k: os.environ.get(k) for k in want}
    if "torch" in sys.modules and any(have[k] != v for k, v in want.items()):
        raise UsageError(f"cpu_isa: {cpu_isa} must be chosen before torch starts, and torch is already loaded in this process",
                         fix="run the command in a fresh process (llamakit finetune/evaluate), or export "
                             + " ".join(f"{k}={v}" for k, v in want.items()) + " before starting Python")
    os.environ.update(want)
    return dict(want)


def pins() -> dict[str, str]:
    """The ISA variables set in this process's environment (whoever set them)."""
    return {k: os.environ[k] for k in VARIABLES if k in os.environ}


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    first: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block describes them all here
        key, _, value = line.partition(":")
        first.setdefault(key.strip().lower(), value.strip())
    return first


def describe() -> dict[str, Any]:
    """The CPU as far as numerics go: vendor, model, the ISA flags that pick kernels, the widest
    vector ISA, the pins in force, and torch's own choice when torch is already loaded."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    widest: Optional[str] = None
    for isa, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("sse4_2", "sse4_2")):
        if flag in flags:
            widest = isa
            break
    out: dict[str, Any] = {
        "vendor": info.get("vendor_id"),
        "model": info.get("model name"),
        "isa": widest,
        "flags": [f for f in ISA_FLAGS if f in flags],
        "pins": pins(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            out["torch_capability"] = torch.backends.cpu.get_cpu_capability()
        except Exception:  # an old or partial torch: the capability is a nicety, not a fact we need
            pass
    return out
