"""Word → sub-token alignment with a model's own tokenizer.

Each word is encoded on its own and the pieces are concatenated, so word boundaries are exact
by construction (no offset arithmetic). How a word is encoded:

- Byte-level BPE (GPT-2 style: SmolLM2, Llama 3): every word gets a leading space, including the
  first word of the sentence. A CoNLL sentence sits mid-document, where a space precedes it, and
  the same word then maps to the same sub-tokens wherever it appears (" EU" at position 0 and at
  position 7 alike). This is what HF's `add_prefix_space=True` + `is_split_into_words` does;
  SmolLM2's tokenizer has add_prefix_space=False, so its `is_split_into_words` would split
  "rejects" into three space-less pieces instead of the one " rejects" token.
- SentencePiece-style tokenizers that add their own dummy "▁" prefix (Llama 2) get the bare word.

A BOS is prepended when the tokenizer defines one: decoder-only models put a large share of
attention on the first position ("attention sink"); with a BOS there, the first word is an
ordinary position instead of the sink. Both choices are recorded in the prepared manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llamakit.errors import InputFileError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class TokenizerInfo:
    sha256: str  # identity: sha256 of tokenizer.json (else tokenizer.model)
    identity_file: str
    content_sha256: str | None  # sha256 of tokenizer.json re-serialised with sorted keys (formatting-proof)
    files: dict[str, str]
    name: str
    vocab_size: int
    word_prefix: str  # "space" | "none"
    bos_token: str | None
    bos_token_id: int | None
    pad_token_id: int | None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def tokenizer_content_sha256(model_dir: str | Path) -> str | None:
    """Identity that survives a re-save which only changes JSON formatting or key order."""
    import hashlib

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    canon = json.dumps(json.loads(path.read_bytes()), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def tokenizer_identity(model_dir: str | Path) -> tuple[str, str, dict[str, str]]:
    """(sha256, file it was taken from, {file: sha256}) for the tokenizer files in `model_dir`."""
    from llamakit.atomic import sha256_file

    model_dir = Path(model_dir)
    files = {name: sha256_file(model_dir / name) for name in TOKENIZER_FILES if (model_dir / name).is_file()}
    for name in ("tokenizer.json", "tokenizer.model"):
        if name in files:
            return files[name], name, files
    raise InputFileError(
        "no tokenizer.json or tokenizer.model in the model directory",
        path=model_dir,
        fix="pass an HF model directory that includes its tokenizer (llamakit convert writes one)",
    )


class WordTokenizer:
    """Encodes words (not text) into sub-token ids, memoised per distinct word."""

    def __init__(self, model_dir: str | Path):
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        sha, ident_file, files = tokenizer_identity(self.model_dir)
        try:
            self.tok = AutoTokenizer.from_pretrained(str(self.model_dir))
        except Exception as exc:  # noqa: BLE001 - any loader failure means the same thing to the user
            raise InputFileError(
                f"cannot load the tokenizer: {type(exc).__name__}: {exc}", path=self.model_dir / ident_file,
                fix="check the model directory's tokenizer files",
            ) from exc
        self.prefix = self._detect_prefix()
        bos_id = self.tok.bos_token_id
        self.info = TokenizerInfo(
            sha256=sha,
            identity_file=ident_file,
            content_sha256=tokenizer_content_sha256(self.model_dir),
            files=files,
            name=type(self.tok).__name__,
            vocab_size=len(self.tok),
            word_prefix="space" if self.prefix else "none",
            bos_token=self.tok.bos_token if bos_id is not None else None,
            bos_token_id=bos_id,
            pad_token_id=self.tok.pad_token_id,
        )
        self._cache: dict[str, list[int]] = {}

    def _detect_prefix(self) -> str:
        """" " when words need an explicit leading space, "" when the tokenizer adds its own."""
        bare = self.tok.convert_ids_to_tokens(self.tok("word", add_special_tokens=False)["input_ids"])
        return "" if bare and bare[0].startswith("▁") else " "

    @property
    def prefix_ids(self) -> list[int]:
        return [self.info.bos_token_id] if self.info.bos_token_id is not None else []

    def encode_words(self, words) -> None:
        """Encode every distinct word not seen yet, in one batched call."""
        new = sorted({w for w in words if w not in self._cache})
        if not new:
            return
        ids = self.tok([self.prefix + w for w in new], add_special_tokens=False)["input_ids"]
        self._cache.update(zip(new, ids))

    def word_ids(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            self.encode_words([word])
            ids = self._cache[word]
        return ids


def align(words, label_ids, wt: WordTokenizer, *, path=None, line: int | None = None) -> tuple[list[int], list[int]]:
    """input_ids and labels: the label id at each word's first sub-token, -100 elsewhere (BOS too).

    `line` is the sentence's first line in `path`; word i sits on line + i.
    """
    input_ids = list(wt.prefix_ids)
    labels = [-100] * len(input_ids)
    for i, (word, label) in enumerate(zip(words, label_ids)):
        pieces = wt.word_ids(word)
        if not pieces:
            # a word with no sub-token would get no prediction; refuse rather than drop it
            raise InputFileError(
                "the tokenizer encodes this word to no sub-tokens", path=path or wt.model_dir,
                line=None if line is None else line + i, fix="use a tokenizer that covers every word (byte-level BPE does)",
            )
        input_ids.extend(pieces)
        labels.append(label)
        labels.extend([-100] * (len(pieces) - 1))
    return input_ids, labels
