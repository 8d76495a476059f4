"""llamakit as a user gets it from `pip install`: the built wheel in a fresh virtualenv, run from `/`.

The venv holds the wheel and only the light dependencies (tests/wheel_venv.py): no
torch, no transformers, no source checkout on any path. Whatever works here works
for a user who never cloned the repo.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from wheel_venv import REPO, run_in


def _tracked(prefix: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", prefix], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


def test_wheel_holds_every_module_the_manifests_and_the_licence(wheel_venv):
    _, whl = wheel_venv
    with zipfile.ZipFile(whl) as zf:
        names = set(zf.namelist())
        meta = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        licence = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "llamakit").rglob("*.py")}
    assert modules - names == set()
    data = {f"llamakit/{p}" for p in _tracked("manifests") if p.endswith((".yaml", ".json"))}
    assert data and data - names == set()
    assert "License-Expression: Apache-2.0" in meta  # PEP 639 metadata: needs the setuptools the floor names
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "Requires-Dist: huggingface-hub<3,>=2.0" in meta or "Requires-Dist: huggingface-hub>=2.0,<3" in meta


def test_list_info_and_module_entry_point_from_root(wheel_venv):
    bin_dir, _ = wheel_venv
    p = run_in(bin_dir, "python", "-c", "import llamakit, llamakit.catalog as c, importlib.util as u; "
               "print(llamakit.__file__); print(c.manifests_dir()); print(u.find_spec('torch') is None)")
    assert p.returncode == 0, p.stderr
    pkg_file, manifests, no_torch = p.stdout.split("\n")[:3]
    venv = str(bin_dir.parent)
    assert pkg_file.startswith(venv) and manifests.startswith(venv) and no_torch == "True"  # nothing from the checkout
    p = run_in(bin_dir, "list", env={"COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    assert "llama-2-70b" in p.stdout and "smollm2-135m-instruct" in p.stdout
    p = run_in(bin_dir, "list", "--json")
    ours = subprocess.run([sys.executable, "-m", "llamakit", "list", "--json"], capture_output=True, text=True, cwd=REPO)
    assert json.loads(p.stdout) == json.loads(ours.stdout)  # the whole catalog shipped, not a part of it
    p = run_in(bin_dir, "info", "llama-2-70b", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["intermediate_size"] == 28672
    p = run_in(bin_dir, "python", "-m", "llamakit", "--version")
    assert p.returncode == 0 and p.stdout.startswith("llamakit ")
    p = run_in(bin_dir, "info", "llama-2-70")
    assert p.returncode == 2 and "llama-2-70b" in p.stderr and "Traceback" not in p.stderr


def test_verify_and_lock_from_an_unrelated_directory(wheel_venv, tmp_path):
    bin_dir, _ = wheel_venv
    rel = tmp_path / "release"
    files = {"params.json": b'{"dim": 8}', "consolidated.00.pth": bytes(range(256)) * 400}
    for name, data in files.items():
        (rel / name).parent.mkdir(parents=True, exist_ok=True)
        (rel / name).write_bytes(data)
    (rel / "checklist.chk").write_text("".join(f"{hashlib.md5(d).hexdigest()}  {n}\n" for n, d in files.items()))
    work = tmp_path / "work"
    work.mkdir()
    p = run_in(bin_dir, "lock", "llama-2-7b", "--source", str(rel), cwd=work)
    assert p.returncode == 0, p.stderr
    lock = work / "llama-2-7b.meta.json"  # an installed package is never written to: the lock lands here
    assert json.loads(lock.read_text())["files"][0]["sha256"]
    p = run_in(bin_dir, "verify", str(rel), "--lock", str(lock))
    assert p.returncode == 0, p.stderr
    data = bytearray(files["consolidated.00.pth"])
    data[1000] ^= 1
    (rel / "consolidated.00.pth").write_bytes(bytes(data))
    p = run_in(bin_dir, "verify", str(rel), "--lock", str(lock))
    assert p.returncode == 1 and "consolidated.00.pth" in p.stderr and "Traceback" not in p.stderr


def test_a_users_own_manifests_directory_overrides_the_shipped_one(wheel_venv, tmp_path):
    bin_dir, _ = wheel_venv
    own = tmp_path / "mine" / "catalog"
    own.mkdir(parents=True)
    own.joinpath("t.yaml").write_text(
        "family: t\nreleases:\n  - {name: my-tiny, params: 1M, variant: base, gated: false, license: x, context_length: 8,\n"
        "     formats: [meta], mp_shards: 1, meta: {dim: 8, n_layers: 1, n_heads: 2, vocab_size: 8, multiple_of: 4, norm_eps: 1.0e-5}}\n")
    p = run_in(bin_dir, "list", "--json", env={"LLAMAKIT_MANIFESTS": str(tmp_path / "mine")})
    assert p.returncode == 0, p.stderr
    assert [r["name"] for r in json.loads(p.stdout)] == ["my-tiny"]


def test_python_api_names_are_documented_and_lazy(wheel_venv):
    bin_dir, _ = wheel_venv
    code = ("import sys, llamakit\n"
            "assert 'huggingface_hub' not in sys.modules and 'llamakit.fetch' not in sys.modules\n"
            "from llamakit import fetch_release, verify_dir, write_lock, read_lock, get_release, list_releases\n"
            "for f in (fetch_release, verify_dir, write_lock, read_lock, get_release, list_releases):\n"
            "    assert f.__doc__, f\n"
            "print(get_release('llama-2-70b').name)\n")
    p = run_in(bin_dir, "python", "-c", code)
    assert p.returncode == 0 and p.stdout.strip() == "llama-2-70b", p.stderr
