"""llamakit: fetch, verify, convert and reproduce Llama-family releases.

The Python API is the command line's, as plain functions (each raises a typed
`llamakit.errors.LlamakitError` instead of exiting):

    from llamakit import fetch_release, verify_dir, write_lock, convert, get_release, list_releases

    res = fetch_release("llama-3.2-1b", source="hf")   # into the HF cache; res.out is the snapshot
    verify_dir(res.out).raise_for_mismatch()             # sizes + digests (content-addressed in the cache)
    convert(res.out, "llama-3.2-1b-meta", to="meta")     # logits-checked conversion

Names are imported on first use, so `import llamakit` stays instant (no torch,
no huggingface_hub until a function that needs them runs).
"""

from __future__ import annotations

__version__ = "0.1.0"

# name -> (module, attribute); resolved lazily by __getattr__ below.
_API = {
    "fetch_release": ("llamakit.fetch", "fetch_release"),
    "FetchResult": ("llamakit.fetch", "FetchResult"),
    "verify_dir": ("llamakit.verify", "verify_dir"),
    "VerifyReport": ("llamakit.verify", "VerifyReport"),
    "write_lock": ("llamakit.fetch.lock", "write_lock"),
    "read_lock": ("llamakit.fetch.lockfile", "read_lock"),
    "convert": ("llamakit.convert", None),  # the package, callable as convert(src, dst, ...)
    "get_release": ("llamakit.catalog", "get_release"),
    "list_releases": ("llamakit.catalog", "list_releases"),
    "release_info": ("llamakit.catalog", "release_info"),
    "LlamakitError": ("llamakit.errors", "LlamakitError"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llamakit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
