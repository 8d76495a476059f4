"""Bad input through the real CLI: one line on stderr, exit 2 (bad input) or 1 (failed check), nothing at DST."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from convert_helpers import write_meta_checkpoint

from llamakit.cli import main

pytestmark = pytest.mark.usefixtures("small_blocks")


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    capsys.readouterr()  # drop what the test's own setup printed
    monkeypatch.setattr(sys, "argv", ["llamakit", "convert", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def assert_refused(tmp_path, code, err, *, expect_code=2, mentions=()):
    assert code == expect_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for m in mentions:
        assert m in lines[0], (m, lines[0])
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


@pytest.fixture
def meta2(tmp_path):
    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 2)
    return src


@pytest.mark.parametrize("extra", [[], ["--no-check"]])  # --no-check reads the zip records without torch
def test_truncated_shard(tmp_path, meta2, monkeypatch, capsys, extra):
    data = (meta2 / "consolidated.01.pth").read_bytes()
    (meta2 / "consolidated.01.pth").write_bytes(data[: len(data) * 2 // 3])
    code, err = run_cli(monkeypatch, capsys, meta2, tmp_path / "out", *extra)
    assert_refused(tmp_path, code, err, mentions=("consolidated.01.pth", "truncated"))


class _Payload:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-llamakit-victim",))


@pytest.mark.parametrize("extra", [[], ["--no-check"]])
def test_malicious_pickle(tmp_path, meta2, monkeypatch, capsys, extra):
    shard = torch.load(meta2 / "consolidated.00.pth", weights_only=True)
    shard["layers.0.attention.wq.weight"] = _Payload()
    torch.save(shard, meta2 / "consolidated.00.pth")
    code, err = run_cli(monkeypatch, capsys, meta2, tmp_path / "out", *extra)
    assert_refused(tmp_path, code, err, mentions=("consolidated.00.pth", "refusing to unpickle"))


@pytest.mark.parametrize("which", ["consolidated.01.pth", "consolidated.00.pth"])
def test_missing_shard(tmp_path, meta2, monkeypatch, capsys, which):
    (meta2 / which).unlink()  # the last shard gone looks like MP 1: the shapes give it away
    code, err = run_cli(monkeypatch, capsys, meta2, tmp_path / "out")
    assert_refused(tmp_path, code, err, mentions=("missing",) if which.endswith("00.pth") else ("MP 2",))


def test_inconsistent_shard_shapes(tmp_path, monkeypatch, capsys):
    other, _, _ = write_meta_checkpoint(tmp_path / "other", "gqa", 2, seed=1)
    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 2)
    shard = torch.load(src / "consolidated.01.pth", weights_only=True)
    shard["layers.1.feed_forward.w2.weight"] = shard["layers.1.feed_forward.w2.weight"][:, :-1].clone()
    torch.save(shard, src / "consolidated.01.pth")
    code, err = run_cli(monkeypatch, capsys, src, tmp_path / "out")
    assert_refused(tmp_path, code, err, mentions=("layers.1.feed_forward.w2.weight", "differs between shards"))
    shutil.rmtree(other)


def test_unknown_key(tmp_path, meta2, monkeypatch, capsys):
    for r in range(2):
        shard = torch.load(meta2 / f"consolidated.{r:02d}.pth", weights_only=True)
        shard["layers.0.attention.wqkv.weight"] = torch.zeros(3)
        torch.save(shard, meta2 / f"consolidated.{r:02d}.pth")
    code, err = run_cli(monkeypatch, capsys, meta2, tmp_path / "out")
    assert_refused(tmp_path, code, err, mentions=("layers.0.attention.wqkv.weight", "unknown tensor key"))


@pytest.mark.parametrize("text,mention", [
    ("{not json", "not valid JSON"),
    (json.dumps({"n_layers": 2, "n_heads": 8}), "lacks 'dim'"),
    (json.dumps({"dim": 64, "n_layers": 2, "n_heads": "8"}), "'n_heads' must be a positive integer"),
    (json.dumps({"dim": 64, "n_layers": 2, "n_heads": 8, "n_kv_heads": 3}), "not a multiple of n_kv_heads"),
    (json.dumps({"dim": 64, "n_layers": 2, "n_heads": 8, "n_kv_heads": 2, "multiple_of": 7}), "FFN hidden size"),
    (json.dumps({"dim": 64, "n_layers": 3, "n_heads": 8, "n_kv_heads": 2, "multiple_of": 32, "ffn_dim_multiplier": 1.3}),
     "layers.2"),
])
def test_bad_params_json(tmp_path, meta2, monkeypatch, capsys, text, mention):
    (meta2 / "params.json").write_text(text)
    code, err = run_cli(monkeypatch, capsys, meta2, tmp_path / "out")
    assert_refused(tmp_path, code, err, mentions=(mention,))


@pytest.mark.parametrize("cut", ["magic", "header", "data"])
def test_corrupt_gguf(tmp_path, smollm2_gguf, monkeypatch, capsys, cut):
    data = smollm2_gguf.read_bytes()
    bad = {"magic": b"GGUX" + data[4:4096], "header": data[:200_000], "data": data[: len(data) - 1000]}[cut]
    (tmp_path / "bad.gguf").write_bytes(bad)
    code, err = run_cli(monkeypatch, capsys, tmp_path / "bad.gguf", tmp_path / "out")
    assert_refused(tmp_path, code, err, mentions=("bad.gguf",))


def test_mp_that_does_not_divide_the_heads(tmp_path, monkeypatch, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    # SmolLM2's attention: 9 heads, 3 kv heads
    cfg = LlamaConfig(hidden_size=72, intermediate_size=192, num_hidden_layers=1, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=96)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    code, err = run_cli(monkeypatch, capsys, tmp_path / "hf", tmp_path / "out", "--to", "meta", "--mp", "2")
    assert_refused(tmp_path, code, err, mentions=("--mp 2", "9 attention heads", "[1, 3]"))
    code, err = run_cli(monkeypatch, capsys, tmp_path / "hf", tmp_path / "out", "--mp", "3")
    assert_refused(tmp_path, code, err, mentions=("--to meta",))


def test_non_empty_destination_needs_force(tmp_path, meta2, monkeypatch, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, err = run_cli(monkeypatch, capsys, meta2, tmp_path / "out")
    assert code == 2 and "destination exists" in err and "--force" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    code, err = run_cli(monkeypatch, capsys, meta2, tmp_path / "out", "--force", "--no-check")
    assert code == 0, err
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_missing_source_and_unknown_layout(tmp_path, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, tmp_path / "nope", tmp_path / "out")
    assert_refused(tmp_path, code, err, mentions=("does not exist",))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hi")
    code, err = run_cli(monkeypatch, capsys, tmp_path / "junk", tmp_path / "out")
    assert_refused(tmp_path, code, err, mentions=("no checkpoint found",))


def _entry_process(tmp_path, *args) -> tuple[subprocess.CompletedProcess, bool]:
    """`llamakit convert ARGS` through the process entry point (what the console script and `python -m llamakit`
    run), with an atexit hook that leaves a mark: (the process, whether the interpreter's teardown ran)."""
    mark = tmp_path / "teardown-ran"
    code = (f"import atexit, sys\natexit.register(lambda: open({str(mark)!r}, 'w').close())\n"
            f"sys.argv = ['llamakit', 'convert', *{[str(a) for a in args]!r}]\n"
            "from llamakit.cli import entry\nentry()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return proc, mark.exists()


def test_a_finished_conversion_skips_the_interpreter_teardown_but_not_its_output(tmp_path):
    src, _, _ = write_meta_checkpoint(tmp_path / "meta", "gqa", 2)
    proc, teardown = _entry_process(tmp_path, src, tmp_path / "hf", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["check"]["max_abs"] >= 0  # the whole summary was flushed before os._exit
    assert (tmp_path / "hf" / "config.json").is_file() and not teardown
    # a refused conversion exits the ordinary way: its one line, its exit code, the teardown
    proc, teardown = _entry_process(tmp_path, src, tmp_path / "hf")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and teardown
