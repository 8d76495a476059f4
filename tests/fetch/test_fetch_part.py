"""Building blocks: the resumable part file, the checklist parser, path safety, lock parsing."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest

from llamakit.errors import InputFileError, ManifestError, UnsafePathError
from llamakit.fetch._files import safe_dest, safe_relpath
from llamakit.fetch._part import PartFile
from llamakit.fetch.checklist import parse_checklist
from llamakit.fetch.lock import parse_lock, read_lock

CHUNK = 4096


def new_part(root, size=None, **identity):
    return PartFile(root, "w/model.bin", identity=identity, size=size, algos=("sha256", "md5"), chunk=CHUNK, fsync=False)


def test_crash_keeps_only_the_recorded_prefix_and_hashes_stay_exact(tmp_path):
    data = random.Random(0).randbytes(10 * CHUNK + 123)
    p = new_part(tmp_path, len(data))
    p.open()
    p.write(data[: 5 * CHUNK + 700])  # 5 chunks recorded, 700 bytes written but not yet recorded
    p._f.close()  # a crash: no close(), no checkpoint of the tail
    p._crc_f.close()
    q = new_part(tmp_path, len(data))
    assert q.open() == 5 * CHUNK  # re-transfers the 700 unrecorded bytes: less than one chunk
    q.write(data[5 * CHUNK:])
    assert q.digests() == {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
    q.commit(tmp_path / "final.bin")
    assert (tmp_path / "final.bin").read_bytes() == data
    assert not list((tmp_path / ".llamakit/parts").iterdir())


def test_damaged_prefix_is_cut_at_the_first_bad_chunk(tmp_path):
    data = random.Random(1).randbytes(6 * CHUNK)
    p = new_part(tmp_path, len(data))
    p.open()
    p.write(data[: 5 * CHUNK])
    p.close()
    with open(p.path, "r+b") as f:  # the disk lost a byte in chunk 3
        f.seek(3 * CHUNK + 10)
        f.write(b"\xff" if data[3 * CHUNK + 10] != 0xFF else b"\0")
    q = new_part(tmp_path, len(data))
    assert q.open() == 3 * CHUNK
    q.write(data[3 * CHUNK:])
    assert q.digests()["sha256"] == hashlib.sha256(data).hexdigest()


def test_torn_record_and_changed_identity(tmp_path):
    data = random.Random(2).randbytes(3 * CHUNK)
    p = new_part(tmp_path, len(data), sha256="a" * 64)
    p.open()
    p.write(data)
    p.close()
    with open(p._crc_path, "ab") as f:
        f.write(b"\1\2\3")  # half a record from a crash while appending
    assert new_part(tmp_path, len(data), sha256="a" * 64).open() == 3 * CHUNK
    # another revision of the file: the old bytes are not a prefix of it
    assert new_part(tmp_path, len(data), sha256="b" * 64).open() == 0


def test_rewind_from_a_server_that_ignored_range(tmp_path):
    data = random.Random(3).randbytes(3 * CHUNK + 5)
    p = new_part(tmp_path, len(data))
    p.open()
    p.write(data[:CHUNK + 100])
    p.seek(p.tell() - (CHUNK + 100))  # what huggingface_hub's http_get does on a 200 to a Range request
    p.truncate()
    assert p.size == 0
    p.write(data)
    assert p.size == len(data) and p.digests()["md5"] == hashlib.md5(data).hexdigest()
    p.truncate(CHUNK + 7)  # cut inside a record: the surviving head is re-recorded
    p.write(data[CHUNK + 7:])
    assert p.digests()["sha256"] == hashlib.sha256(data).hexdigest()


def test_checklist_parser():
    good = b"6efc8dab194ab59e49cd24be5574d85e  consolidated.00.pth\n" + b"eeec4125e9c7560836b4873b6f8e3025 *tokenizer.model\n"
    assert parse_checklist(good, name="c", base="m") == {"m/consolidated.00.pth": "6efc8dab194ab59e49cd24be5574d85e",
                                                       "m/tokenizer.model": "eeec4125e9c7560836b4873b6f8e3025"}
    with pytest.raises(InputFileError, match="line 1 is an HTML page"):
        parse_checklist(b"<html><head><title>403</title></head></html>", name="checklist.chk")
    with pytest.raises(InputFileError, match="empty"):
        parse_checklist(b"\n\n", name="checklist.chk")
    with pytest.raises(InputFileError, match="line 1"):  # a sha256 list is not an md5 list (llama-models#515)
        parse_checklist(hashlib.sha256(b"").hexdigest().encode() + b"  params.json\n", name="checklist.chk")
    with pytest.raises(UnsafePathError):
        parse_checklist(b"6efc8dab194ab59e49cd24be5574d85e  ../../x\n", name="checklist.chk")


@pytest.mark.parametrize("bad", ["", "/abs", "a/../../b", "..", "a\\b", "C:/x", ".llamakit/lock.json", "a\0b"])
def test_unsafe_relpaths(bad):
    with pytest.raises(UnsafePathError):
        safe_relpath(bad)


def test_safe_paths_and_symlinks(tmp_path):
    assert safe_relpath("./a//b/./c") == "a/b/c"
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    os.symlink(root / "inside", root / "alias")
    assert safe_dest(root, "alias/x") == root / "alias" / "x"  # a symlink that stays inside is fine
    os.symlink(tmp_path, root / "out")
    with pytest.raises(UnsafePathError):
        safe_dest(root, "out/x")


def test_lock_parsing(tmp_path):
    entry = {"path": "a.bin", "size": 3, "sha256": "0" * 64}
    good = {"lock_version": 1, "name": "m", "format": "hf", "source": {"kind": "hf"}, "revision": None, "files": [entry]}
    assert parse_lock(good, path="x").files[0].path == "a.bin"
    for mutate, err in [
        (lambda d: d["files"][0].update(path="../a.bin"), UnsafePathError),
        (lambda d: d["files"][0].update(path="/etc/passwd"), UnsafePathError),
        (lambda d: d["files"][0].update(sha256="xyz"), ManifestError),
        (lambda d: d["files"][0].pop("sha256"), ManifestError),
        (lambda d: d["files"].append(dict(entry)), ManifestError),
        (lambda d: d.update(lock_version=9), ManifestError),
        (lambda d: d.pop("source"), ManifestError),
    ]:
        d = json.loads(json.dumps(good))
        mutate(d)
        with pytest.raises(err):
            parse_lock(d, path="x")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ManifestError, match="malformed lock"):
        read_lock(tmp_path / "bad.json")
