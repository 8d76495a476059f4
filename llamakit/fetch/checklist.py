"""Meta's `checklist.chk`: `md5sum` output, `<32 hex>  <path>` per line.

Parsed strictly. Anything else (an HTML error page saved under the checklist's
name, a sha256 list, an empty file) is an error naming the file and line: a
checklist that checks nothing must never look like a pass.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from llamakit.errors import InputFileError
from llamakit.fetch._files import safe_relpath

# md5sum writes "hash  name" (text mode) or "hash *name" (binary mode).
_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")
NAMES = ("checklist.chk", "tokenizer_checklist.chk")


def is_checklist(path: str) -> bool:
    return posixpath.basename(path).endswith("checklist.chk")


def parse_checklist(data: bytes, *, name: str, base: str = "") -> dict[str, str]:
    """{destination-relative path: md5}; `base` is the checklist's own folder (entries are relative to it)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputFileError("not an md5 checklist (binary content)", path=name, fix=_FIX) from None
    out: dict[str, str] = {}
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            what = "an HTML page" if "<" in line and ">" in line else "not an `md5  path` line"
            raise InputFileError(f"not an md5 checklist: line {i} is {what}", path=name, line=i, fix=_FIX)
        rel = safe_relpath(posixpath.join(base, m.group(2)) if base else m.group(2), source=name)
        if rel in out and out[rel] != m.group(1).lower():
            raise InputFileError(f"checklist lists '{rel}' twice with different md5s", path=name, line=i, fix=_FIX)
        out[rel] = m.group(1).lower()
    if not out:
        raise InputFileError("not an md5 checklist: it is empty", path=name, fix=_FIX)
    return out


def read_checklist(path: Path, *, root: Path) -> dict[str, str]:
    rel_dir = path.parent.relative_to(root).as_posix()
    return parse_checklist(path.read_bytes(), name=str(path), base="" if rel_dir == "." else rel_dir)


_FIX = "the download of the checklist went wrong (expired presigned URL?); fetch it again"
