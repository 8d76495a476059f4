"""Hold reproduced metrics against a registry entry and say, metric by metric, whether they match.

`build_report` reads `metrics.json` (from `llamakit evaluate`) and a `manifests/results/` entry,
compares every metric the entry lists (|reproduced - reported| <= tolerance, or for the entry's
`at_least` metrics reproduced >= reported - tolerance), gathers provenance
(git, dvc.lock, the release lock, packages, machine, seeds, threads, per-stage wall time) and
writes, each atomically, into OUT:

  report.json      everything, machine-readable
  report.md        the same for people (and for $GITHUB_STEP_SUMMARY)
  report.html      self-contained page with inline SVG plots (no network, no scripts)
  per_tag_f1.csv   tag, reported, reproduced — data for `dvc plots`
  loss.tsv         the fine-tune loss curve (copied from dvclive) when a run dir is given

`Report.raise_for_failures()` is the `--check` gate: errors.ReproductionFailed naming each metric
outside tolerance. A metric the entry lists but metrics.json lacks counts as a failure.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from llamakit import atomic, provenance, results, spread
from llamakit.run_record import RunRecord, read_json, read_run
from llamakit.errors import InputFileError, MetricFailure, ReproductionFailed, UsageError

REPORT_SCHEMA = "llamakit/report/v1"
# Float noise guard: reported values and tolerances are decimal literals.
_EPS = 1e-9


@dataclass
class MetricRow:
    name: str
    reported: float
    reproduced: Optional[float]
    tolerance: float
    at_least: bool = False  # one-sided: only falling short by more than the tolerance fails
    delta: Optional[float] = None
    passed: bool = False
    runs: Optional[dict] = None  # several runs (seeds): spread.RunSpread as JSON; `reproduced` is their mean

    def __post_init__(self) -> None:
        if self.reproduced is not None:
            self.delta = self.reproduced - self.reported
            worst = -self.delta if self.at_least else abs(self.delta)
            self.passed = worst <= self.tolerance + _EPS

    @property
    def tolerance_label(self) -> str:
        return f"≥ −{self.tolerance:g}" if self.at_least else f"±{self.tolerance:g}"


@dataclass
class Report:
    result: results.ResultEntry
    metrics_path: Path
    out_dir: Path
    rows: list[MetricRow]
    provenance: dict[str, Any]
    meta: dict[str, Any]
    plots: dict[str, Any] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    @property
    def failures(self) -> list[MetricRow]:
        return [r for r in self.rows if not r.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def raise_for_failures(self) -> None:
        if self.failures:
            raise ReproductionFailed(
                [MetricFailure(r.name, r.reported, r.reproduced if r.reproduced is not None else math.nan, r.tolerance,
                               r.at_least)
                 for r in self.failures],
                path=self.out_dir / "report.json",
            )

    def to_json(self) -> dict[str, Any]:
        entry = self.result
        return {
            "schema": REPORT_SCHEMA,
            "run_finished": self.meta["run_finished"],
            "passed": self.passed,
            "n_metrics": len(self.rows),
            "n_failed": len(self.failures),
            "failed": [r.name for r in self.failures],
            "result": {
                "name": entry.name, "kind": entry.kind, "title": entry.title, "model": entry.model,
                "profile": entry.profile, "citation": entry.citation.model_dump(exclude_none=True),
                "dataset": entry.dataset.model_dump(exclude_none=True), "decimals": entry.decimals,
                "definitions": entry.definitions, "file": self.meta["result_file"],
            },
            "evaluation": {k: self.meta[k] for k in ("metrics_file", "metrics_sha256", "split", "n_sentences", "n_words", "runs")
                           if k in self.meta},
            "result_sha256": self.meta["result_sha256"],
            "metrics": [asdict(r) for r in self.rows],
            "provenance": self.provenance,
        }


def compare(metrics: dict | list[dict], entry: results.ResultEntry) -> list[MetricRow]:
    """One run's metrics, or several runs' (seeds): then each row holds their mean and spread."""
    reported = entry.flat_metrics()
    if isinstance(metrics, dict) or len(metrics) == 1:
        one = metrics if isinstance(metrics, dict) else metrics[0]
        return [MetricRow(name, value, results.lookup(one, name), entry.tolerance_for(name), entry.at_least(name))
                for name, value in reported.items()]
    combined = spread.combine(metrics, list(reported), reported, results.lookup)
    return [MetricRow(name, value, combined[name][0], entry.tolerance_for(name), entry.at_least(name),
                      runs=combined[name][1].to_json() if combined[name][1] else None)
            for name, value in reported.items()]


def _confusion(metrics_path: Path) -> Optional[dict]:
    path = metrics_path.parent / "confusion.json"
    if not path.is_file():
        return None
    doc = read_json(path, "confusion.json")
    labels, matrix = doc.get("labels"), doc.get("matrix")
    if not (isinstance(labels, list) and isinstance(matrix, list) and len(matrix) == len(labels)):
        raise InputFileError("confusion.json needs `labels` and a square `matrix`", path=path)
    return {"labels": labels, "matrix": matrix}


def _per_tag(rows: list[MetricRow]) -> list[dict]:
    """token.<tag>.f1 rows (tags and averages) for the F1 plot, in registry order."""
    out = []
    for r in rows:
        parts = r.name.split(".")
        if len(parts) == 3 and parts[0] == "token" and parts[2] == "f1":
            out.append({"tag": parts[1], "reported": r.reported, "reproduced": r.reproduced, "passed": r.passed})
    return out


def _upstream_outputs(dvc_lock: Path, out_dir: Path) -> dict[str, list[dict]]:
    """dvc.lock's stage outputs minus the stage that writes this report: while it runs, its own
    entry still describes the previous report, and leaving it out keeps the report a pure
    function of its inputs (so `llamakit report` rerun by hand rewrites identical bytes)."""
    mine = {(out_dir / n).resolve() for n in ("report.json", "report.md", "report.html")}
    base = dvc_lock.resolve().parent
    return {stage: outs for stage, outs in provenance.dvc_lock_outputs(dvc_lock).items()
            if not any((base / str(o.get("path"))).resolve() in mine for o in outs)}


def collect_provenance(*, run: RunRecord, timings_dir: Optional[Path], dvc_lock: Optional[Path],
                       release_lock: Optional[Path], repo_root: Path, out_dir: Path) -> dict[str, Any]:
    """Everything here must be stable across reruns with the same inputs: no clock, no PIDs."""
    train = run.train
    timings = provenance.read_timings(timings_dir) if timings_dir is not None else {}
    return {
        "git": provenance.git_state(repo_root),
        "dvc_lock": {"path": str(dvc_lock), "outs": _upstream_outputs(dvc_lock, out_dir)} if dvc_lock else None,
        "release_lock": provenance.release_lock(release_lock) if release_lock else None,
        "packages": provenance.package_versions(),
        "machine": provenance.machine(),
        # the CPU as the fine-tune saw it (its ISA pins are set in that process, not this one)
        "environment": {**provenance.environment(repo_root / provenance.LOCK_FILE),
                        **({"cpu": train["cpu"]} if train.get("cpu") else {})},
        "threads": train.get("threads"),
        "seeds": train.get("seeds"),
        "train": train,
        "timings": timings,
        "total_wall_s": round(sum(t.get("wall_s", 0.0) for t in timings.values()), 3) if timings else None,
    }


def build_report(metrics_path: str | Path | list, result_name_or_path: str | Path, out_dir: str | Path, *,
                 run_dir: str | Path | None = None, timings_dir: str | Path | None = None,
                 dvc_lock: str | Path | None = "dvc.lock", release_lock: str | Path | None = None,
                 repo_root: str | Path = ".") -> Report:
    """`metrics_path`: one metrics.json, or a list of several runs of one recipe (llamakit/spread.py)."""
    paths = [Path(p) for p in metrics_path] if isinstance(metrics_path, (list, tuple)) else [Path(metrics_path)]
    metrics_path, out_dir = paths[0], Path(out_dir)
    _check_provenance_inputs(Path(dvc_lock) if dvc_lock is not None else None,
                             Path(release_lock) if release_lock is not None else None)
    run = read_run(Path(run_dir) if run_dir is not None else None)
    entry = results.load_result(result_name_or_path)
    runs = [read_json(p, "metrics.json") for p in paths]
    metrics = runs[0]
    split = metrics.get("split")
    for p, m in zip(paths, runs):
        if m.get("split") is not None and m.get("split") != entry.dataset.split:
            raise UsageError(f"metrics are for split '{m.get('split')}' but registry entry '{entry.name}' reports split "
                             f"'{entry.dataset.split}'", path=p,
                             fix=f"evaluate with --split {entry.dataset.split} or choose another --result")
    if len({(m.get("n_sentences"), m.get("n_words")) for m in runs}) > 1:
        raise UsageError("the runs were scored on different data (sentence or word counts differ)", path=paths[-1],
                         fix="pass metrics.json files of one recipe, each evaluated on the same split")
    rows = compare(runs, entry)
    meta = {
        "result_file": str(results.resolve(result_name_or_path)),
        "metrics_file": str(metrics_path),
        "metrics_sha256": _sha256(metrics_path),
        "result_sha256": _sha256(results.resolve(result_name_or_path)),
        "split": split, "n_sentences": metrics.get("n_sentences"), "n_words": metrics.get("n_words"),
    }
    if len(paths) > 1:
        meta["runs"] = [{"metrics_file": str(p), "metrics_sha256": _sha256(p)} for p in paths]
    prov = collect_provenance(
        run=run, timings_dir=Path(timings_dir) if timings_dir is not None else None,
        dvc_lock=Path(dvc_lock) if dvc_lock is not None else None,
        release_lock=Path(release_lock) if release_lock is not None else None, repo_root=Path(repo_root), out_dir=out_dir)
    finished = [t.get("finished") for t in prov["timings"].values() if t.get("finished")]
    meta["run_finished"] = max(finished) if finished else None
    rep = Report(entry, metrics_path, out_dir, rows, prov, meta)
    rep.plots = {"per_tag_f1": _per_tag(rows), "loss": run.loss, "confusion": _confusion(metrics_path)}
    write_report(rep)
    return rep


def _check_provenance_inputs(dvc_lock: Optional[Path], release_lock: Optional[Path]) -> None:
    """A --dvc-lock or --release-lock that is there but is not one is refused, not recorded as empty
    provenance. (A missing default dvc.lock is allowed: a report built outside a DVC checkout.)"""
    if dvc_lock is not None and dvc_lock.exists():
        import yaml

        try:
            doc = yaml.safe_load(dvc_lock.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InputFileError(f"dvc.lock is not readable YAML ({type(exc).__name__})", path=dvc_lock,
                                 fix="pass the dvc.lock `dvc repro` wrote (--dvc-lock)") from None
        stages = doc.get("stages") if isinstance(doc, dict) else None
        if not isinstance(stages, dict) or not all(isinstance(b, dict) and isinstance(b.get("outs", []), list)
                                                   for b in stages.values()):
            what = type(doc).__name__ if not isinstance(doc, dict) else "no `stages:` mapping of stages with `outs:` lists"
            raise InputFileError(f"not a dvc.lock ({'a YAML ' + what if not isinstance(doc, dict) else what})",
                                 path=dvc_lock, fix="pass the dvc.lock `dvc repro` wrote (--dvc-lock)")
    if release_lock is not None:
        doc = read_json(release_lock, "release lock")  # missing, unreadable or not an object: InputFileError
        files = doc.get("files")
        if not isinstance(files, (list, dict)) or not files:
            raise InputFileError("not a release lock (no `files` list)", path=release_lock,
                                 fix="pass a lock from manifests/locks/ (`llamakit lock MODEL` writes one)")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_report(out_dir: str | Path) -> Report:
    """The report a pipeline run already wrote in OUT, for the gate: no rebuild, so its
    provenance (the commit that produced the run) stays what it was. Refuses a stale report:
    the metrics file and registry entry must still hash as they did when it was written."""
    out_dir = Path(out_dir)
    path = out_dir / "report.json"
    doc = read_json(path, "report.json")
    if doc.get("schema") != REPORT_SCHEMA:
        raise InputFileError(f"not a {REPORT_SCHEMA} report", path=path, fix="rerun `llamakit report` with --metrics and --result")
    try:
        metrics_path = Path(doc["evaluation"]["metrics_file"])
        result_file = Path(doc["result"]["file"])
        want = {metrics_path: doc["evaluation"]["metrics_sha256"], result_file: doc["result_sha256"]}
        runs = [Path(r["metrics_file"]) for r in doc["evaluation"].get("runs") or []]
        want.update({Path(r["metrics_file"]): r["metrics_sha256"] for r in doc["evaluation"].get("runs") or []})
    except (KeyError, TypeError) as exc:
        raise InputFileError(f"report.json lacks {exc}", path=path, fix="rerun `llamakit report` with --metrics and --result") from exc
    for src, digest in want.items():
        if not src.is_file() or _sha256(src) != digest:
            raise InputFileError(f"report is stale: {src} changed since the report was written", path=path,
                                 fix="run `dvc repro` (or `llamakit report` with --metrics and --result) first")
    entry = results.load_result_file(result_file)
    metrics = [read_json(p, "metrics.json") for p in runs or [metrics_path]]
    meta = {"result_file": str(result_file), "metrics_file": str(metrics_path), "metrics_sha256": want[metrics_path],
            "result_sha256": want[result_file], "run_finished": doc.get("run_finished"),
            **{k: doc["evaluation"].get(k) for k in ("split", "n_sentences", "n_words")},
            **({"runs": doc["evaluation"]["runs"]} if runs else {})}
    return Report(entry, metrics_path, out_dir, compare(metrics, entry), doc.get("provenance") or {}, meta)


def build_or_load(metrics_path: str | Path | list | None, result_name_or_path: str | Path | None, out_dir: str | Path, *,
                  timings_dir: str | Path | None = None, **kwargs: Any) -> Report:
    """`llamakit report`: build from --metrics and --result, or (neither given) load OUT's report."""
    if metrics_path is None and result_name_or_path is None:
        return load_report(out_dir)
    if metrics_path is None or result_name_or_path is None:
        raise UsageError("--metrics and --result go together", fix="pass both to build a report, or neither (with --check) to gate the one in --out")
    if timings_dir is None and provenance.TIMINGS_DIR.is_dir():
        timings_dir = provenance.TIMINGS_DIR
    return build_report(metrics_path, result_name_or_path, out_dir, timings_dir=timings_dir, **kwargs)


