"""Tiny models and prepared data in the CONTRACTS.md format, built from scratch for the tests."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from tests.conftest import make_llama_model

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_tiny_model(path: Path, shape: str = "gqa", seed: int = 0) -> Path:
    """A tiny random Llama causal LM with a real (word-level) tokenizer beside it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = make_llama_model(shape, seed=seed)
    model.save_pretrained(path)
    vocab = {f"w{i}": i for i in range(model.config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w2").save_pretrained(path)
    return path


def write_prepared(path: Path, *, vocab: int = 160, n_train: int = 64, n_valid: int = 16, seed: int = 0, model_dir: Path | None = None) -> Path:
    """Random sentences whose label is a function of the token id, so a model can learn it."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    (path / "labels.json").write_text(json.dumps({"labels": LABELS}))
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_valid)):
        with (path / f"{split}.jsonl").open("w") as fh:
            for i in range(n):
                length = rng.randint(2, 24)
                ids = [rng.randrange(3, vocab) for _ in range(length)]
                # the first sub-token of a word carries the label; about 1/3 of tokens continue a word
                labels = [(t % len(LABELS)) if (j == 0 or rng.random() > 0.33) else -100 for j, t in enumerate(ids)]
                rec = {"id": i, "doc": i // 8, "input_ids": ids, "labels": labels, "n_words": sum(v != -100 for v in labels)}
                fh.write(json.dumps(rec) + "\n")
    manifest = {
        "format": "llamakit.prepared/1",
        "splits": {split: {"sentences": n} for split, n in (("train", n_train), ("valid", n_valid), ("test", n_valid))},
        "files": {name: _sha(path / name) for name in ("labels.json", "train.jsonl", "valid.jsonl", "test.jsonl")},
    }
    if model_dir is not None and (model_dir / "tokenizer.json").is_file():  # as `llamakit prepare` names it
        sha = _sha(model_dir / "tokenizer.json")
        manifest["tokenizer"] = {"sha256": sha, "identity_file": "tokenizer.json", "files": {"tokenizer.json": sha}}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def write_recipe(path: Path, **keys) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


def read_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out
