"""Convert Llama checkpoints between Meta's original format, HF safetensors and GGUF.

`convert()` is the entry point; the modules beside it each do one job:
keymap (the one Meta ⇄ HF ⇄ GGUF key map), arch (hyperparameters across formats),
detect (what a path holds), meta / hf / gguf (each format's reader and writer),
pth (safe lazy .pth reading, streaming torch-zip writing), tokenizer, reference
(Meta's forward pass), check (logit equivalence), output (atomic DST handling).
Heavy imports (torch, transformers) happen inside functions, never at import time.
"""

import sys
import types

from llamakit.convert.api import ConvertResult, convert

__all__ = ["ConvertResult", "convert"]


class _CallablePackage(types.ModuleType):
    """`from llamakit import convert` names this package once it is imported (a submodule import binds
    the parent's attribute), so the package itself calls `convert()`: the public API has one meaning."""

    def __call__(self, *args, **kwargs) -> ConvertResult:
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
