"""The prepared-data format (`llamakit prepare` writes it; finetune, evaluate and the benchmarks read it):
ONE reader, one set of rules.

A prepared directory holds labels.json, {train,valid,test}.jsonl (one {"id", "doc", "input_ids",
"labels", "n_words"} object per sentence, in file order) and manifest.json (format, the sha256 of every
file, counts, the tokenizer's identity). A split is read in one pass that parses and checks every
record and hashes the bytes, which must match the manifest's sha256. The model that reads the ids must
have the tokenizer that made them: the same identity file and sha256, or the same formatting-proof
content hash (`check_tokenizer`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from llamakit.errors import CheckFailed, InputFileError

FORMAT = "llamakit.prepared/1"
IGNORE = -100
_FIX = "the prepared data is damaged or from another tool; re-run `llamakit prepare conll2003`"


@dataclass
class PreparedSplit:
    name: str
    path: Path
    sha256: str  # of the whole file, as the manifest names it (also when `limit` kept fewer records)
    records: list[dict]
    manifest: dict


def read_manifest(prepared: str | Path) -> dict:
    path = Path(prepared) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputFileError("not a prepared data directory (no manifest.json)", path=prepared,
                             fix="run `llamakit prepare conll2003` first") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"manifest.json is unreadable ({exc})", path=path, fix="re-run `llamakit prepare conll2003`") from exc
    except json.JSONDecodeError as exc:
        raise InputFileError(f"manifest is not JSON: {exc.msg}", path=path, line=exc.lineno) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise InputFileError(f"unknown prepared format {got!r} (expected {FORMAT})", path=path,
                             fix="re-run `llamakit prepare conll2003` with this llamakit")
    return data


def verify_files(prepared: str | Path, names: list[str] | None = None) -> dict:
    """Check files against manifest.json's sha256s (all, or `names`); return the manifest."""
    from llamakit.atomic import sha256_file

    prepared = Path(prepared)
    manifest = read_manifest(prepared)
    for name in names or list(manifest.get("files") or {}):
        want = (manifest.get("files") or {}).get(name)
        if want is None:
            raise InputFileError(f"{name} is not listed in manifest.json", path=prepared / "manifest.json")
        if not (prepared / name).is_file() or sha256_file(prepared / name) != want:
            raise CheckFailed("file is missing or differs from manifest.json's sha256", path=prepared / name,
                              fix="re-run `llamakit prepare conll2003`")
    return manifest


def read_labels(prepared: str | Path) -> list[str]:
    """labels.json's label names (distinct strings), checked against the manifest's sha256 when it lists it."""
    prepared = Path(prepared)
    path = prepared / "labels.json"
    if not path.is_file():
        raise InputFileError("prepared data has no labels.json", path=path,
                             fix="run `llamakit prepare conll2003 --out DIR` and point at DIR")
    raw = path.read_bytes()
    try:
        labels = json.loads(raw)["labels"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"labels.json is not {{\"labels\": [...]}} ({exc})", path=path, fix="re-run `llamakit prepare`") from exc
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
        raise InputFileError("labels.json must list distinct label names", path=path, fix="re-run `llamakit prepare`")
    want = ((_manifest_if_any(prepared) or {}).get("files") or {}).get("labels.json")
    if want is not None and hashlib.sha256(raw).hexdigest() != want:
        raise CheckFailed("file differs from manifest.json's sha256", path=path, fix="re-run `llamakit prepare conll2003`")
    return labels


def _manifest_if_any(prepared: Path) -> dict | None:
    return read_manifest(prepared) if (prepared / "manifest.json").exists() else None


