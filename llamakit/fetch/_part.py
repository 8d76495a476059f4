"""A download in progress, kept across runs and resumed from its verified prefix.

`DEST/.llamakit/parts/<id>.part` (or under $LLAMAKIT_DOWNLOADS_DIR) holds the bytes; `<id>.crc` is an append-only
list of (length, crc32) records, one per chunk written, each appended only after
the chunk's bytes were flushed (and fsynced); `<id>.json` says which file and
which expected content the part belongs to. On resume, the prefix covered by
records whose crc still matches is kept (and fed to the hashers, one read), the
rest is cut off: a crash re-transfers at most the one chunk that was in flight,
and bytes are only ever written at the offset the prefix ends at, never
appended blindly. A part whose identity changed (other revision, other size)
is thrown away.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Callable

from llamakit.fetch._files import atomic_write_json, disk_full, downloads_dir, fsync_dir
from llamakit.fetch._hashing import MultiHash
from llamakit.portable import fdatasync

_REC = struct.Struct("<II")
_READ = 4 << 20


class PartFile:
    def __init__(self, root: Path, rel: str, *, identity: dict, size: int | None, algos: tuple[str, ...],
                 chunk: int = 8 << 20, fsync: bool = True, on_bytes: Callable[[int], None] | None = None):
        self.rel = rel
        self.identity = {"path": rel, **identity}
        self._expected_size = size
        self.on_total: Callable[[int], None] | None = None
        self.algos = algos
        self.chunk = max(1, int(chunk))
        self.fsync = fsync
        self.on_bytes = on_bytes
        parts = downloads_dir(root) / "parts"
        parts.mkdir(exist_ok=True)
        stem = hashlib.sha1(rel.encode()).hexdigest()[:16] + "." + rel.rsplit("/", 1)[-1][:80]
        self.path = parts / (stem + ".part")
        self._crc_path = parts / (stem + ".crc")
        self._meta_path = parts / (stem + ".json")
        self._f = None
        self._crc_f = None
        self.resumed_from = 0

    # --- lifecycle ---------------------------------------------------------------

    def open(self) -> int:
        """Open for writing, keeping the verified prefix of an earlier run; returns its length."""
        try:
            meta = json.loads(self._meta_path.read_text())
        except (OSError, ValueError):
            meta = None
        if meta != self.identity:
            self._remove_files()
            atomic_write_json(self._meta_path, self.identity, fsync=False)
        self._f = open(self.path, "r+b" if self.path.exists() else "w+b", buffering=0)
        self._crc_f = open(self._crc_path, "r+b" if self._crc_path.exists() else "w+b", buffering=0)
        self._rebuild(self._verified_records())
        self.resumed_from = self.size
        return self.size

    def _verified_records(self) -> list[tuple[int, int]]:
        self._crc_f.seek(0)
        raw = self._crc_f.read()
        recs = [_REC.unpack_from(raw, i) for i in range(0, len(raw) - len(raw) % _REC.size, _REC.size)]
        good, pos = [], 0
        data_len = os.fstat(self._f.fileno()).st_size
        for length, crc in recs:
            if length == 0 or pos + length > data_len:
                break
            if self.expected_size is not None and pos + length > self.expected_size:
                break
            self._f.seek(pos)
            c, left = 0, length
            while left:
                b = self._f.read(min(left, _READ))
                if not b:
                    break
                c = zlib.crc32(b, c)
                left -= len(b)
            if left or c != crc:
                break
            good.append((length, crc))
            pos += length
        return good

    def _rebuild(self, records: list[tuple[int, int]]) -> None:
        """Make file, records and hashers agree on the prefix the records cover."""
        keep = sum(n for n, _ in records)
        self._hash = MultiHash(self.algos, size=self.expected_size) if "git" in self.algos else MultiHash(self.algos)
        self._f.seek(0)
        left = keep
        while left:
            b = self._f.read(min(left, _READ))
            if not b:
                raise OSError(f"{self.path} shrank while resuming")
            self._hash.update(b)
            left -= len(b)
        self._f.truncate(keep)
        self._f.seek(keep)
        self._crc_f.truncate(len(records) * _REC.size)
        self._crc_f.seek(len(records) * _REC.size)
        self._committed = keep
        self._pending_len = 0
        self._pending_crc = 0

    @property
    def expected_size(self) -> int | None:
        return self._expected_size

    @expected_size.setter
    def expected_size(self, value: int | None) -> None:
        """Learned from the server or the archive when no lock gave it up front."""
        self._expected_size = value
        if value is not None and self.on_total is not None:
            self.on_total(value)

    @property
    def size(self) -> int:
        return self._committed + self._pending_len

    # --- file-like interface (huggingface_hub's http_get writes through it) ---------

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        n = len(mv)
        off = 0
        while off < n:
            take = min(self.chunk - self._pending_len, n - off)
            piece = mv[off:off + take]
            try:
                rest = piece
                while rest:  # a raw write may take only part of the buffer
                    rest = rest[self._f.write(rest):]
            except OSError as exc:
                raise disk_full(exc, self.rel, free_at=self.path) from exc
            self._hash.update(piece)
            self._pending_crc = zlib.crc32(piece, self._pending_crc)
            self._pending_len += take
            off += take
            if self._pending_len == self.chunk:
                self.checkpoint()
        if self.on_bytes is not None:
            self.on_bytes(n)
        return n

    def tell(self) -> int:
        return self.size

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise OSError("PartFile only seeks to absolute offsets")
        if pos != self.size:
            self.truncate(pos)
        return pos

    def truncate(self, pos: int | None = None) -> int:
        """Cut back to `pos` (a server that ignored Range): re-derive records and hashes from disk."""
        pos = self.size if pos is None else pos
        if pos >= self.size:
            return self.size
        self.checkpoint()
        kept, total = [], 0
        self._crc_f.seek(0)
        raw = self._crc_f.read()
        for i in range(0, len(raw), _REC.size):
            length, crc = _REC.unpack_from(raw, i)
            if total + length > pos:
                break
            kept.append((length, crc))
            total += length
        head = b""
        if pos > total:  # the cut record's surviving head goes into a fresh record
            self._f.seek(total)
            head = self._f.read(pos - total)
        self._rebuild(kept)
        if head:
            saved, self.on_bytes = self.on_bytes, None
            self.write(head)
            self.on_bytes = saved
        return self.size

    def flush(self) -> None:
        pass

    # --- durability -----------------------------------------------------------------

    def checkpoint(self) -> None:
        """Make the pending bytes durable, then record them: a record never covers unsynced data."""
        if not self._pending_len:
            return
        try:
            if self.fsync:
                fdatasync(self._f.fileno())  # fsync where the OS has no fdatasync (macOS)
            self._crc_f.write(_REC.pack(self._pending_len, self._pending_crc))
        except OSError as exc:
            raise disk_full(exc, self.rel, free_at=self.path) from exc
        self._committed += self._pending_len
        self._pending_len = 0
        self._pending_crc = 0

    def digests(self) -> dict[str, str]:
        return self._hash.hexdigests()

    def close(self) -> None:
        """Stop (interrupted or done); what was written so far is recorded and resumes next run."""
        if self._f is None:
            return
        try:
            self.checkpoint()
        finally:
            self._f.close()
            self._crc_f.close()
            self._f = self._crc_f = None

    def commit(self, final: Path) -> None:
        """Move the (already verified) bytes to their final name."""
        self.close()
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, final)
        fsync_dir(final.parent)
        for p in (self._crc_path, self._meta_path):
            p.unlink(missing_ok=True)

    def discard(self) -> None:
        if self._f is not None:
            self._f.close()
            self._crc_f.close()
            self._f = self._crc_f = None
        self._remove_files()

    def _remove_files(self) -> None:
        for p in (self.path, self._crc_path, self._meta_path):
            p.unlink(missing_ok=True)
