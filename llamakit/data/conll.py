"""CoNLL-2003: stream and validate the IOB2 files, align labels to sub-tokens, write prepared splits.

Format (the data's README): one `TOKEN POS CHUNK NER` line per token, a blank line ends a
sentence, `-DOCSTART-` lines start documents and are not sentences. The expected counts per
split live as data in `manifests/datasets/conll2003.yaml`.

Prepared directory (the cross-team contract): labels.json, {train,valid,test}.jsonl with one
{"id", "doc", "input_ids", "labels", "n_words"} object per sentence in file order, and
manifest.json (sha256 of every file, counts, tokenizer identity, max_length, limit_train); read back
by llamakit/data/prepared.py, the one reader of that format.
No words are stored, only token ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ValidationError

from llamakit.data.align import WordTokenizer, align
from llamakit.atomic import atomic_dir, sha256_file
from llamakit.data.prepared import FORMAT, verify_files
from llamakit.errors import InputFileError, ManifestError, UsageError

SPLITS = ("train", "valid", "test")


# --- the dataset spec (counts as data) -------------------------------------------


class SplitSpec(BaseModel):
    file: str
    sha256: str | None = None
    docs: int
    sentences: int
    tokens: int
    tags: dict[str, int]


class DatasetSpec(BaseModel):
    name: str
    scheme: str
    columns: list[str]
    docstart: str
    labels: list[str]
    entity_types: list[str]
    splits: dict[str, SplitSpec]


def load_spec(name: str = "conll2003", path: str | Path | None = None) -> DatasetSpec:
    import yaml

    if path is None:
        from llamakit.catalog import manifests_dir

        path = manifests_dir() / "datasets" / f"{name}.yaml"
    path = Path(path)
    try:
        return DatasetSpec.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError as exc:
        raise ManifestError("dataset spec not found", path=path, fix="set LLAMAKIT_MANIFESTS to the repo's manifests/") from exc
    except (ValidationError, yaml.YAMLError) as exc:
        raise ManifestError(f"invalid dataset spec: {exc}", path=path) from exc


# --- reading and validating -------------------------------------------------------


@dataclass(frozen=True)
class Sentence:
    doc: int  # 0-based document index within the split
    line: int  # 1-based line of the first token
    words: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass
class SplitStats:
    docs: int = 0
    sentences: int = 0
    tokens: int = 0
    tags: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"docs": self.docs, "sentences": self.sentences, "tokens": self.tokens, "tags": dict(self.tags)}


def iter_sentences(path: str | Path, spec: DatasetSpec, stats: SplitStats | None = None) -> Iterator[Sentence]:
    """Stream sentences from one split file, raising InputFileError at the first bad line."""
    path = Path(path)
    labels = set(spec.labels)
    ncol = len(spec.columns)
    stats = stats if stats is not None else SplitStats()
    stats.tags = {t: stats.tags.get(t, 0) for t in spec.labels}
    doc, started = 0, False
    words: list[str] = []
    tags: list[str] = []
    first = 0

    def flush() -> Sentence:
        nonlocal words, tags
        s = Sentence(doc, first, tuple(words), tuple(tags))
        stats.sentences += 1
        stats.tokens += len(words)
        words, tags = [], []
        return s

    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputFileError(f"cannot read: {exc.strerror}", path=path, fix="check --data-dir") from exc
    lineno = 0
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise InputFileError(f"not UTF-8 text ({exc.reason})", path=path, line=lineno) from exc
            if "\ufeff" in line:  # a BOM (editors add one at the start) would turn -DOCSTART- into a word
                raise InputFileError(
                    "starts with a UTF-8 byte-order mark (BOM, U+FEFF)" if lineno == 1 and line.startswith("\ufeff")
                    else "holds a byte-order mark character (U+FEFF)", path=path, line=lineno,
                    fix="save the file as UTF-8 without a BOM (e.g. `sed -i '1s/^\\xEF\\xBB\\xBF//' FILE`) and rerun",
                )
            cols = line.split()
            if not cols:
                if words:
                    yield flush()
                continue
            if cols[0] == spec.docstart:
                if words:
                    raise InputFileError(
                        f"{spec.docstart} inside a sentence", path=path, line=lineno,
                        fix="a blank line must end the sentence before a document starts",
                    )
                stats.docs += 1
                doc += started  # sentences before the first -DOCSTART- form document 0
                started = True
                continue
            if len(cols) != ncol:
                raise InputFileError(
                    f"expected {ncol} columns ({' '.join(spec.columns).upper()}), found {len(cols)}",
                    path=path, line=lineno, fix="one token per line, columns separated by spaces",
                )
            tag = cols[-1]
            if tag not in labels:
                raise InputFileError(
                    f"unknown tag '{tag}'", path=path, line=lineno, fix=f"tags must be one of {', '.join(spec.labels)}"
                )
            if tag.startswith("I-"):
                prev = tags[-1] if tags else "O"
                if prev[2:] != tag[2:] or prev == "O":
                    raise InputFileError(
                        f"'{tag}' starts an entity (after '{prev if tags else 'sentence start'}'): not {spec.scheme}",
                        path=path, line=lineno, fix=f"every entity must begin with B-; convert IOB1 files to {spec.scheme}",
                    )
            if not words:
                first = lineno
                started = True
            words.append(cols[0])
            tags.append(tag)
            stats.tags[tag] += 1
    if words:
        yield flush()
    if stats.sentences == 0:
        raise InputFileError(
            "no sentences (empty file)" if lineno == 0 else "no sentences, only blank or -DOCSTART- lines",
            path=path, line=max(lineno, 1), fix="point --data-dir at the CoNLL-2003 train/valid/test files",
        )


def read_conll(path: str | Path, spec: DatasetSpec) -> tuple[list[Sentence], SplitStats]:
    """A whole CoNLL-2003 text file (one split), validated; prepared JSONL is read by llamakit/data/prepared.py."""
    stats = SplitStats()
    sentences = list(iter_sentences(path, spec, stats))
    return sentences, stats


def check_split_counts(path: str | Path, split: str, stats: SplitStats, spec: DatasetSpec) -> None:
    want = spec.splits[split]
    got = stats.to_json()
    diffs = [
        f"{key} {got[key]} != {getattr(want, key)}" for key in ("docs", "sentences", "tokens") if got[key] != getattr(want, key)
    ]
    diffs += [f"{t} {got['tags'].get(t, 0)} != {n}" for t, n in want.tags.items() if got["tags"].get(t, 0) != n]
    if diffs:
        raise InputFileError(
            f"{split} counts differ from the verified counts: {'; '.join(diffs)}",
            path=path,
            fix="use the unmodified CoNLL-2003 files (README's SHA256SUMS), or pass --no-check-counts for a subset",
        )


# --- prepare -----------------------------------------------------------------------


@dataclass
class PrepareManifest:
    out: Path
    data: dict

    def summary_line(self) -> str:
        s = self.data["splits"]
        parts = ", ".join(f"{k} {v['sentences']:,} sentences/{v['words']:,} words" for k, v in s.items())
        tok = self.data["tokenizer"]
        return f"conll2003: {parts}; longest {max(v['max_subtokens'] for v in s.values())} sub-tokens (max_length {self.data['max_length']}), tokenizer {tok['sha256'][:12]}"

    def to_json(self) -> dict:
        return self.data


def prepare(
    data_dir: str | Path,
    model_dir: str | Path,
    out: str | Path,
    *,
    max_length: int = 256,
    limit_train: int | None = None,
    check_counts: bool = True,
    show_progress: bool = True,
) -> PrepareManifest:
    """Validate all three splits, tokenise with `model_dir`'s tokenizer, publish `out` atomically."""
    if max_length < 2:
        raise UsageError(f"--max-length must be at least 2, got {max_length}")
    if limit_train is not None and limit_train < 1:
        raise UsageError(f"--limit-train must be at least 1, got {limit_train}")
    data_dir, out = Path(data_dir), Path(out)
    spec = load_spec()
    label_id = {t: i for i, t in enumerate(spec.labels)}

    with _progress(show_progress) as progress:
        task = progress.add_task("reading", total=len(SPLITS))
        read: dict[str, tuple[Path, list[Sentence], SplitStats]] = {}
        for split in SPLITS:
            path = data_dir / spec.splits[split].file
            progress.update(task, description=f"validating {path.name}")
            sentences, stats = read_conll(path, spec)
            if check_counts:
                check_split_counts(path, split, stats, spec)
            if split == "train" and limit_train is not None:
                sentences = sentences[:limit_train]
            read[split] = (path, sentences, stats)
            progress.advance(task)

        progress.update(task, description="tokenising")
        wt = WordTokenizer(model_dir)
        wt.encode_words(w for _, sents, _ in read.values() for s in sents for w in s.words)
        _check_lengths(read, wt, max_length)

        manifest: dict = {
            "format": FORMAT,
            "dataset": spec.name,
            "scheme": spec.scheme,
            "labels": spec.labels,
            "max_length": max_length,
            "limit_train": limit_train,
            "check_counts": check_counts,
            "tokenizer": wt.info.to_json(),
            "source": {},
            "splits": {},
            "files": {},
        }
        with atomic_dir(out, marker="manifest.json") as tmp:
            (tmp / "labels.json").write_text(json.dumps({"labels": spec.labels}, indent=2) + "\n")
            for split, (path, sentences, stats) in read.items():
                progress.update(task, description=f"writing {split}.jsonl")
                longest = _write_split(tmp / f"{split}.jsonl", path, sentences, wt, label_id)
                src_sha = sha256_file(path)
                manifest["source"][split] = {
                    "file": path.name,
                    "sha256": src_sha,
                    "known": src_sha == spec.splits[split].sha256,
                    "counts": stats.to_json(),
                }
                manifest["splits"][split] = {
                    "sentences": len(sentences),
                    "words": sum(len(s.words) for s in sentences),
                    "docs": len({s.doc for s in sentences}),
                    "subtokens": longest[1],
                    "max_subtokens": longest[0],
                }
            for name in ["labels.json", *(f"{s}.jsonl" for s in SPLITS)]:
                manifest["files"][name] = sha256_file(tmp / name)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            verify_files(tmp)
    return PrepareManifest(out=out, data=manifest)


