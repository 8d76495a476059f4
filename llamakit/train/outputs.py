"""What a finished run leaves in OUT: the exported model directory and train_summary.json.

Both appear whole or not at all (written under a temporary name, checked, renamed), and only
rank 0 calls these.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path

from llamakit import numerics
from llamakit.atomic import replace_dir
from llamakit.train.modeling import quiet_transformers
from llamakit.train.recipe import Recipe

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


def export_model(recipe: Recipe, model, model_dir: Path, out: Path) -> None:
    """OUT/model: a plain HF LlamaForTokenClassification dir (LoRA merged) + tokenizer, swapped in whole."""
    from llamakit.train.modeling import set_bidirectional

    final = out / "model"
    tmp = out / f".tmp-model-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if recipe.method == "lora":
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    set_bidirectional(model, recipe.bidirectional)
    model.config.llamakit_pack_documents = recipe.pack_documents  # evaluate packs the same way
    with quiet_transformers():
        model.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, tmp / name)
    _verify_export(tmp, model)
    replace_dir(tmp, final)


def _verify_export(directory: Path, model) -> None:
    from safetensors import safe_open

    from llamakit.errors import CheckFailed

    saved: set[str] = set()
    for f in directory.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as fh:
            saved.update(fh.keys())
    expected = set(model.state_dict())
    if not saved or not expected <= saved:
        missing = sorted(expected - saved)[:3]
        raise CheckFailed(f"exported model is incomplete (missing {missing})", path=directory, fix="check free disk space and re-run")
    cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if "id2label" not in cfg or "llamakit_bidirectional" not in cfg:
        raise CheckFailed("exported config.json lacks id2label/llamakit_bidirectional", path=directory)


def _versions() -> dict:
    import numpy
    import torch
    import transformers

    from llamakit import __version__

    v = {"llamakit": __version__, "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__, "numpy": numpy.__version__}
    try:
        import peft

        v["peft"] = peft.__version__
    except ImportError:  # pragma: no cover - peft is a dependency
        pass
    v["platform"] = platform.platform()
    v["machine"] = platform.machine()
    return v


def summarize(recipe, dist, det, split, labels, result, fingerprint, provenance, position, real_tokens, padded_tokens, device) -> dict:
    import torch

    return {
        "recipe": recipe.resolved(),
        **provenance,
        "fingerprint": fingerprint,
        "seeds": {"python": recipe.seed, "numpy": recipe.seed, "torch": recipe.seed},
        "data_order": {
            "generator": f"random.Random('llamakit-order:{recipe.seed}:<epoch>')",
            "sort_window": recipe.sort_window,
            "max_tokens_per_batch": recipe.max_tokens_per_batch,
            "max_sentences_per_batch": recipe.max_sentences_per_batch,
        },
        "threads": det.threads,
        "cpu": numerics.describe(),  # the ISA paths this run's kernels could take (recipe.cpu_isa caps them)
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "device": str(device),
        "world_size": dist.world,
        "backend": dist.backend,
        "versions": _versions(),
        "data": {"dir": recipe.data, "train_sha256": split.sha256, "train_sentences": len(split), "labels": labels},
        "steps": result.step,
        "total_steps": result.total_steps,
        "epochs": recipe.epochs,
        "tokens": result.tokens,
        "final_loss": result.final_loss,
        "resumed_from_step": result.resumed_from,
        # wall_s: this invocation (load, train, save); train_s and tokens_per_s: the training loop
        # over the whole run, across resumes
        "wall_s": round(result.wall_s, 3),
        "train_s": round(position.train_s, 3),
        "tokens_per_s": round(result.tokens_per_s, 3),
        "padding_fraction": round(1 - real_tokens / padded_tokens, 4) if padded_tokens else 0.0,
        "dev": result.dev,
    }


def summarize_ensemble(recipe, provenance: dict, members: list[dict]) -> dict:
    """An ensemble run's train_summary.json: the members' own summaries, and their totals where a report looks."""
    first = members[0]
    tokens = sum(m.get("tokens", 0) for m in members)
    train_s = sum(m.get("train_s", 0.0) for m in members)
    return {
        "recipe": recipe.resolved(),
        **provenance,
        "ensemble": len(members),
        "seeds": {f"member {k}": m.get("seeds") for k, m in enumerate(members, start=1)},
        "fingerprint": "+".join(str(m.get("fingerprint")) for m in members),
        **{k: first.get(k) for k in ("threads", "cpu", "deterministic", "device", "world_size", "backend", "versions", "data_order")},
        "steps": sum(m.get("steps", 0) for m in members),
        "total_steps": sum(m.get("total_steps", 0) for m in members),
        "tokens": tokens,
        "final_loss": [m.get("final_loss") for m in members],
        "wall_s": round(sum(m.get("wall_s", 0.0) for m in members), 3),
        "train_s": round(train_s, 3),
        "tokens_per_s": round(tokens / train_s, 3) if train_s else 0.0,
        "dev": [m.get("dev") for m in members],
        "members": members,
    }


def training_metrics(summary: dict) -> dict:
    """The run's headline numbers for `dvc metrics` / `dvc exp show` (finetune --metrics FILE): what
    the recipe decides (steps, tokens, final loss, the last dev score), not throughput or wall time,
    which differ on every run and would make the file differ between two runs of one recipe."""

    def one(s: dict) -> dict:
        m = {"steps": s.get("steps"), "tokens": s.get("tokens"), "final_loss": s.get("final_loss")}
        if s.get("dev"):
            last = s["dev"][-1]
            m["dev"] = {"token_micro_f1": last.get("token_micro_f1"), "loss": last.get("loss")}
        return m

    if isinstance(summary.get("members"), list):
        return {"members": {str(k): one(m) for k, m in enumerate(summary["members"], start=1)}}
    return one(summary)
