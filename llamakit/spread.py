"""Several runs of one recipe (seeds) held against one reported value: run-to-run spread per metric.

One run is one sample: whether a gap between a reproduced and a reported score is real or seed
noise needs the spread of several runs. `llamakit report --metrics A --metrics B --metrics C`
gives every metric row the runs' mean ± sd (sample standard deviation, n − 1) and min–max, and
says whether the reported value lies within the runs' range. The row's `reproduced` value is then
the runs' mean, so the tolerance gate (`--check`) asks whether the recipe reproduces the reported
value on average, not whether one lucky or unlucky seed did.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

# Float noise guard, as report.py's: reported values are decimal literals.
_EPS = 1e-9


@dataclass(frozen=True)
class RunSpread:
    n: int
    mean: float
    sd: Optional[float]  # None for fewer than two runs
    min: float
    max: float
    values: tuple[float, ...]
    reported_within_range: bool

    def to_json(self) -> dict:
        d = asdict(self)
        d["values"] = list(self.values)
        return d


def spread(values: list[float], reported: float) -> RunSpread:
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    lo, hi = min(values), max(values)
    return RunSpread(n, mean, sd, lo, hi, tuple(values), lo - _EPS <= reported <= hi + _EPS)


def combine(runs: list[dict], names: list[str], reported: dict[str, float], lookup) -> dict[str, tuple[Optional[float], Optional[RunSpread]]]:
    """Per metric name: (the runs' mean, their spread), or (None, None) when a run lacks the metric
    (a missing value is a failure in the report, never silently averaged over fewer runs)."""
    out: dict[str, tuple[Optional[float], Optional[RunSpread]]] = {}
    for name in names:
        values = [lookup(m, name) for m in runs]
        if any(v is None for v in values):
            out[name] = (None, None)
            continue
        s = spread([float(v) for v in values], reported[name])
        out[name] = (s.mean, s)
    return out


def summary_line(rows) -> str:
    """'3 runs: the reported value lies within the runs' range for 12 of 80 metrics' (rows with spread)."""
    with_spread = [r for r in rows if getattr(r, "runs", None)]
    if not with_spread:
        return ""
    n = with_spread[0].runs["n"]
    inside = sum(1 for r in with_spread if r.runs["reported_within_range"])
    return f"{n} runs: the reported value lies within the runs' min–max for {inside} of {len(with_spread)} metrics"
