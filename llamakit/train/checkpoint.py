"""Training checkpoints: everything needed to continue bit-identically, written atomically.

A checkpoint is `OUT/checkpoints/step-NNNNNNNN/` holding `state.pt` (trainable weights, optimizer,
scheduler, RNG states: only tensors and plain containers, so it loads with weights_only=True)
and `meta.json` (step, data position, recipe fingerprint: small and human-readable). It is
written under a temporary name and renamed into place, so a run killed while saving leaves the
previous checkpoint as the latest one and never a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from llamakit.errors import InputFileError, UsageError

PREFIX = "step-"


@dataclass
class Position:
    """Where training stands: `step` optimizer steps done; the next batch is `batch` of `epoch`."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    tokens: int = 0
    last_loss: float | None = None
    train_s: float = 0.0  # seconds inside training steps, summed over every session of the run


def rng_state() -> dict:
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict:
    """Only what training changes: frozen base weights are reloaded from the model directory."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save(ckpt_dir: Path, *, model, optimizer, scheduler, position: Position, fingerprint: str, data_sha256: str, keep: int) -> Path:
    import torch

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{PREFIX}{position.step:08d}"
    tmp = ckpt_dir / f".tmp-{PREFIX}{position.step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
    }
    torch.save(state, tmp / "state.pt")
    meta = {"position": asdict(position), "fingerprint": fingerprint, "data_sha256": data_sha256}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    _fsync_dir_files(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir_files(directory: Path) -> None:
    for f in directory.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def clear(ckpt_dir: Path) -> None:
    for p in ckpt_dir.iterdir() if ckpt_dir.is_dir() else []:
        if p.is_dir() and (p.name.startswith(PREFIX) or p.name.startswith(".tmp-")):
            shutil.rmtree(p, ignore_errors=True)


def read_meta(path: Path) -> dict:
    try:
        return json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"unreadable checkpoint metadata ({exc})", path=path / "meta.json", fix="delete this checkpoint directory") from exc


def check_compatible(path: Path, meta: dict, *, fingerprint: str, data_sha256: str) -> None:
    if meta.get("fingerprint") != fingerprint:
        raise UsageError(
            "the checkpoint was written by a run with a different recipe (its schedule fingerprint differs)",
            path=path,
            fix="resume with the same recipe, pass -S resume=never to start over, or choose another `out`",
        )
    if meta.get("data_sha256") != data_sha256:
        raise UsageError(
            "the checkpoint was trained on different prepared data (train.jsonl sha256 differs)",
            path=path,
            fix="point `data` at the original prepared directory, or pass -S resume=never to start over",
        )


def load(path: Path, *, model, optimizer, scheduler) -> Position:
    import torch

    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable checkpoint
        raise InputFileError(f"cannot load checkpoint ({exc.__class__.__name__}: {exc})", path=path / "state.pt", fix="delete this checkpoint directory") from exc
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state["model"]]
    if missing:
        raise InputFileError(f"checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]})", path=path, fix="delete it or pass -S resume=never")
    with torch.no_grad():
        for name, tensor in state["model"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return Position(**read_meta(path)["position"])
