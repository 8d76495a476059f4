"""Rich renderings of the catalog (kept apart so `llamakit.catalog` never imports rich)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _tokens(n: int) -> str:
    # 131072 -> "128K", 10485760 -> "10M": how release notes state context.
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % (size // 4) == 0:
            return f"{n / size:g}{unit}"
    return str(n)


_COLUMNS = ("name", "family", "params", "context", "MP", "formats", "gated", "licence")


def _row(r) -> tuple[str, ...]:
    mp = "-" if r.mp_shards is None else str(r.mp_shards)
    return (r.name, r.family, r.params, _tokens(r.context_length), mp, ",".join(r.formats), _yes(r.gated), r.license)


class _ReleasesTable:
    """The full table where it fits the console; else name + one wrapped details column."""

    def __init__(self, releases):
        self.rows = [_row(r) for r in releases]

    def _table(self, compact: bool) -> Table:
        t = Table(
            title=f"llamakit catalog: {len(self.rows)} releases", title_justify="left",
            caption="MP: model-parallel shards of the original (Meta) checkpoint", caption_justify="left",
            box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=compact,
        )
        t.add_column("name", style="bold", no_wrap=True)
        if compact:
            # One line per release in 80 columns: family and licence move to a heading row per family.
            for col in ("params", "ctx", "MP", "formats", "gated"):
                t.add_column(col, no_wrap=True, justify="right" if col in ("params", "ctx", "MP") else "left")
            families: dict[str, list[tuple]] = {}
            for row in self.rows:
                families.setdefault(row[1], []).append(row)
            for fam, rows in families.items():
                licences = ", ".join(dict.fromkeys(r[7] for r in rows))
                t.add_row(f"[not bold cyan]{fam}[/] [dim]· {licences}[/]", "", "", "", "", "")
                for name, _fam, params, ctx, mp, fmts, gated, _lic in rows:
                    t.add_row(name, params, ctx, mp, fmts, gated)
                t.rows[-1].end_section = True
        else:
            for col in _COLUMNS[1:]:
                t.add_column(col, no_wrap=True, justify="right" if col in ("params", "context", "MP") else "left")
            for row in self.rows:
                t.add_row(*row)
        return t

    def __rich_console__(self, console: Console, options: ConsoleOptions):
        full = self._table(compact=False)
        fits = Measurement.get(console, options.update(width=10_000), full).maximum <= options.max_width
        yield full if fits else self._table(compact=True)


def releases_table(releases) -> _ReleasesTable:
    return _ReleasesTable(releases)


def _kv_table(title: str, rows: dict[str, Any]) -> Table:
    t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column(style="cyan", no_wrap=True)
    t.add_column()
    for k, v in rows.items():
        t.add_row(k, "-" if v is None else str(v))
    return t


def info_panel(info: dict[str, Any]) -> Panel:
    summary = {k: info.get(k) for k in ("family", "params", "variant", "context_length", "original_shards", "formats", "gated", "license")}
    summary["formats"] = ", ".join(info.get("formats", []))
    summary["gated"] = _yes(bool(summary["gated"]))
    for k in ("quantization", "notes", "aliases"):
        if k in info:
            summary[k] = info[k]
    parts = [
        _kv_table("release", summary),
        _kv_table("HF config.json", info["hf_config"]),
        _kv_table("Meta params.json", info["params_json"]),
    ]
    if "moe" in info:  # the experts' width is derived (catalog.MoE), shown beside the params it comes from
        parts.append(_kv_table("moe", {**info["moe"], "expert width (HF intermediate_size)": info.get("expert_intermediate_size")}))
    for extra, title in (("vision", "vision"), ("params_extra", "layer options (params.json)")):
        if extra in info:  # a nested table (Llama 4's vision encoder) shows as "encoder <key>" rows
            flat = {k: v for k, v in info[extra].items() if not isinstance(v, dict)}
            flat.update({f"{k} {kk}": vv for k, v in info[extra].items() if isinstance(v, dict) for kk, vv in v.items()})
            parts.append(_kv_table(title, flat))
    src = info.get("sources", {})
    rows: dict[str, Any] = {}
    if "hf" in src:
        h = src["hf"]
        rows["hub"] = h["repo"] + (f"@{h['revision']}" if h.get("revision") else "")
        if h.get("original_dir") is not None:
            rows["hub original"] = f"{h.get('original_repo') or h['repo']}/{h['original_dir']}".rstrip("/")
    if "meta_url" in src:
        files = src["meta_url"]["files"]
        rows["meta url"] = f"{len(files)} files: {files[0]} … {files[-1]}" if len(files) > 2 else ", ".join(files)
    if "pypi" in src:
        p = src["pypi"]
        rows["pypi"] = f"{p['package']}=={p['version']} → {p['file']}"
    parts.append(_kv_table("sources", rows))
    parts.append(_kv_table("", {"catalog file": info.get("catalog_file")}))
    return Panel(Group(*parts), title=info["name"], title_align="left")
