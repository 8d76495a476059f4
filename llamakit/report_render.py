"""Render a reproduction report as Markdown and as one self-contained HTML page.

The HTML embeds its plots as inline SVG drawn here (per-tag F1 reported vs reproduced, the loss
curve, the confusion matrix): no scripts, no fonts, no external resources, so it opens offline
and can be uploaded as a CI artifact as-is. Every string from a file is escaped.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Optional

# Functions here take a llamakit.report.Report ("Report" below, by duck typing: rows, failures, passed,
# provenance, meta, plots, result); this module imports nothing of ours, so report -> report_render only.

_REPORTED, _PASS, _FAIL, _GRID, _INK = "#9aa5b1", "#2b6cb0", "#c53030", "#e2e8f0", "#1a202c"


def fmt(x: Optional[float], decimals: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if float(x).is_integer() and abs(x) >= 1:
        return f"{int(x):,}"
    return f"{x:.{decimals}f}"


def fmt_delta(row) -> str:
    """A MetricRow's reproduced - reported."""
    if row.delta is None:
        return "—"
    if row.name.endswith(".support") and float(row.delta).is_integer():  # counts: whole words
        return f"{int(row.delta):+d}"
    return f"{row.delta:+.4f}"


def fmt_spread(row) -> tuple[str, str, str]:
    """A MetricRow's spread over several runs: sd, min–max, whether the reported value lies in that range."""
    s = row.runs
    if not s:
        return "—", "—", "—"
    return fmt(s["sd"]), f"{fmt(s['min'])}–{fmt(s['max'])}", "yes" if s["reported_within_range"] else "no"


def _runs_note(rep: "Report") -> list[str]:
    runs = rep.meta.get("runs")
    if not runs:
        return []
    return [f"{len(runs)} runs of one recipe; 'mean of runs' is their mean, sd the sample standard deviation (n − 1), "
            "'in range' whether the reported value lies within the runs' min–max. Runs: "
            + ", ".join(f"{r['metrics_file']} (sha256 {r['metrics_sha256'][:12]}…)" for r in runs)]


def _f(x: Optional[float], d: int = 4) -> str:
    return fmt(x, d)


def _verdict(rep: "Report") -> str:
    n, nf = len(rep.rows), len(rep.failures)
    return (f"REPRODUCED — all {n} metrics within tolerance" if rep.passed
            else f"NOT REPRODUCED — {nf} of {n} metrics outside tolerance: " + ", ".join(r.name for r in rep.failures[:12])
            + (" …" if nf > 12 else ""))


def _prov_rows(rep: "Report") -> list[tuple[str, str]]:
    p = rep.provenance
    git = p.get("git") or {}
    mach = p.get("machine") or {}
    train = p.get("train") or {}
    rows = [
        ("git commit", f"{git.get('commit') or '—'}" + (" (dirty: " + ", ".join(git.get("changed") or []) + ")" if git.get("dirty") else " (clean)" if git.get("commit") else "")),
        ("registry entry", rep.meta["result_file"]),
        ("metrics file", f"{rep.meta['metrics_file']} (sha256 {rep.meta['metrics_sha256'][:16]}…)"),
        ("split", f"{rep.meta.get('split')} — {rep.meta.get('n_sentences')} sentences, {rep.meta.get('n_words')} words"),
        ("seeds", json.dumps(p.get("seeds"))),
        ("threads", str(p.get("threads"))),
        ("device", str(train.get("device") or "—")),
        ("CPU", f"{mach.get('cpu')} — {mach.get('usable_cpus')} usable of {mach.get('logical_cpus')} logical, {mach.get('memory_gib')} GiB"),
        ("GPU", ", ".join(mach.get("gpus") or []) or "none"),
        ("platform", f"{mach.get('platform')}, Python {mach.get('python')}"),
    ]
    labels = {"wall_s": "train wall_s (this invocation)", "train_s": "train train_s (training loop, across resumes)"}
    for k in ("steps", "tokens_per_s", "final_loss", "wall_s", "train_s"):
        if k in train:
            rows.append((labels.get(k, f"train {k}"), str(train[k])))
    for m in train.get("members") or []:
        rows.append((f"ensemble member {m['member']}", f"overrides {json.dumps(m.get('overrides'))}: {m.get('steps')} steps, "
                     f"train_s {m.get('train_s')}, final loss {m.get('final_loss')}, resumed from step {m.get('resumed_from_step')}"))
    return rows


