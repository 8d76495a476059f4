"""Convert Llama checkpoints between Meta's original format, HF safetensors and GGUF.

`convert()` is the entry point; the modules beside it each do one job:
keymap (the one Meta ⇄ HF ⇄ GGUF key map), arch (hyperparameters across formats),
detect (what a path holds), meta / hf / gguf (each format's reader and writer),
pth (safe lazy .pth reading, streaming torch-zip writing), tokenizer, reference
(Meta's forward pass), check (logit equivalence), output (atomic DST handling).
Heavy imports (torch, transformers) happen inside functions, never at import time.
"""

from llamakit.convert.api import ConvertResult, convert

__all__ = ["ConvertResult", "convert"]
