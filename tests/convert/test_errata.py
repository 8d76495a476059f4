"""The release errata registry and the one function that decides a source's architecture from it."""

from __future__ import annotations

import shutil

import pytest
import yaml

from llamakit import catalog
from llamakit.convert import errata
from llamakit.convert.arch import Arch
from llamakit.convert.decide import Facts, decide, params_json
from llamakit.errors import ManifestError

# Llama 3.2 1B's text architecture as its files state it: no factor, no context, tying left to content
L32_1B = Arch(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, hidden_dim=8192, norm_eps=1e-5,
              rope_theta=500000.0)
L31_8B = Arch(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, hidden_dim=14336, norm_eps=1e-5,
              rope_theta=500000.0)


def test_every_entry_validates_and_agrees_with_the_catalog():
    es = errata.load_errata()
    assert len({e.id for e in es}) == len(es) >= 3
    cat = catalog.load_catalog()
    for e in es:
        assert e.evidence and all(link.startswith("https://") for link in e.evidence)
        for name in e.releases:
            rel = cat.releases[name]
            if e.sets.rope_scaling:
                assert rel.rope_scaling == e.sets.rope_scaling
            if e.sets.tie_embeddings is not None:
                assert rel.tie_embeddings == e.sets.tie_embeddings


def _copy_manifests(tmp_path):
    root = tmp_path / "manifests"
    shutil.copytree(catalog.manifests_dir() / "catalog", root / "catalog")
    shutil.copytree(catalog.manifests_dir() / "errata", root / "errata")
    return root


@pytest.mark.parametrize("edit,message", [
    (lambda e: e.update(surprise=1), r"invalid field 'errata\.0\.surprise'"),
    (lambda e: e.update(follows="rumour"), r"invalid field 'errata\.0\.follows'"),
    (lambda e: e.update(evidence=["a blog"]), r"evidence must be public https:// links"),
    (lambda e: e["releases"].append("llama-9-1b"), r"names unknown release 'llama-9-1b'"),
    (lambda e: e["sets"]["rope_scaling"].update(factor=16.0), r"but the catalog gives llama-3\.1-8b"),
])
def test_a_bad_entry_names_the_file_and_the_field(tmp_path, edit, message):
    root = _copy_manifests(tmp_path)
    path = root / "errata" / "llama-3.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data["errata"][0])
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError, match=message) as exc:
        errata.load_errata(root)
    assert "llama-3.yaml" in exc.value.one_line()


def test_llama32_1b_as_meta_ships_it_is_tied_with_factor_32():
    d = decide(Facts(L32_1B, use_scaled_rope=True, output="same_as_embedding", context_given=False))
    assert d.arch.tied and d.arch.rope_scaling["factor"] == 32.0 and d.arch.max_position_embeddings == 131072
    assert d.errata == ["llama3.2-small-rope-factor-32", "llama3.2-small-tied-output"]
    assert "llama-3.2-1b" in d.catalog and "llama-guard-3-1b" in d.catalog


def test_an_untied_fine_tune_of_32_1b_keeps_factor_32_and_matches_no_tied_release():
    d = decide(Facts(L32_1B, use_scaled_rope=True, output="distinct", context_given=False))
    assert not d.arch.tied and d.arch.rope_scaling["factor"] == 32.0  # the base model's rope, whatever its head
    assert d.catalog == [] and d.errata == ["llama3.2-small-rope-factor-32"]


def test_llama31_gets_metas_constants_and_says_so():
    d = decide(Facts(L31_8B, use_scaled_rope=True, output="distinct", context_given=False))
    assert d.arch.rope_scaling == dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                       original_max_position_embeddings=8192)
    assert d.errata == ["llama3-rope-constants"] and "llama-3.1-8b" in d.catalog


def test_files_that_state_everything_need_no_errata():
    stated = L32_1B.with_(rope_scaling=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                            original_max_position_embeddings=8192), tied=True)
    d = decide(Facts(stated, use_scaled_rope=True, output="absent", context_given=True))
    assert d.errata == [] and d.arch.rope_scaling["factor"] == 32.0


def test_params_json_is_metas_and_reads_back_to_the_same_architecture():
    d = decide(Facts(L32_1B, use_scaled_rope=True, output="same_as_embedding", context_given=False))
    p = params_json(d.arch)
    assert p["use_scaled_rope"] is True and not any(k.startswith("rope_") and k != "rope_theta" for k in p)
    # a scaling no erratum implies is kept in llamakit's own keys (Meta's code ignores them)
    odd = d.arch.with_(rope_scaling=dict(d.arch.rope_scaling, original_max_position_embeddings=64))
    assert params_json(odd)["rope_original_max_position_embeddings"] == 64 and "rope_scaling_factor" not in params_json(odd)
