"""Fine-tuning recipes: YAML (or params.yaml's `finetune:` section) + a profile + `-S key=value` overrides.

Merge order is fixed so a run is reproducible from its recorded inputs: the recipe's base keys,
then `profiles.<name>`, then each `-S` in command-line order. The result is validated by a
pydantic model that forbids unknown keys, so a typo (`learning_rate:`) fails loudly instead
of silently training with the default. Relative paths (model, data, out) are relative to the
working directory, which is where DVC runs a stage, so params.yaml can set them.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llamakit.errors import ManifestError, UsageError


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Recipe(BaseModel):
    """Every knob of a run. Defaults are the canonical CoNLL-2003 settings."""

    model_config = ConfigDict(extra="forbid")

    # paths
    model: str
    data: str
    out: str
    # Where an unfinished run keeps what it resumes from (checkpoints/, the dvclive log). None: OUT
    # itself. Set apart from OUT (params.yaml: work/finetune-state), it survives DVC, which deletes a
    # stage's outputs before rerunning it, and stays out of the DVC cache; a finished run copies its
    # log into OUT and empties it, so a later rerun (code or environment changed) starts from step 0.
    state: Optional[str] = None
    # what to train
    method: Literal["full", "lora"] = "full"
    bidirectional: bool = True
    lora: LoraSettings = LoraSettings()
    freeze_embeddings: bool = False
    classifier_dropout: float = Field(0.0, ge=0, lt=1)
    # optimisation
    epochs: int = Field(1, ge=1)
    max_steps: Optional[int] = Field(None, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    # data
    limit_train: Optional[int] = Field(None, ge=1)
    max_tokens_per_batch: int = Field(2048, ge=1)
    max_sentences_per_batch: int = Field(64, ge=1)
    sort_window: int = Field(2048, ge=1)
    # document context: pack consecutive sentences of a document into rows of up to this many
    # sub-tokens, every word still labelled once (llamakit/train/packing.py); 0 = one sentence per row
    pack_documents: int = Field(0, ge=0)
    # reproducibility and machine
    seed: int = 0
    threads: int = Field(2, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True
    # CPU numerics: `native` lets torch, MKL and oneDNN pick the widest ISA of this CPU; `avx2` caps
    # all three at AVX2 before torch starts (llamakit/numerics.py), so CPUs of other vendors and
    # generations can take the same code paths. Like threads, it changes rounding, not the recipe.
    cpu_isa: Literal["native", "avx2"] = "native"
    # checkpoints, logging, evaluation
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(1, ge=1)
    resume: Literal["auto", "never"] = "auto"
    stop_after_steps: Optional[int] = Field(None, ge=1)
    log_every: int = Field(10, ge=1)
    eval_sentences: int = Field(0, ge=0)
    # an ensemble: one member per entry, each this recipe with the entry's keys on top, trained one
    # after another into OUT/members/<k>/ and published as one OUT/model that `llamakit evaluate`
    # scores by the mean of the members' per-word probabilities (llamakit/train/ensemble.py)
    ensemble: list[dict[str, Any]] = []

    def resolved(self) -> dict:
        return json.loads(self.model_dump_json())

    def schedule_fingerprint(self) -> str:
        """Hash of everything that fixes the trajectory; a checkpoint only resumes a run with the
        same one. The data is checked by its sha256 instead of its path; paths (out, state), logging, checkpoint cadence, the interruption knob and the machine (device,
        threads, cpu_isa: they change rounding, not the recipe) do not change it. An ensemble's members
        each have their own. A key added after checkpoints existed counts only when set away from
        its default (which reproduces the behaviour from before the key), so upgrading llamakit does
        not orphan a run's checkpoints."""
        skip = {"ensemble", "data", "out", "state", "checkpoint_every", "keep_checkpoints", "resume", "stop_after_steps", "log_every", "eval_sentences", "device", "threads", "deterministic", "cpu_isa"}
        data = {k: v for k, v in self.resolved().items()
                if k not in skip and not (k in ADDED_LATER and v == Recipe.model_fields[k].default)}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def members(self) -> list["Recipe"]:
        """The ensemble's member recipes (OUT/members/<k>, k from 1); [] for a single model."""
        base = {k: v for k, v in self.resolved().items() if k != "ensemble"}
        out = []
        for k, extra in enumerate(self.ensemble, start=1):
            fixed = sorted(set(extra) & MEMBER_FIXED)
            if fixed:
                raise UsageError(f"ensemble member {k} sets {', '.join(fixed)}, which every member shares",
                                 fix="set those keys outside `ensemble:`; a member may change training keys only")
            merged = _deep_merge(base, extra)
            merged["out"] = str(Path(self.out) / "members" / str(k))
            merged["state"] = str(Path(self.state) / "members" / str(k)) if self.state else None
            try:
                out.append(Recipe.model_validate(merged))
            except ValidationError as exc:
                raise ManifestError(f"ensemble member {k}: {_explain(exc).removeprefix('invalid recipe: ')}", fix=_fix_hint(exc)) from exc
        return out


