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
import statistics
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


class SpreadRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, description="What differs from the reference run (seed, cpu_isa, machine).")
    metrics_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    headline: dict[str, float] = {}


class SpreadDerivation(BaseModel):
    """How a `reference` entry's tolerances were measured rather than chosen: other runs of the same
    recipe (other seeds; other cpu_isa settings, which take other kernels on one machine, as a proxy
    for other CPUs). Per metric: max(floor, k x sample sd over all runs, largest |run - reference|)."""

    model_config = ConfigDict(extra="forbid")

    method: str
    k: float = Field(gt=0)
    floor: float = Field(ge=0)
    runs: list[SpreadRun] = Field(min_length=1)


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
    derived: Optional[SpreadDerivation] = Field(None, description="Present when `metrics` came from measured run-to-run spread.")

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


SPREAD_METHOD = ("per metric: max(floor, k x sample standard deviation over the reference run and the spread runs, "
                 "largest |spread run - reference|), rounded up to 4 decimals; supports are counts and stay exact")


def spread_tolerances(reference: dict, runs: list[dict], *, k: float, floor: float) -> dict[str, float]:
    """Per-metric tolerances from run-to-run spread (see SPREAD_METHOD). `reference` and each run
    are metrics trees restricted to the recorded families; a metric missing from a run is an error."""
    ref = flatten(reference)
    flat_runs = [flatten(r) for r in runs]
    out: dict[str, float] = {}
    for name, value in ref.items():
        if name.endswith(".support"):
            continue
        try:
            values = [value] + [r[name] for r in flat_runs]
        except KeyError as exc:
            raise ValueError(f"a spread run lacks metric {exc}") from exc
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        widest = max(abs(v - value) for v in values)
        out[name] = math.ceil(max(floor, k * sd, widest) * 1e4 - 1e-9) / 1e4
    return out


