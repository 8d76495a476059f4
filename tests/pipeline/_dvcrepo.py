"""Helpers for the pipeline tests: run DVC/git in a throwaway copy of the repo and lay out
the outputs a finished run leaves (see conftest.py for the two kinds of copy)."""


from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DVC = [sys.executable, "-m", "dvc"]
LABELS = ["B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER", "O"]
COPY = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", "llamakit", "manifests", "scripts", "requirements"]
CI_REF = "manifests/results/conll2003-smollm2-ci.yaml"


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    # Stage commands call `llamakit` and `python`: this interpreter's venv comes first on PATH,
    # and the copy's manifests (not the checkout's) are the ones llamakit reads.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    full_env = {**os.environ, "PATH": path, "LLAMAKIT_MANIFESTS": str(cwd / "manifests"), **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(DVC + list(args), cwd, check=check)


def git(cwd: Path, *args: str) -> str:
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd).stdout


def stage_outs(root: Path) -> dict[str, list[str]]:
    proc = run([sys.executable, "-c", "import json; from dvc.repo import Repo; r = Repo('.'); "
                "print(json.dumps({s.name: [o.def_path for o in s.outs] for s in r.index.stages}))"], root)
    return json.loads(proc.stdout)


def persisted_outs(root: Path) -> list[str]:
    """Persisted, uncached outputs (unfinished downloads, training state): empty after a finished run."""
    proc = run([sys.executable, "-c", "import json; from dvc.repo import Repo; r = Repo('.'); print(json.dumps("
                "[o.def_path for s in r.index.stages for o in s.outs if o.persist and not o.use_cache]))"], root)
    return json.loads(proc.stdout)


def copy_repo(root: Path, conll_dir: Path, *, max_length: int | None = None) -> None:
    root.mkdir(parents=True)
    for item in COPY:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            (root / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / item)
    params = yaml.safe_load((root / "params.yaml").read_text())
    # The data sits at ../shared/data/conll2003 from the real checkout only; edit the text (not a
    # yaml round trip) so the copy's params.yaml stays the real one, comments and all.
    text = (root / "params.yaml").read_text().replace(f"conll_dir: {params['data']['conll_dir']}", f"conll_dir: {conll_dir}")
    if max_length is not None:
        text = text.replace(f"max_length: {params['prepare']['max_length']}", f"max_length: {max_length}")
    (root / "params.yaml").write_text(text)
    lock = root / f"manifests/locks/{params['fetch']['model']}.gguf.json"
    if not lock.exists():  # committed by the fetch engineer; any JSON serves DVC as a dependency here
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("{}\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "pipeline code")


def record_ci_reference(root: Path) -> None:
    run([sys.executable, "-m", "llamakit.results", "record", "reports/conll2003-smollm2-ci/eval/metrics.json",
         "--name", "conll2003-smollm2-ci", "--profile", "ci", "--model", "test stand-in", "--out", CI_REF], root)


# --- default tier: recorded stand-ins -------------------------------------------


def _metrics() -> dict:
    from llamakit.train import metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-MISC"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-LOC"]]
    m = metrics.compute(gold, pred, LABELS, ["LOC", "MISC", "ORG", "PER"])
    m["pairs"] = [(g, p) for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)]
    return m


def fill_outputs(root: Path) -> None:
    m = _metrics()
    persisted = set(persisted_outs(root))
    for stage, outs in stage_outs(root).items():
        for out in outs:
            p = root / out
            p.parent.mkdir(parents=True, exist_ok=True)
            if out in persisted:
                p.mkdir(exist_ok=True)  # as a finished run leaves it: empty
            elif p.name == "metrics.json":
                doc = {"split": "test", "n_sentences": 2, "n_words": 9, **{k: m[k] for k in ("token", "entity", "headline")}}
                p.write_text(json.dumps(doc, indent=2) + "\n")
            elif p.name == "confusion.json":
                p.write_text(json.dumps(m["confusion"]) + "\n")
            elif p.name == "confusion.csv":
                p.write_text("actual,predicted\n" + "".join(f"{g},{pr}\n" for g, pr in m["pairs"]))
            elif p.name == "loss.tsv":
                p.write_text("step\tloss\n1\t2.0\n2\t1.0\n")
            elif p.suffix:
                p.write_text(f"{stage}: {out}\n")
            else:
                p.mkdir(exist_ok=True)
                (p / "part.bin").write_bytes(f"{stage} weights\n".encode() * 64)
    # What finetune leaves for evaluate and report: model/, a summary and a dvclive loss curve (and
    # each seed's fine-tune a model/ for its evaluate).
    for run_dir in [root / "work/finetune", *sorted((root / "work/seeds").glob("*/finetune"))]:
        (run_dir / "model").mkdir()
        (run_dir / "model/model.safetensors").write_bytes(b"finetuned weights\n" * 64)
    live = root / "work/finetune/dvclive/plots/metrics/train"
    live.mkdir(parents=True)
    (live / "loss.tsv").write_text("timestamp\tstep\tloss\n0\t1\t2.0\n0\t2\t1.0\n")
    (root / "work/finetune/train_summary.json").write_text(json.dumps({"seeds": {"torch": 0}, "threads": 2}))


# --- slow tier: a real (tiny) run -----------------------------------------------


def tiny_model_with_tokenizer(out: Path, conll_dir: Path) -> None:
    """What `convert` would leave, at toy size: a random tiny Llama plus a real byte-level BPE
    tokenizer (600 pieces, trained in memory on the train words) so `prepare` runs for real."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import make_llama_model

    words = [line.split(" ", 1)[0] for line in (conll_dir / "train.txt").read_text().splitlines()
             if line.strip() and not line.startswith("-DOCSTART-")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([" " + w for w in words], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>")
    make_llama_model("gqa", vocab_size=len(fast), max_position_embeddings=512).save_pretrained(out)
    fast.save_pretrained(out)




def stand_in_upstream(root: Path, stages: list[str], conll_dir: Path) -> None:
    """Outputs of fetch, verify and convert at toy size: byte stand-ins for the GGUF and the
    verification JSON, a tiny Llama with a real tokenizer for the converted model."""
    outs = stage_outs(root)
    for stage in stages:
        for out in outs[stage]:
            p = root / out
            p.parent.mkdir(parents=True, exist_ok=True)
            if stage == "convert":
                tiny_model_with_tokenizer(p, conll_dir)
            elif p.suffix:
                p.write_text(json.dumps({"stand_in_for": stage}) + "\n")
            else:
                p.mkdir()
                (p / "stand-in.gguf").write_bytes(b"GGUF stand-in\n" * 64)
