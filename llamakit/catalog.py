"""The release catalog: every Llama release a user meets, as validated data.

The data lives in `manifests/catalog/*.yaml`, one file per family: family-wide
defaults, named architecture presets (Meta `params.json` fields) and the
releases. `llamakit.catalog_schema` validates it; this module loads it, expands
what is repetitive (shard file names, hub layout) and answers lookups.

No torch, no transformers, no rich at import time: `llamakit list` must be instant.
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llamakit.catalog_schema import (  # noqa: F401  (re-exported: the catalog's public types)
    Catalog,
    CatalogFile,
    Format,
    HFSource,
    MetaLayout,
    MetaParams,
    MetaURLSource,
    MoE,
    PyPISource,
    Release,
    RopeScaling,
    Sources,
    Vision,
    ffn_hidden_dim,
)
from llamakit.errors import ManifestError, UnknownModelError, UsageError


def _checkout_manifests() -> Path | None:
    """The source tree's manifests/ when llamakit runs from a checkout (or an editable install)."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "manifests" / "catalog").is_dir():
        return root / "manifests"
    return None


def packaged_manifests() -> Path | None:
    """The copy of manifests/ inside the installed package (the wheel's llamakit/manifests/)."""
    from importlib.resources import files

    here = files("llamakit").joinpath("manifests")
    # A zipped install would give a non-filesystem Traversable; llamakit needs real paths (locks are opened by path).
    return Path(str(here)) if isinstance(here, Path) and here.joinpath("catalog").is_dir() else None


def manifests_dir() -> Path:
    """Where the catalog, locks, datasets, recipes and reported results are read from.

    `$LLAMAKIT_MANIFESTS` (a user's own directory) wins; else a source checkout's
    `manifests/`; else the copy shipped in the installed wheel (importlib.resources).
    """
    env = os.environ.get("LLAMAKIT_MANIFESTS")
    if env:
        return Path(env)
    found = _checkout_manifests() or packaged_manifests()
    if found is None:
        raise ManifestError("this llamakit installation has no manifests/ (catalog, locks)", path=Path(__file__).parent,
                            fix="reinstall llamakit from its wheel, or set LLAMAKIT_MANIFESTS to a directory with catalog/*.yaml")
    return found


def is_packaged(path: Path) -> bool:
    """Whether `path` lies in the installed package's read-only data (not a place to write locks)."""
    pkg = packaged_manifests()
    return pkg is not None and _checkout_manifests() is None and Path(path).resolve().is_relative_to(pkg.resolve())


def _loc(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _invalid(path: Path, where: str, err: ValidationError) -> ManifestError:
    first = err.errors()[0]
    field = ".".join(x for x in (where, _loc(first["loc"])) if x)
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return ManifestError(f"invalid field '{field}': {first['msg']}{more}", path=path, fix="fix the catalog entry (the schema is llamakit/catalog_schema.py)")


# Entry keys that are shorthands for something this module builds.
_SHORTHANDS = ("arch", "hf", "meta_folder", "meta_local_folder", "shard_patterns")


def _expand(cf: CatalogFile, entry: dict[str, Any], path: Path, where: str) -> dict[str, Any]:
    defaults = {k: v for k, v in cf.defaults.items() if k not in _SHORTHANDS}
    raw = {**defaults, "family": cf.family, **{k: v for k, v in entry.items() if k not in _SHORTHANDS}}
    meta = dict(raw.get("meta") or {})
    arch = entry.get("arch", cf.defaults.get("arch"))
    if arch is not None:
        if arch not in cf.architectures:
            raise ManifestError(
                f"invalid field '{where}.arch': unknown preset '{arch}' (have: {', '.join(cf.architectures)})",
                path=path, fix="add it under `architectures:` or fix the name",
            )
        meta = {**cf.architectures[arch], **meta}
    raw["meta"] = meta
    sources = dict(raw.get("sources") or {})
    hf = entry.get("hf")
    if hf is not None:
        hf = {"repo": hf} if isinstance(hf, str) else dict(hf)
        sources["hf"] = {**(cf.defaults.get("hf") or {}), **hf}
    folder = entry.get("meta_folder")
    if folder is not None:
        mp = raw.get("mp_shards")
        # A bad mp_shards is left for Release validation to report by name.
        if isinstance(mp, int) and mp >= 1:
            layout = cf.meta_layout
            if "shard_patterns" in entry:
                layout = layout.model_copy(update={"shard_patterns": list(entry["shard_patterns"])})
            sources["meta_url"] = layout.source(folder, mp, local_folder=entry.get("meta_local_folder")).model_dump()
    raw["sources"] = sources
    return raw


def _load_file(path: Path) -> tuple[int, list[Release]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read catalog file: {exc.strerror}", path=path) from exc
    try:
        # libyaml when present: the catalog is parsed on every `list`/`info`.
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"not valid YAML: {where}{' '.join(problem.split())}", path=path, fix="fix the YAML syntax") from exc
    if not isinstance(data, dict):
        raise ManifestError("catalog file must be a mapping with `family` and `releases`", path=path)
    try:
        cf = CatalogFile.model_validate(data)
    except ValidationError as exc:
        raise _invalid(path, "", exc) from exc
    # Presets are complete MetaParams, so a bad number is reported where it is written.
    for key, preset in cf.architectures.items():
        try:
            MetaParams.model_validate(preset)
        except ValidationError as exc:
            raise _invalid(path, f"architectures.{key}", exc) from exc
    out = []
    for i, entry in enumerate(cf.releases):
        where = f"releases[{i}]" + (f" ({entry['name']})" if isinstance(entry.get("name"), str) else "")
        try:
            out.append(Release.model_validate(_expand(cf, entry, path, where)))
        except ValidationError as exc:
            raise _invalid(path, where, exc) from exc
    return cf.order, out


@lru_cache(maxsize=8)
def _load_cached(root: str, stamp: tuple) -> Catalog:
    releases: dict[str, Release] = {}
    files: dict[str, str] = {}
    loaded = sorted(((*_load_file(p), p) for p in sorted(Path(root).glob("*.yaml"))), key=lambda t: t[0])
    for _order, rels, path in loaded:
        for rel in rels:
            if rel.name in releases:
                raise ManifestError(f"duplicate release '{rel.name}' (also in {files[rel.name]})", path=path, fix="rename one of them")
            releases[rel.name] = rel
            files[rel.name] = str(path)
    if not releases:
        raise ManifestError("no catalog files (*.yaml) found", path=root, fix="set LLAMAKIT_MANIFESTS to a directory with catalog/*.yaml")
    return Catalog(releases=releases, files=files, index=_index(releases, files))


def load_catalog(root: Path | None = None) -> Catalog:
    """Load and validate `<root>/catalog/*.yaml` (root defaults to manifests_dir())."""
    cat_dir = (Path(root) if root is not None else manifests_dir()) / "catalog"
    # Key the cache on every file's mtime and size so an edited catalog is re-read.
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(cat_dir.glob("*.yaml")))
    return _load_cached(str(cat_dir), stamp)