def reference_from_metrics(metrics: dict, *, name: str, profile: str, model: str, tolerance: float,
                           recorded: dict, source: str, spread: list[tuple[str, dict, str]] = (),
                           spread_k: float = 3.0) -> dict:
    """A `reference` registry document (a plain dict, validated) holding a run's metrics.
    `spread`: (label, metrics, metrics_sha256) of other runs of the same recipe; when given, each
    metric's tolerance is measured from them (`spread_tolerances`, `tolerance` as the floor)."""
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
    if spread:
        runs = [{fam: m[fam] for fam in values} for _, m, _ in spread]
        doc["title"] = f"llamakit's own `{profile}` profile run (reference; tolerances from measured run-to-run spread)"
        doc["tolerance"]["metrics"] = spread_tolerances(values, runs, k=spread_k, floor=tolerance)
        doc["tolerance"]["derived"] = {
            "method": SPREAD_METHOD, "k": spread_k, "floor": tolerance,
            "runs": [{"label": label, "metrics_sha256": sha, "headline": m.get("headline", {})} for label, m, sha in spread],
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
    rec.add_argument("--tolerance", type=float, default=0.001, help="the tolerance; with --spread, its floor")
    rec.add_argument("--spread", action="append", default=[], metavar="LABEL=METRICS",
                     help="metrics.json of another run of the same recipe (another seed, another cpu_isa); repeat it")
    rec.add_argument("--spread-k", type=float, default=3.0, help="tolerance = k x the runs' standard deviation (at least)")
    rec.add_argument("--out", type=Path, default=None, help="default: manifests/results/<name>.yaml")
    chk = sub.add_parser("checked", help="add the machine of a gated report (report.json) to a reference entry's checked_on")
    chk.add_argument("report_dir", type=Path)
    check = sub.add_parser("check", help="validate every registry entry")
    check.add_argument("root", type=Path, nargs="?", default=None)
    args = parser.parse_args(argv)
    if args.cmd == "check":
        for entry in list_results(args.root):
            print(f"ok  {entry.name} ({entry.kind}, {len(entry.flat_metrics())} metrics)")
        return 0
    if args.cmd == "checked":
        return _add_checked(args.report_dir)
    metrics = json.loads(args.metrics.read_text(encoding="utf-8"))
    spread = []
    for item in args.spread:
        label, sep, path = item.rpartition("=")
        if not sep or not label:
            parser.error(f"--spread {item!r}: write LABEL=PATH, e.g. 'seed 1=runs/s1/metrics.json'")
        spread.append((label, json.loads(Path(path).read_text(encoding="utf-8")), atomic.sha256_file(path)))
    git = provenance.git_state()
    machine, environment = provenance.machine(), provenance.environment()
    report_json = args.metrics.parent.parent / "report.json"
    try:
        rep = json.loads(report_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rep = {}  # no report of this run (or not one we can read): this process describes the machine
    if isinstance(rep, dict) and (rep.get("evaluation") or {}).get("metrics_sha256") == atomic.sha256_file(args.metrics):
        # the pipeline's report of this very run: its view of the machine includes the fine-tune's CPU pins
        prov = rep.get("provenance") or {}
        machine, environment = prov.get("machine") or machine, prov.get("environment") or environment
    recorded = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git.get("commit"),
        "dirty": git.get("dirty"),
        "machine": machine,
        "environment": environment,
        "metrics_file": str(args.metrics),
        "metrics_sha256": atomic.sha256_file(args.metrics),
        "checked_on": [],
    }
    doc = reference_from_metrics(metrics, name=args.name, profile=args.profile, model=args.model,
                                 tolerance=args.tolerance, recorded=recorded,
                                 source=f"llamakit pipeline, `make repro PROFILE={args.profile}`",
                                 spread=spread, spread_k=args.spread_k)
    out = args.out or registry_dir() / f"{args.name}.yaml"
    try:  # re-recording the same run (new spread runs, say) keeps the CPUs it was already checked on
        old = yaml.safe_load(out.read_text(encoding="utf-8")) if out.is_file() else None
    except (OSError, yaml.YAMLError):
        old = None
    old_rec = old.get("recorded") if isinstance(old, dict) and isinstance(old.get("recorded"), dict) else {}
    if old_rec.get("metrics_sha256") == recorded["metrics_sha256"]:
        doc["recorded"]["checked_on"] = list(old_rec.get("checked_on") or [])
    gate = ("tolerances measured from run-to-run spread (tolerance.derived)" if spread
            else "tolerance ~0: this entry is a determinism gate")
    header = ("# Recorded from a real pipeline run by `python -m llamakit.results record`; regenerate,\n"
              f"# do not hand-edit values. {gate[0].upper() + gate[1:]}.\n")
    atomic.write_text(out, header + yaml.safe_dump(doc, sort_keys=False, width=110, default_flow_style=None))
    load_result_file(out)
    print(f"wrote {out}")
    return 0


def _add_checked(report_dir: Path) -> int:
    """Append a gated report's machine and verdict to its reference entry's `recorded.checked_on`:
    which CPUs the reference has been reproduced on, and whether byte for byte or within tolerance."""
    from llamakit import atomic, report

    rep = report.load_report(report_dir)
    if rep.result.kind != "reference":
        raise ManifestError(f"'{rep.result.name}' is a {rep.result.kind} entry; checked_on is for references", path=rep.meta["result_file"])
    path = Path(rep.meta["result_file"])
    text = path.read_text(encoding="utf-8")
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    doc = yaml.safe_load(text)
    env = rep.provenance.get("environment") or {}
    cpu = env.get("cpu") or {}
    same = rep.meta["metrics_sha256"] == (doc.get("recorded") or {}).get("metrics_sha256")
    row = {"cpu": cpu.get("model") or (rep.provenance.get("machine") or {}).get("cpu"), "isa": cpu.get("isa"),
           "pins": cpu.get("pins") or {}, "commit": (rep.provenance.get("git") or {}).get("commit"),
           "finished": rep.meta.get("run_finished"),
           "verdict": ("byte-identical metrics" if same else "within tolerance") if rep.passed
           else f"NOT REPRODUCED ({len(rep.failures)} metrics outside tolerance)"}
    doc.setdefault("recorded", {}).setdefault("checked_on", []).append(row)
    ResultEntry.model_validate(doc)
    atomic.write_text(path, header + yaml.safe_dump(doc, sort_keys=False, width=110, default_flow_style=None))
    print(f"{path}: checked on {row['cpu']} ({row['isa']}): {row['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
