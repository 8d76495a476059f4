"""The release errata registry (`manifests/errata/*.yaml`): loaded, validated, cross-checked with the catalog.

An erratum records a fact a conversion needs that Meta's files do not carry, or carry in
contradiction with Meta's own code or the HF release (Llama 3.2 1B/3B's rope factor and
tied output). The schema is `ErrataFile` in llamakit/catalog_schema.py. Loading also
holds every entry against the catalog: the releases it names exist, and their catalog
facts are the values the entry sets, so the two registries cannot drift apart.

No torch here: `llamakit list`/`info` may read it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from llamakit.catalog_schema import ErrataFile, Erratum
from llamakit.errors import ManifestError

FIX = "fix the errata entry (the schema is ErrataFile in llamakit/catalog_schema.py)"


def errata_dir(root: Path | None = None) -> Path:
    from llamakit.catalog import manifests_dir

    return (Path(root) if root is not None else manifests_dir()) / "errata"


def load_errata(root: Path | None = None) -> list[Erratum]:
    """Every erratum, in file order (files sorted by name); ManifestError naming the file and field if one is bad."""
    d = errata_dir(root)
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(d.glob("*.yaml")))
    return list(_load(str(d), str(root) if root is not None else None, stamp))


@lru_cache(maxsize=8)
def _load(directory: str, root: str | None, _stamp) -> tuple[Erratum, ...]:
    from llamakit import catalog

    out: list[Erratum] = []
    seen: dict[str, Path] = {}
    cat = catalog.load_catalog(Path(root) if root is not None else None)
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ManifestError(f"not valid YAML ({str(exc).splitlines()[0]})", path=path, fix=FIX) from None
        try:
            ef = ErrataFile.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ManifestError(f"invalid field '{where}': {first['msg']}", path=path, fix=FIX) from None
        for e in ef.errata:
            if e.id in seen:
                raise ManifestError(f"erratum id '{e.id}' is also in {seen[e.id].name}", path=path, fix="ids must be unique")
            seen[e.id] = path
            _agrees_with_catalog(e, cat, path)
            out.append(e)
    return tuple(out)


def _agrees_with_catalog(e: Erratum, cat, path: Path) -> None:
    for name in e.releases:
        rel = cat.releases.get(name)
        if rel is None:
            raise ManifestError(f"erratum '{e.id}' names unknown release '{name}'", path=path, fix="use a catalog release name")
        if e.sets.rope_scaling is not None and rel.rope_scaling != e.sets.rope_scaling:
            raise ManifestError(f"erratum '{e.id}' sets rope_scaling {e.sets.rope_scaling.model_dump()} but the catalog "
                                f"gives {name} {rel.rope_scaling and rel.rope_scaling.model_dump()}", path=path,
                                fix="correct whichever of the two is wrong")
        if e.sets.tie_embeddings is not None and rel.tie_embeddings != e.sets.tie_embeddings:
            raise ManifestError(f"erratum '{e.id}' sets tie_embeddings {e.sets.tie_embeddings} but the catalog gives "
                                f"{name} {rel.tie_embeddings}", path=path, fix="correct whichever of the two is wrong")
        if e.when.use_scaled_rope is not None and rel.meta.use_scaled_rope != e.when.use_scaled_rope:
            raise ManifestError(f"erratum '{e.id}' is for use_scaled_rope {e.when.use_scaled_rope} but the catalog's "
                                f"{name} has {rel.meta.use_scaled_rope}", path=path, fix="correct whichever is wrong")


def get(erratum_id: str) -> Erratum:
    for e in load_errata():
        if e.id == erratum_id:
            return e
    raise KeyError(erratum_id)