def _index(releases: dict[str, Release], files: dict[str, str]) -> dict[str, str]:
    """Lower-cased name/alias/hub repo -> release name. Names and aliases must be
    unique; a hub repo shared by variants (405B MP8/MP16) resolves to the first."""
    index = {name.lower(): name for name in releases}
    for rel in releases.values():
        for key in rel.aliases:
            other = index.setdefault(key.lower(), rel.name)
            if other != rel.name:
                raise ManifestError(f"alias '{key}' of '{rel.name}' already names '{other}'", path=files[rel.name], fix="drop or rename the alias")
    for rel in releases.values():
        hf = rel.sources.hf
        for repo in (hf.repo, hf.original_repo) if hf else ():
            if repo:
                index.setdefault(repo.lower(), rel.name)
    return index


def get_release(name: str) -> Release:
    """A release by name, alias or HF repo id (case-insensitive)."""
    cat = load_catalog()
    hit = cat.index.get(name.strip().lower())
    if hit is None:
        close = difflib.get_close_matches(name.strip().lower(), cat.names(), n=3, cutoff=0.6)
        raise UnknownModelError(name, close)
    return cat.releases[hit]


def list_releases(family: str | None = None) -> list[Release]:
    """Every release in the catalog (or one family's), in catalog order."""
    cat = load_catalog()
    if family is None:
        return list(cat.releases.values())
    fam = family.strip().lower()
    if fam not in cat.families():
        close = difflib.get_close_matches(fam, cat.families(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"families: {', '.join(cat.families())}"
        raise UsageError(f"unknown family '{family}'", fix=hint)
    return [r for r in cat.releases.values() if r.family == fam]


def release_info(name: str) -> dict[str, Any]:
    """Everything about one release, JSON-able: summary, both configs, shards, sources."""
    rel = get_release(name)
    hf, meta = rel.hf_config(), rel.meta.model_dump()
    # Flat view first (HF and params.json names do not clash except vocab_size and
    # rope_theta, which agree), then each file's own view for unambiguous reading.
    info: dict[str, Any] = {
        **rel.summary(),
        **{k: v for k, v in hf.items() if k != "architectures"},
        **meta,
        "original_shards": rel.mp_shards,
        "hf_config": hf,
        "params_json": meta,
        # Absent sources are left out; inside one, None stays explicit (original_dir: null = none on the hub).
        "sources": {kind: src.model_dump() for kind, src in rel.sources if src is not None},
        "catalog_file": load_catalog().files[rel.name],
    }
    if rel.vision is not None:
        info["hf_config_section"] = "text_config"  # HF nests the text model's fields there
    for key in ("quantization", "notes"):
        if getattr(rel, key) is not None:
            info[key] = getattr(rel, key)
    if rel.moe is not None:
        info["moe"] = rel.moe.model_dump()
        info["expert_intermediate_size"] = rel.expert_intermediate_size
    if rel.vision is not None:
        info["vision"] = rel.vision.model_dump()
    if rel.params_extra:
        info["params_extra"] = dict(rel.params_extra)
    if rel.aliases:
        info["aliases"] = list(rel.aliases)
    return info


def releases_table(releases: list[Release]):
    from llamakit.catalog_view import releases_table as _table

    return _table(releases)


def info_panel(info: dict[str, Any]):
    from llamakit.catalog_view import info_panel as _panel

    return _panel(info)