def _package_line(rep: "Report") -> str:
    return ", ".join(f"{k} {v}" for k, v in rep.provenance.get("packages", {}).items() if v)


def _lock_rows(rep: "Report") -> list[tuple[str, str, str]]:
    lock = rep.provenance.get("dvc_lock") or {}
    rows = []
    for stage, outs in (lock.get("outs") or {}).items():
        for o in outs:
            rows.append((stage, str(o.get("path")), str(o.get("md5"))))
    return rows


def _release_rows(rep: "Report") -> list[tuple[str, str, str]]:
    rel = rep.provenance.get("release_lock") or {}
    return [(str(f.get("path")), str(f.get("size")), str(f.get("sha256"))) for f in rel.get("files") or []]


def markdown(rep: "Report") -> str:
    e = rep.result
    icon = "✅" if rep.passed else "❌"
    out = [f"# {icon} Reproduction report: `{e.name}`", "", f"**{_verdict(rep)}**", "",
           f"- Held against: {e.title} — kind: {e.kind}", f"- Citation: {e.citation.source}"
           + (f" — {e.citation.table}" if e.citation.table else ""), f"- Model: {e.model}",
           f"- Run finished: {rep.meta['run_finished'] or '—'}", ""]
    several = bool(rep.meta.get("runs"))
    if several:
        out += _runs_note(rep) + ["", "| metric | reported | mean of runs | Δ | tolerance | sd | min–max | in range | |",
                                  "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    else:
        out += ["| metric | reported | reproduced | Δ | tolerance | |", "|---|---:|---:|---:|---:|---|"]
    for r in rep.rows:
        extra = "".join(f" {x} |" for x in fmt_spread(r)) if several else ""
        out.append(f"| `{r.name}` | {_f(r.reported)} | {_f(r.reproduced)} | {fmt_delta(r)} | {r.tolerance_label} |{extra} "
                   f"{'pass' if r.passed else '**FAIL**'} |")
    if any(r.at_least for r in rep.rows):
        out += ["", "`≥ −t`: one-sided — the reproduction may fall short of the reported value by at most t; "
                "exceeding it passes. `±t`: either way."]
    out += ["", "## Provenance", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v.replace('|', '/')} |" for k, v in _prov_rows(rep)]
    out += ["", f"Packages: {_package_line(rep)}", ""]
    timings = rep.provenance.get("timings") or {}
    if timings:
        out += ["### Wall time per stage", "", "| stage | wall s | cpu s | peak RSS MiB | finished |", "|---|---:|---:|---:|---|"]
        out += [f"| {k} | {v.get('wall_s')} | {v.get('cpu_s')} | {v.get('peak_rss_mib')} | {v.get('finished')} |" for k, v in timings.items()]
        out += [f"| **total** | {rep.provenance.get('total_wall_s')} | | | |", ""]
    lock_rows = _lock_rows(rep)
    if lock_rows:
        out += ["### Stage outputs (dvc.lock)", "", "| stage | output | md5 |", "|---|---|---|"]
        out += [f"| {s} | `{p}` | `{h}` |" for s, p, h in lock_rows] + [""]
    rel_rows = _release_rows(rep)
    if rel_rows:
        rel = rep.provenance["release_lock"]
        out += [f"### Release lock (`{rel.get('path')}`)", "", "| file | bytes | sha256 |", "|---|---:|---|"]
        out += [f"| `{p}` | {s} | `{h}` |" for p, s, h in rel_rows] + [""]
    out += ["### Metric definitions", ""]
    out += [f"- **{k}**: {v}" for k, v in e.definitions.items()] + [""]
    return "\n".join(out)


# --- SVG ------------------------------------------------------------------------


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{escape(label)}" '
            f'font-family="sans-serif" font-size="11">' + "".join(body) + "</svg>")


