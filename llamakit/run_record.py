"""What a fine-tune run directory says about itself, read once for the report.

A run directory (`llamakit finetune`'s OUT) holds `train_summary.json` and dvclive's TSV curves
under `dvclive/plots/metrics/`; an ensemble run holds one such directory per member under
`members/<k>/` (llamakit/train/ensemble.py). `read_run` turns that into the two things a report
shows: the training provenance (recipe, seeds, steps, wall times, one row per member) and the
loss curve. Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llamakit.errors import InputFileError

SUMMARY = "train_summary.json"
# Keys of train_summary.json copied as they are into the report's provenance.
_KEEP = ("profile", "overrides", "device", "cpu", "world_size", "backend", "deterministic", "data_order", "fingerprint",
         "steps", "total_steps", "tokens", "final_loss", "resumed_from_step", "wall_s", "train_s", "tokens_per_s", "ensemble")
_MEMBER_KEEP = ("steps", "train_s", "wall_s", "final_loss", "resumed_from_step", "fingerprint")


@dataclass
class RunRecord:
    train: dict[str, Any] = field(default_factory=dict)
    loss: list[tuple[float, float]] = field(default_factory=list)


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or an InputFileError naming the file and the stage to rerun."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputFileError(f"{what} not found", path=path, fix="run the stage that writes it (see dvc.yaml)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{what} is not readable JSON ({exc})", path=path, fix="rerun the stage that writes it") from exc
    if not isinstance(doc, dict):
        raise InputFileError(f"{what} must be a JSON object", path=path)
    return doc


def read_run(run_dir: Optional[Path]) -> RunRecord:
    if run_dir is None:
        return RunRecord()
    path = run_dir / SUMMARY
    if not path.is_file():
        # A run dir without a summary still has its curve when a run was interrupted.
        return RunRecord({"summary": None, "note": f"{path} not found"}, dvclive_loss(run_dir))
    summary = read_json(path, SUMMARY)
    return RunRecord(train_provenance(summary, path), loss_curve(run_dir, summary))


def train_provenance(summary: dict, path: Path) -> dict[str, Any]:
    recipe = summary.get("recipe") or summary.get("resolved_recipe") or {}
    seeds = summary.get("seeds") if summary.get("seeds") is not None else {"seed": recipe.get("seed", summary.get("seed"))}
    overrides = recipe.get("ensemble") or []
    members = [{"member": k, "overrides": overrides[k - 1] if k <= len(overrides) else {},
                **{key: m.get(key) for key in _MEMBER_KEEP}}
               for k, m in enumerate(summary.get("members") or [], start=1)]
    return {
        "summary": str(path),
        **({"members": members} if members else {}),
        "seeds": seeds,
        "threads": summary.get("threads", recipe.get("threads")),
        **{k: summary[k] for k in _KEEP if k in summary},
        "recipe": recipe,
    }


def loss_curve(run_dir: Path, summary: dict) -> list[tuple[float, float]]:
    """(step, loss), train loss preferred. An ensemble's members trained one after another: their
    curves are laid end to end, each member's steps counted on from the previous member's last."""
    n_members = summary.get("ensemble")
    if not isinstance(n_members, int):
        return dvclive_loss(run_dir)
    points: list[tuple[float, float]] = []
    for k in range(1, n_members + 1):
        offset = points[-1][0] if points else 0.0
        points += [(offset + step, v) for step, v in dvclive_loss(run_dir / "members" / str(k))]
    return points


def dvclive_loss(run_dir: Path) -> list[tuple[float, float]]:
    base = run_dir / "dvclive" / "plots" / "metrics"
    candidates = sorted(base.rglob("*loss*.tsv")) if base.is_dir() else []
    candidates.sort(key=lambda p: ("train" not in p.parts, len(p.parts), str(p)))
    for path in candidates:
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) < 2:
            continue
        header = lines[0].split("\t")
        if "step" not in header:
            continue
        i_step = header.index("step")
        i_val = next((i for i, h in enumerate(header) if h not in ("step", "timestamp")), None)
        if i_val is None:
            continue
        points = []
        for line in lines[1:]:
            cols = line.split("\t")
            try:
                points.append((float(cols[i_step]), float(cols[i_val])))
            except (ValueError, IndexError):
                continue
        if points:
            return points
    return []