def _check_lengths(read: dict, wt: WordTokenizer, max_length: int) -> None:
    """Refuse (before writing anything) any sentence longer than max_length: truncating would
    silently drop words, and evaluation must predict every word."""
    need, first = 0, None
    for path, sentences, _ in read.values():
        for s in sentences:
            n = len(wt.prefix_ids) + sum(len(wt.word_ids(w)) for w in s.words)
            need = max(need, n)
            if n > max_length and first is None:
                first = (path, s.line, n)
    if first is not None:
        path, line, n = first
        raise InputFileError(
            f"sentence has {n} sub-tokens, more than max_length {max_length} (the longest of all splits has {need})",
            path=path, line=line, fix=f"pass --max-length {need} or more",
        )


def _write_split(dest: Path, src: Path, sentences, wt: WordTokenizer, label_id: dict) -> tuple[int, int]:
    """Write one split's jsonl; return (longest sentence, total sub-tokens)."""
    longest = total = 0
    with open(dest, "w") as f:
        for i, s in enumerate(sentences):
            ids, labels = align(s.words, [label_id[t] for t in s.tags], wt, path=src, line=s.line)
            longest, total = max(longest, len(ids)), total + len(ids)
            rec = {"id": i, "doc": s.doc, "input_ids": ids, "labels": labels, "n_words": len(s.words)}
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    return longest, total


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
        disable=not enabled or not console.is_terminal,  # no stray bar fragments in logs and pipes
    )
