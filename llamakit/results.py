"""The reported-score registry: `manifests/results/<name>.yaml`, one file per result.

An entry says where a score was reported (citation), for which model, dataset and split, what each
metric means, the values, and how far a reproduction may land from each value (absolute tolerance).
Values use the same nesting as `metrics.json` written by `llamakit evaluate`, so a metric is named
by its dotted path there (`token.B-LOC.f1`, `token.micro avg.f1`, `headline.entity_f1`).

Two kinds: `reported` (a published or seed table we try to reproduce) and `reference` (this
project's own recorded run of a pipeline profile; tolerance ~0, it is a determinism gate).
`record_reference` writes the latter from a real `metrics.json`.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llamakit.errors import ManifestError

SCHEMA_VERSION = 1

class Citation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, description="Where the numbers were reported (paper, issue, run).")
    table: Optional[str] = Field(None, description="Which table or figure.")
    url: Optional[str] = None
    note: Optional[str] = None


class DatasetRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    split: str
    scheme: Optional[str] = None
    n_sentences: Optional[int] = Field(None, ge=1)
    n_words: Optional[int] = Field(None, ge=1)


class Tolerance(BaseModel):
    """Absolute tolerance: a metric passes when |reproduced - reported| <= its tolerance.
    Most specific wins: `metrics` (full dotted name) > `stats` (last path part, e.g. support) > `default`.
    Metrics named in `at_least` (dotted names, or stats such as f1) are one-sided: they pass when
    reproduced >= reported - tolerance, since beating a reported score is not a failure to reproduce it."""

    model_config = ConfigDict(extra="forbid")

    default: float = Field(ge=0)
    stats: dict[str, float] = {}
    metrics: dict[str, float] = {}
    at_least: list[str] = []

    @field_validator("default")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):  # .inf would let every metric pass the gate
            raise ValueError(f"tolerances must be finite numbers >= 0 (default: {v})")
        return v

    @field_validator("stats", "metrics")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, x in v.items() if not (isinstance(x, (int, float)) and math.isfinite(x) and x >= 0)]
        if bad:
            raise ValueError(f"tolerances must be finite numbers >= 0 (bad: {', '.join(bad)})")
        return v


class ResultEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    kind: Literal["reported", "reference"]
    title: str
    citation: Citation
    model: str
    dataset: DatasetRef
    profile: Optional[str] = Field(None, description="For `reference` entries: the pipeline profile recorded.")
    decimals: Optional[int] = Field(None, ge=0, le=12, description="Precision the values were reported at.")
    definitions: dict[str, str] = Field(description="Metric family (first path part) or dotted name -> definition.")
    metrics: dict[str, dict]
    tolerance: Tolerance
    recorded: Optional[dict] = Field(None, description="For `reference` entries: commit, date, machine of the run.")

    @model_validator(mode="after")
    def _consistent(self) -> "ResultEntry":
        flat = flatten(self.metrics)  # raises ValueError on bad leaves
        if not flat:
            raise ValueError("metrics: no values")
        families = {name.split(".", 1)[0] for name in flat}
        undefined = sorted(f for f in families if f not in self.definitions)
        if undefined:
            raise ValueError(f"definitions: no definition for metric family {', '.join(undefined)}")
        unknown = sorted(k for k in self.tolerance.metrics if k not in flat)
        if unknown:
            raise ValueError(f"tolerance.metrics names metrics not in `metrics`: {', '.join(unknown)}")
        stats = {name.rsplit(".", 1)[-1] for name in flat}
        unknown = sorted(k for k in self.tolerance.stats if k not in stats)
        if unknown:
            raise ValueError(f"tolerance.stats names stats no metric has: {', '.join(unknown)}")
        unknown = sorted(k for k in self.tolerance.at_least if k not in flat and k not in stats)
        if unknown:
            raise ValueError(f"tolerance.at_least names neither a metric nor a stat: {', '.join(unknown)}")
        if self.kind == "reference" and not self.profile:
            raise ValueError("profile: a `reference` entry records a pipeline profile (e.g. ci)")
        return self

    def flat_metrics(self) -> dict[str, float]:
        return flatten(self.metrics)

    def tolerance_for(self, metric: str) -> float:
        if metric in self.tolerance.metrics:
            return float(self.tolerance.metrics[metric])
        stat = metric.rsplit(".", 1)[-1]
        if stat in self.tolerance.stats:
            return float(self.tolerance.stats[stat])
        return float(self.tolerance.default)

    def at_least(self, metric: str) -> bool:
        return metric in self.tolerance.at_least or metric.rsplit(".", 1)[-1] in self.tolerance.at_least

    def definition_for(self, metric: str) -> str:
        parts = metric.split(".")
        for i in range(len(parts), 0, -1):
            key = ".".join(parts[:i])
            if key in self.definitions:
                return self.definitions[key]
        return ""


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    """{"token": {"B-LOC": {"f1": 0.9}}} -> {"token.B-LOC.f1": 0.9}, in file order."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        key = str(key)
        if "." in key or not key:
            raise ValueError(f"metric key '{prefix}{key}' must be non-empty and contain no '.'")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metric '{name}' must be a finite number, got {value!r}")
        else:
            out[name] = float(value)
    return out