# recipe keys added after the first checkpoints were written; see Recipe.schedule_fingerprint
ADDED_LATER = {"pack_documents"}

# paths and the ensemble itself are the run's, not a member's; so is the process's CPU numerics
MEMBER_FIXED = {"model", "data", "out", "state", "ensemble", "cpu_isa"}  # cpu_isa: set once, before torch starts


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UsageError(f"override '{item}' is not key=value", fix="write e.g. -S lr=1e-4 or -S lora.r=8")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise UsageError(f"override '{item}' has an empty key", fix="write e.g. -S lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UsageError(f"override '{item}': value is not valid YAML ({exc.problem})", fix="quote it") from exc
    return key.split("."), value


def _set_path(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_section(path: str | Path) -> dict:
    """The recipe mapping: the file itself, or its `finetune:` section (params.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError("recipe not found", path=path, fix="pass a recipe YAML such as manifests/recipes/conll2003.yaml")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ManifestError(f"recipe is not valid YAML: {getattr(exc, 'problem', exc)}", path=where, fix="fix the YAML syntax") from exc
    if isinstance(doc, dict) and isinstance(doc.get("finetune"), dict):
        doc = doc["finetune"]
    if not isinstance(doc, dict):
        raise ManifestError("recipe must be a mapping of keys (or have a `finetune:` section)", path=path, fix="see manifests/recipes/conll2003.yaml")
    return doc


def load_recipe(path: str | Path, *, profile: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    raw = read_section(path)
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise ManifestError("`profiles` must map a name to a mapping of overrides", path=path)
    merged = raw
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise UsageError(f"recipe has no profile '{profile}' (it has: {known})", path=path, fix="use --profile with one of those")
        if not isinstance(profiles[profile], dict):
            raise ManifestError(f"profile '{profile}' must be a mapping", path=path)
        merged = _deep_merge(merged, profiles[profile])
    for item in overrides:
        keys, value = _parse_override(item)
        _set_path(merged, keys, value)
    try:
        recipe = Recipe.model_validate(merged)
    except ValidationError as exc:
        raise ManifestError(_explain(exc), path=path, fix=_fix_hint(exc)) from exc
    try:
        recipe.members()  # a member's typo fails here, before the first member trains for an hour
    except ManifestError as exc:
        raise ManifestError(exc.message, path=path, fix=exc.fix) from None
    except UsageError as exc:
        raise UsageError(exc.message, path=path, fix=exc.fix) from None
    return recipe


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:4]:
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        elif err["type"] == "missing":
            parts.append(f"missing key '{loc}'")
        else:
            parts.append(f"'{loc}': {err['msg']}")
    return "invalid recipe: " + "; ".join(parts)


def _fix_hint(exc: ValidationError) -> str:
    for err in exc.errors():
        if err["type"] == "extra_forbidden":
            loc = err["loc"]
            fields = LoraSettings.model_fields if loc[0] == "lora" and len(loc) > 1 else Recipe.model_fields
            close = difflib.get_close_matches(str(loc[-1]), list(fields), n=1)
            if close:
                return f"did you mean '{close[0]}'?"
    return "see the keys documented in llamakit/train/recipe.py (Recipe)"