def write_report(rep: Report) -> list[Path]:
    from llamakit import report_render

    out = rep.out_dir
    files = {
        "report.json": json.dumps(rep.to_json(), indent=2, default=str) + "\n",
        "report.md": report_render.markdown(rep),
        "report.html": report_render.html(rep),
        "per_tag_f1.csv": _per_tag_csv(rep.plots["per_tag_f1"]),
    }
    if rep.plots["loss"]:
        files["loss.tsv"] = "step\tloss\n" + "".join(f"{int(s) if s == int(s) else s}\t{v!r}\n" for s, v in rep.plots["loss"])
    # Rendered first, then all written into a staging directory inside OUT and renamed into place: a
    # failed write (disk full, read-only) is LocalIOError (exit 4) and leaves OUT as it was.
    created = not out.exists()
    stage = None
    try:
        with atomic.local_io(out, fix="choose a writable --out"):
            out.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".report.tmp-", dir=out))
            for name, text in files.items():
                atomic.write_text(stage / name, text)
            written = []
            for name in files:
                os.replace(stage / name, out / name)
                written.append(out / name)
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    rep.written = written
    return written


def _per_tag_csv(per_tag: list[dict]) -> str:
    lines = ["tag,reported,reproduced"]
    for row in per_tag:
        rep = "" if row["reproduced"] is None else repr(row["reproduced"])
        lines.append(f"{row['tag']},{row['reported']!r},{rep}")
    return "\n".join(lines) + "\n"