def lookup(tree: dict, metric: str) -> Optional[float]:
    """The value at a dotted path in a metrics.json tree, or None when absent or not a number."""
    node = tree
    for part in metric.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return float(node)


# --- loading --------------------------------------------------------------------


def registry_dir() -> Path:
    from llamakit import catalog

    return catalog.manifests_dir() / "results"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:4]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {'unknown key' if err['type'] == 'extra_forbidden' else msg}")
    more = f" (+{len(exc.errors()) - 4} more)" if len(exc.errors()) > 4 else ""
    return "; ".join(parts) + more


def load_result_file(path: str | Path) -> ResultEntry:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read registry entry: {exc.strerror}", path=path) from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise ManifestError(f"registry entry is not valid YAML: {getattr(exc, 'problem', exc)}", path=where,
                            fix="fix the YAML syntax") from exc
    if not isinstance(doc, dict):
        raise ManifestError("registry entry must be a YAML mapping", path=path, fix="see manifests/results/README.md")
    try:
        entry = ResultEntry.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(f"invalid registry entry: {_describe(exc)}", path=path,
                            fix="see manifests/results/README.md for the schema") from exc
    if entry.name != path.stem:
        raise ManifestError(f"entry name '{entry.name}' differs from its file name '{path.stem}'", path=path,
                            fix=f"rename the file to {entry.name}.yaml or set name: {path.stem}")
    return entry


def list_results(root: str | Path | None = None) -> list[ResultEntry]:
    root = Path(root) if root is not None else registry_dir()
    return [load_result_file(p) for p in sorted(root.glob("*.yaml"))]


def resolve(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """A registry name (`conll2003-smollm2-ci`) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ManifestError("registry entry not found", path=candidate, fix="check the path")
        return candidate
    root = Path(root) if root is not None else registry_dir()
    path = root / f"{name_or_path}.yaml"
    if path.is_file():
        return path
    names = sorted(p.stem for p in root.glob("*.yaml"))
    close = difflib.get_close_matches(str(name_or_path), names, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"known entries: {', '.join(names) or 'none'}"
    raise ManifestError(f"no registry entry named '{name_or_path}'", path=root, fix=hint)


def load_result(name_or_path: str | Path, root: str | Path | None = None) -> ResultEntry:
    return load_result_file(resolve(name_or_path, root))


# --- recording a reference ------------------------------------------------------

# What a `reference` entry records from a run: every per-row stat of the token and entity
# reports plus the headline numbers. Supports are counts and must match exactly.
_REFERENCE_FAMILIES = ("token", "entity", "headline")


def reference_from_metrics(metrics: dict, *, name: str, profile: str, model: str, tolerance: float,
                           recorded: dict, source: str) -> dict:
    """A `reference` registry document (a plain dict, validated) holding a run's metrics."""
    values = {fam: metrics[fam] for fam in _REFERENCE_FAMILIES if isinstance(metrics.get(fam), dict)}
    doc = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "kind": "reference",
        "title": f"llamakit's own `{profile}` profile run (determinism reference)",
        "citation": {"source": source, "note": "recorded with `python -m llamakit.results record`"},
        "model": model,
        "dataset": {"name": "conll2003", "split": metrics.get("split", "test"), "scheme": "IOB2",
                    "n_sentences": metrics.get("n_sentences"), "n_words": metrics.get("n_words")},
        "profile": profile,
        "decimals": None,
        "definitions": {fam: DEFINITIONS[fam] for fam in values},
        "metrics": values,
        "tolerance": {"default": tolerance, "stats": {"support": 0} if _has_stat(values, "support") else {}},
        "recorded": recorded,
    }
    ResultEntry.model_validate(doc)
    return doc