def read_prepared(prepared: str | Path, split: str, *, n_labels: int | None = None, vocab_size: int | None = None,
                  limit: int | None = None) -> PreparedSplit:
    """One split's records in file order, every one checked (ids and labels ints of equal length, label ids
    in range, token ids inside `vocab_size` when given, labelled positions = n_words), the file's sha256
    matched against the manifest. `limit` keeps the first N records (the whole file is still hashed)."""
    prepared = Path(prepared)
    manifest = read_manifest(prepared)
    splits = manifest.get("splits") or {}
    if splits and split not in splits:
        raise InputFileError(f"no split '{split}' (have {', '.join(splits)})", path=prepared,
                             fix=f"use --split {' or '.join(splits)}")
    if n_labels is None:
        n_labels = len(read_labels(prepared))
    path = prepared / f"{split}.jsonl"
    if not path.is_file():
        raise InputFileError(f"prepared data has no {split}.jsonl", path=path, fix="run `llamakit prepare conll2003` for this directory")
    digest = hashlib.sha256()
    records: list[dict] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            digest.update(raw)
            if limit is not None and len(records) >= limit:
                continue  # keep hashing: the sha256 names the whole file, as the manifest does
            if not raw.strip():
                continue
            records.append(_record(raw, path, lineno, n_labels, vocab_size))
    sha = digest.hexdigest()
    want = (manifest.get("files") or {}).get(path.name)
    if want is not None and want != sha:
        raise CheckFailed("file differs from manifest.json's sha256", path=path, fix="re-run `llamakit prepare conll2003`")
    if not records:
        raise InputFileError(f"{split}.jsonl has no sentences", path=path, fix="re-run `llamakit prepare`")
    return PreparedSplit(split, path, sha, records, manifest)


def _record(raw: bytes, path: Path, lineno: int, n_labels: int, vocab_size: int | None) -> dict:
    try:
        rec = json.loads(raw)
        ids, labs = rec["input_ids"], rec["labels"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"not a prepared record ({exc.__class__.__name__}: {exc})", path=path, line=lineno, fix=_FIX) from exc
    if not isinstance(ids, list) or not ids or not all(type(t) is int for t in ids):
        raise InputFileError("input_ids must be a non-empty list of ints", path=path, line=lineno, fix=_FIX)
    if not isinstance(labs, list) or len(labs) != len(ids) or not all(type(t) is int for t in labs):
        raise InputFileError(f"labels must be {len(ids)} ints, one per input id", path=path, line=lineno, fix=_FIX)
    if any(not (v == IGNORE or 0 <= v < n_labels) for v in labs):
        raise InputFileError(f"label id outside 0..{n_labels - 1} (and -100)", path=path, line=lineno, fix=_FIX)
    if vocab_size is not None and any(not 0 <= t < vocab_size for t in ids):
        raise InputFileError(f"token id outside the model's vocabulary (0..{vocab_size - 1})", path=path, line=lineno,
                             fix="prepare the data with the same model's tokenizer you fine-tune")
    if sum(1 for v in labs if v != IGNORE) != rec.get("n_words"):
        raise InputFileError("labelled positions differ from n_words", path=path, line=lineno, fix=_FIX)
    return rec


def check_tokenizer(model_dir: str | Path, manifest: dict) -> None:
    """Token ids are only meaningful with the tokenizer that made them: the model's identity file
    (tokenizer.json, else tokenizer.model) must be the one the data was prepared with, byte for byte or
    by the formatting-proof content hash. Skipped when either side names no tokenizer (bare weights;
    data from another tool)."""
    from llamakit.data.align import tokenizer_content_sha256, tokenizer_identity

    model_dir = Path(model_dir)
    want = manifest.get("tokenizer") or {}
    if not want.get("sha256") or not any((model_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        return
    sha, name, _ = tokenizer_identity(model_dir)
    if name == want.get("identity_file") and sha == want["sha256"]:
        return
    if want.get("content_sha256") is not None and tokenizer_content_sha256(model_dir) == want["content_sha256"]:
        return
    raise InputFileError(
        f"the model's {name} (sha256 {sha[:12]}) is not the tokenizer the data was prepared with ({want['sha256'][:12]})",
        path=model_dir / name,
        fix="re-run `llamakit prepare conll2003 --model` with this model's directory",
    )
