"""llamakit: fetch, verify, convert and reproduce Llama-family releases."""

__version__ = "0.1.0"