def summary(rep: Report):
    """One screen: verdict, the F1 rows (all rows when few), failures, and provenance in a few lines."""
    from llamakit.report_render import fmt, fmt_delta, fmt_spread  # rendering lives there; report_render imports nothing of ours
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    shown = rep.rows if len(rep.rows) <= 16 else [r for r in rep.rows if r.name.endswith(".f1") or not r.passed]
    failed_hidden = 0
    if len(shown) > 20:  # keep one screen: all failures first, then passes until full
        fails = [r for r in shown if not r.passed]
        shown = (fails + [r for r in shown if r.passed])[:20]
        failed_hidden = max(0, len(fails) - 20)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    several = any(r.runs for r in rep.rows)
    cols = (("metric", "left"), ("reported", "right"), ("mean of runs" if several else "reproduced", "right"), ("Δ", "right"),
            ("tol", "right"), *((("sd", "right"), ("min–max", "right"), ("in range", "left")) if several else ()), ("", "left"))
    for col, just in cols:
        table.add_column(col, justify=just)
    for r in shown:
        mark = Text("pass", style="green") if r.passed else Text("FAIL", style="bold red")
        extra = fmt_spread(r) if several else ()
        table.add_row(r.name, fmt(r.reported), fmt(r.reproduced), fmt_delta(r), r.tolerance_label, *extra, mark)
    n, nf = len(rep.rows), len(rep.failures)
    verdict = (Text(f"REPRODUCED — all {n} metrics within tolerance", style="bold green") if rep.passed
               else Text(f"NOT REPRODUCED — {nf} of {n} metrics outside tolerance", style="bold red"))
    prov = rep.provenance
    git = prov.get("git") or {}
    commit = (git.get("commit") or "no git")[:12] + (" (dirty)" if git.get("dirty") else "")
    mach = prov.get("machine") or {}
    device = ", ".join(mach.get("gpus") or []) or f"{mach.get('cpu') or 'cpu'}"
    lines = [
        f"commit {commit} · seeds {_short(prov.get('seeds'))} · threads {prov.get('threads') or '—'}",
        f"{device} ({mach.get('usable_cpus')} cpus) · torch {(prov.get('packages') or {}).get('torch') or '—'}",
    ]
    timings = prov.get("timings") or {}
    if timings:
        lines.append("wall " + " · ".join(f"{k} {v.get('wall_s', 0):.0f}s" for k, v in timings.items())
                     + f" · total {prov.get('total_wall_s', 0):.0f}s")
    lines.append(f"report → {rep.out_dir / 'report.html'}")
    parts = [verdict]
    if several:
        parts.append(Text(spread.summary_line(rep.rows)))
    differences = environment_differences(rep)
    if differences:
        parts.append(Text("This run's environment differs from the reference's:\n" + "\n".join(f"  {d}" for d in differences),
                          style="yellow"))
    parts.append(table)
    if len(shown) < n:
        parts.append(Text(f"({n - len(shown)} passing non-F1 rows not shown"
                          + (f"; {failed_hidden} more failures" if failed_hidden else "") + "; see report.md)", style="dim"))
    parts.append(Text("\n".join(lines), style="dim"))
    title = f"{rep.result.name} · {rep.result.kind} · {rep.meta.get('split') or rep.result.dataset.split}"
    return Panel(Group(*parts), title=title, border_style="green" if rep.passed else "red", expand=False)


def environment_differences(rep: Report) -> list[str]:
    """CPU, ISA pins, dependency lock and package versions where this run and the reference entry's
    recorded run differ: the first things to look at when a reference gate fails."""
    theirs = (rep.result.recorded or {}).get("environment")
    ours = rep.provenance.get("environment")
    if not theirs or not ours:
        return []
    return provenance.environment_differences(ours, theirs)


def _short(seeds: Any) -> str:
    if isinstance(seeds, dict):
        return ",".join(f"{k}={v}" for k, v in seeds.items()) or "—"
    return "—" if seeds is None else str(seeds)
