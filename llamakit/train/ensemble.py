"""Ensembles: several fine-tunes of one model, scored together by the mean of their per-word probabilities.

A recipe's `ensemble:` lists members, each the recipe with a few keys changed (say, document
context for one and not the other). `llamakit finetune` trains them one after another, each an
ordinary resumable run in OUT/members/<k>/, then `publish` writes OUT/model as one self-contained
directory: `ensemble.json` plus each member's exported model in `model/<k>/` (hard links to
the member's export, so no second copy of the weights). `llamakit evaluate` reads that file,
runs every member in the context it was trained with, averages the members' probabilities per
word and decodes once. Averaging probabilities (not log-probabilities) is the rule that was
fixed before the ensemble was scored on dev; on CoNLL-2003 dev the two agree within 0.0003 F1.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from llamakit.atomic import replace_dir
from llamakit.errors import InputFileError

MANIFEST = "ensemble.json"
COMBINE = "mean of the members' per-word probabilities, decoded once"


def publish(out: Path, recipe) -> Path:
    """OUT/model = ensemble.json + model/<k>/ (each member's export in OUT/members/<k>/model), swapped in whole."""
    final, tmp = out / "model", out / f".tmp-model-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    members = []
    for k, extra in enumerate(recipe.ensemble, start=1):
        src = out / "members" / str(k) / "model"
        dst = tmp / str(k)
        dst.mkdir()
        for f in sorted(src.iterdir()):
            try:
                os.link(f, dst / f.name)
            except OSError:  # a filesystem without hard links
                shutil.copy2(f, dst / f.name)
        cfg = json.loads((dst / "config.json").read_text(encoding="utf-8"))
        members.append({"dir": str(k), "overrides": extra, "fingerprint": member_summary(out, k).get("fingerprint"),
                        "pack_documents": int(cfg.get("llamakit_pack_documents") or 0)})
    doc = {"format": "llamakit-ensemble", "version": 1, "combine": COMBINE, "members": members}
    (tmp / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return replace_dir(tmp, final)


def member_summary(out: Path, k: int) -> dict:
    path = out / "members" / str(k) / "train_summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def member_dirs(model_dir: Path) -> list[Path] | None:
    """The member model directories of an ensemble directory, in order; None for a plain model."""
    path = model_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        dirs = [model_dir / str(m["dir"]) for m in doc["members"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"not a readable ensemble manifest ({exc.__class__.__name__}: {exc})", path=path,
                             fix="re-run `llamakit finetune` to publish it again") from None
    if not dirs:
        raise InputFileError("the ensemble lists no members", path=path, fix="re-run `llamakit finetune` to publish it again")
    for d in dirs:
        if not (d / "config.json").is_file() or not d.resolve().is_relative_to(model_dir.resolve()):
            raise InputFileError(f"ensemble member '{d.name}' is not a model directory inside the ensemble", path=path,
                                 fix="copy the whole model/ directory, or re-run `llamakit finetune`")
    return dirs


def combine(member_logprobs: list[list]) -> list:
    """Per record, log of the mean of the members' probabilities (a single member passes through)."""
    import numpy as np

    if len(member_logprobs) == 1:
        return member_logprobs[0]
    return [np.log(np.mean([np.exp(m[i].astype(np.float64)) for m in member_logprobs], axis=0))
            for i in range(len(member_logprobs[0]))]