def _text(x: float, y: float, s: str, anchor: str = "start", size: int = 11, fill: str = _INK, extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{fill}"{extra}>{escape(s)}</text>'


def f1_chart(per_tag: list[dict]) -> str:
    """Grouped horizontal bars: reported (grey) and reproduced (blue, red when outside tolerance)."""
    if not per_tag:
        return ""
    lo = min([r["reported"] for r in per_tag] + [r["reproduced"] for r in per_tag if r["reproduced"] is not None])
    x0v = max(0.0, math.floor(lo * 10 - 1) / 10)  # zoom in: the interesting part is near 1.0
    left, width, row_h = 110, 420, 26
    height = 40 + row_h * len(per_tag)
    scale = lambda v: left + (v - x0v) / (1.0 - x0v) * width  # noqa: E731
    body = []
    for i in range(11):
        v = x0v + (1.0 - x0v) * i / 10
        x = scale(v)
        body.append(f'<line x1="{x:.1f}" y1="20" x2="{x:.1f}" y2="{height - 18}" stroke="{_GRID}"/>')
        body.append(_text(x, height - 5, f"{v:.2f}", "middle", 10))
    for j, r in enumerate(per_tag):
        y = 22 + j * row_h
        body.append(_text(left - 6, y + 14, r["tag"], "end"))
        body.append(f'<rect x="{left}" y="{y + 2}" width="{max(0.0, scale(r["reported"]) - left):.1f}" height="9" fill="{_REPORTED}"/>')
        if r["reproduced"] is not None:
            color = _PASS if r["passed"] else _FAIL
            body.append(f'<rect x="{left}" y="{y + 12}" width="{max(0.0, scale(r["reproduced"]) - left):.1f}" height="9" fill="{color}"/>')
    body.append(f'<rect x="{left + width - 190}" y="4" width="10" height="10" fill="{_REPORTED}"/>' + _text(left + width - 176, 13, "reported"))
    body.append(f'<rect x="{left + width - 110}" y="4" width="10" height="10" fill="{_PASS}"/>' + _text(left + width - 96, 13, "reproduced"))
    return _svg(left + width + 20, height, body, "per-tag F1, reported vs reproduced")


def loss_chart(points: list[tuple[float, float]]) -> str:
    if len(points) < 2:
        return ""
    left, top, width, height = 55, 15, 470, 200
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_lo, y_hi = min(0.0, min(ys)), max(ys) if max(ys) > 0 else 1.0
    sx = lambda v: left + (v - x_lo) / (x_hi - x_lo) * width  # noqa: E731
    sy = lambda v: top + height - (v - y_lo) / (y_hi - y_lo) * height  # noqa: E731
    body = []
    for i in range(5):
        yv = y_lo + (y_hi - y_lo) * i / 4
        body.append(f'<line x1="{left}" y1="{sy(yv):.1f}" x2="{left + width}" y2="{sy(yv):.1f}" stroke="{_GRID}"/>')
        body.append(_text(left - 5, sy(yv) + 4, f"{yv:.3g}", "end", 10))
        xv = x_lo + (x_hi - x_lo) * i / 4
        body.append(_text(sx(xv), top + height + 15, f"{xv:.0f}", "middle", 10))
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    body.append(f'<polyline fill="none" stroke="{_PASS}" stroke-width="1.5" points="{path}"/>')
    body.append(_text(left + width / 2, top + height + 30, "step", "middle"))
    body.append(_text(12, top + height / 2, "loss", "middle", extra=f' transform="rotate(-90 12 {top + height / 2:.1f})"'))
    return _svg(left + width + 15, top + height + 40, body, "fine-tune loss curve")


def confusion_chart(conf: Optional[dict]) -> str:
    """Heatmap of counts (rows gold, columns predicted), log-shaded so small classes stay visible."""
    if not conf:
        return ""
    labels, m = conf["labels"], conf["matrix"]
    n, cell, left, top = len(labels), 44, 70, 60
    peak = max((max(row) for row in m if row), default=1) or 1
    body = [_text(left + n * cell / 2, 14, "predicted", "middle"),
            _text(14, top + n * cell / 2, "gold", "middle", extra=f' transform="rotate(-90 14 {top + n * cell / 2:.1f})"')]
    for j, lab in enumerate(labels):
        x = left + j * cell + cell / 2
        body.append(_text(x, top - 8, lab, "start", 10, extra=f' transform="rotate(-45 {x:.1f} {top - 8})"'))
        body.append(_text(left - 6, top + j * cell + cell / 2 + 4, lab, "end", 10))
    for i, row in enumerate(m):
        for j, count in enumerate(row):
            shade = math.log1p(count) / math.log1p(peak) if count else 0.0
            light = int(255 - 200 * shade)
            fill = f"rgb({light},{light},255)" if i != j else f"rgb({light},255,{light})"
            x, y = left + j * cell, top + i * cell
            body.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#fff"/>')
            body.append(_text(x + cell / 2, y + cell / 2 + 4, str(count), "middle", 9, "#fff" if shade > 0.75 else _INK))
    return _svg(left + n * cell + 10, top + n * cell + 10, body, "confusion matrix")


# --- HTML -----------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#1a202c;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:3px 10px;border-bottom:1px solid #e2e8f0;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.pass{color:#276749}.fail{color:#c53030;font-weight:bold}
.verdict{font-size:1.2em;padding:.6em 1em;border-radius:6px}.ok{background:#f0fff4}.bad{background:#fff5f5}
code{font-size:.9em}figure{margin:1em 0}figcaption{color:#4a5568;font-size:.9em}"""


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    h = "".join(f"<th>{escape(c)}</th>" for c in header)
    num = ' class="n"'
    body = "".join("<tr>" + "".join(f"<td{num if i in numeric else ''}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def html(rep: "Report") -> str:
    e = rep.result
    several = bool(rep.meta.get("runs"))
    metric_rows = [[f"<code>{escape(r.name)}</code>", _f(r.reported), _f(r.reproduced), fmt_delta(r), r.tolerance_label,
                    *(fmt_spread(r) if several else ()),
                    '<span class="pass">pass</span>' if r.passed else '<span class="fail">FAIL</span>'] for r in rep.rows]
    header = ["metric", "reported", "mean of runs" if several else "reproduced", "Δ", "tolerance",
              *(("sd", "min–max", "in range") if several else ()), ""]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Reproduction report: {escape(e.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Reproduction report: <code>{escape(e.name)}</code></h1>",
        f'<p class="verdict {"ok" if rep.passed else "bad"}">{escape(_verdict(rep))}</p>',
        f"<p>Held against <b>{escape(e.title)}</b> — kind: {escape(e.kind)}.<br>Citation: {escape(e.citation.source)}"
        + (f" — {escape(e.citation.table)}" if e.citation.table else "")
        + (f" ({escape(e.citation.url)})" if e.citation.url else "")
        + f"<br>Model: {escape(e.model)}<br>Run finished: {escape(str(rep.meta['run_finished'] or '—'))}</p>",
        "<h2>Metrics</h2>", *(f"<p>{escape(n)}</p>" for n in _runs_note(rep)),
        _table(header, metric_rows, {1, 2, 3, 4, 5, 6} if several else {1, 2, 3, 4}),
        "<h2>Plots</h2>",
    ]
    for title, svg in (("Per-tag F1: reported (grey) vs reproduced", f1_chart(rep.plots.get("per_tag_f1") or [])),
                       ("Fine-tune loss", loss_chart(rep.plots.get("loss") or [])),
                       ("Confusion matrix (rows gold, columns predicted)", confusion_chart(rep.plots.get("confusion")))):
        parts.append(f"<figure>{svg}<figcaption>{escape(title)}</figcaption></figure>" if svg
                     else f"<p><i>{escape(title)}: no data</i></p>")
    parts += ["<h2>Provenance</h2>", _table(["", ""], [[escape(k), escape(v)] for k, v in _prov_rows(rep)]),
              f"<p>Packages: {escape(_package_line(rep))}</p>"]
    timings = rep.provenance.get("timings") or {}
    if timings:
        rows = [[escape(k), str(v.get("wall_s")), str(v.get("cpu_s")), str(v.get("peak_rss_mib")), escape(str(v.get("finished")))]
                for k, v in timings.items()]
        rows.append(["<b>total</b>", str(rep.provenance.get("total_wall_s")), "", "", ""])
        parts += ["<h3>Wall time per stage</h3>", _table(["stage", "wall s", "cpu s", "peak RSS MiB", "finished"], rows, {1, 2, 3})]
    if _lock_rows(rep):
        parts += ["<h3>Stage outputs (dvc.lock)</h3>",
                  _table(["stage", "output", "md5"], [[escape(s), f"<code>{escape(p)}</code>", f"<code>{escape(h)}</code>"] for s, p, h in _lock_rows(rep)])]
    if _release_rows(rep):
        parts += [f"<h3>Release lock <code>{escape(str(rep.provenance['release_lock'].get('path')))}</code></h3>",
                  _table(["file", "bytes", "sha256"], [[f"<code>{escape(p)}</code>", escape(s), f"<code>{escape(h)}</code>"] for p, s, h in _release_rows(rep)], {1})]
    parts += ["<h3>Metric definitions</h3><dl>"] + [f"<dt><b>{escape(k)}</b></dt><dd>{escape(v)}</dd>" for k, v in e.definitions.items()]
    parts += ["</dl></body></html>", ""]
    return "\n".join(parts)
