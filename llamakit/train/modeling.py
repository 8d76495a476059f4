"""Model loading shared by finetune and evaluate: token classifiers with optional bidirectional attention.

Dropping the causal mask (as LS-unLLaMA, arXiv:2310.01208, does for NER) needs two switches in
transformers 5.x: `config.is_causal = False` makes `create_causal_mask` build a bidirectional mask,
and each attention module's `is_causal = False` stops SDPA from re-imposing causality when it is
handed no mask (the no-padding fast path). Setting only one silently stays causal.
The choice is saved in config.json as `llamakit_bidirectional` so evaluate rebuilds the same model.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


def set_bidirectional(model, enabled: bool) -> None:
    base = getattr(model, "base_model", model)
    for cfg in {id(model.config): model.config, id(base.config): base.config}.values():
        cfg.is_causal = not enabled
        cfg.llamakit_bidirectional = bool(enabled)
    for module in model.modules():
        if hasattr(module, "is_causal") and hasattr(module, "q_proj"):
            module.is_causal = not enabled


def load_token_classifier(model_dir: str | Path, *, labels: list[str] | None = None, bidirectional: bool | None = None, dtype=None):
    """Load an HF Llama directory as LlamaForTokenClassification.

    `labels` (the label order) is required when starting from a causal LM; a fine-tuned
    checkpoint carries its own id2label. `bidirectional=None` keeps what the checkpoint says.
    """
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(model_dir)
    kwargs = {}
    if labels is not None:
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    model = AutoModelForTokenClassification.from_pretrained(
        model_dir, dtype=dtype or torch.float32, attn_implementation="sdpa", **kwargs
    )
    if bidirectional is None:
        bidirectional = bool(getattr(config, "llamakit_bidirectional", False))
    set_bidirectional(model, bidirectional)
    return model


@contextmanager
def quiet_transformers():
    """Loading a checkpoint prints a per-tensor progress bar and advisory warnings; a command whose
    own progress owns stderr (finetune, evaluate) keeps transformers to errors while it loads."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