def _has_stat(tree: dict, stat: str) -> bool:
    return any(name.rsplit(".", 1)[-1] == stat for name in flatten(tree))


DEFINITIONS = {
    "token": (
        "Word-level tag classification over the 9 IOB2 tags including O: each word's predicted tag is "
        "the prediction at its first sub-token. Per tag: precision, recall, F1 and support (gold words "
        "with that tag), as sklearn.metrics.classification_report computes them. `micro avg` pools all "
        "words (equals accuracy), `macro avg` is the unweighted mean over the 9 tags, `weighted avg` "
        "the support-weighted mean."
    ),
    "entity": (
        "Entity-level scores by seqeval in strict IOB2 mode: an entity counts only when its type and "
        "exact span match. Per type (LOC, MISC, ORG, PER) and micro/macro/weighted averages; support = "
        "gold entities."
    ),
    "headline": (
        "Single numbers copied from the token and entity reports: token micro/macro/weighted F1 and "
        "entity micro F1."
    ),
}


def _main(argv: list[str] | None = None) -> int:
    """`python -m llamakit.results record METRICS --name N --profile P --model M [--tolerance T]`."""
    import argparse
    import datetime as _dt
    import json

    from llamakit import atomic, provenance

    parser = argparse.ArgumentParser(prog="python -m llamakit.results")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="write a `reference` entry from a real metrics.json")
    rec.add_argument("metrics", type=Path)
    rec.add_argument("--name", required=True)
    rec.add_argument("--profile", required=True)
    rec.add_argument("--model", required=True)
    rec.add_argument("--tolerance", type=float, default=0.001)
    rec.add_argument("--out", type=Path, default=None, help="default: manifests/results/<name>.yaml")
    check = sub.add_parser("check", help="validate every registry entry")
    check.add_argument("root", type=Path, nargs="?", default=None)
    args = parser.parse_args(argv)
    if args.cmd == "check":
        for entry in list_results(args.root):
            print(f"ok  {entry.name} ({entry.kind}, {len(entry.flat_metrics())} metrics)")
        return 0
    metrics = json.loads(args.metrics.read_text(encoding="utf-8"))
    git = provenance.git_state()
    recorded = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git.get("commit"),
        "dirty": git.get("dirty"),
        "machine": provenance.machine(),
        "metrics_file": str(args.metrics),
    }
    doc = reference_from_metrics(metrics, name=args.name, profile=args.profile, model=args.model,
                                 tolerance=args.tolerance, recorded=recorded,
                                 source=f"llamakit pipeline, `make repro PROFILE={args.profile}`")
    out = args.out or registry_dir() / f"{args.name}.yaml"
    header = ("# Recorded from a real pipeline run by `python -m llamakit.results record`; regenerate,\n"
              "# do not hand-edit values. Tolerance ~0: this entry is a determinism gate.\n")
    atomic.write_text(out, header + yaml.safe_dump(doc, sort_keys=False, width=110, default_flow_style=None))
    load_result_file(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
