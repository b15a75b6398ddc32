"""The controller's copies of printer config folders: versions, digests, size limits, streamed copies.

Pure Python on the controller's files (no pyinfra): ``operations/backup.py`` turns these into
operations and documents the layout. Every copy goes a block at a time (``_CHUNK``): a file is
never held whole in memory, and no symlink is ever made or followed on the controller (a
version's links are data, ``LINKS.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from pyinfra_ratos.printer.klipper_config import SAVE_CONFIG_MARKER

MANIFEST = "MANIFEST.sha256"
LINKS = "LINKS.json"
IDENTITY = "IDENTITY.json"
_VERSION = re.compile(r"(?P<stamp>\d{8}T\d{6}\.\d{6}Z)-(?P<digest>[0-9a-f]{12})")
MIB = 1024 * 1024
DEFAULT_MAX_FILE_MB = 16
DEFAULT_MAX_TOTAL_MB = 64
# The Pi hashes files up to this size only (a bigger one is never backed up, whatever the host
# data says): a 1 GB file in the folder costs the probe a stat, not a read.
MAX_FILE_CEILING_MB = 64
_CHUNK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(name: str) -> str:
    """A name from a Pi, its control characters escaped, for a terminal or a report."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", name)


def manifest_text(files: Mapping[str, str]) -> str:
    """``sha256sum``-style lines, sorted by path: what a version's digest is taken over."""
    return "".join(f"{files[name]}  {name}\n" for name in sorted(files))


def links_text(links: Mapping[str, str]) -> str:
    return "".join(f"link {json.dumps([name, links[name]])}\n" for name in sorted(links))


def manifest_digest(files: Mapping[str, str]) -> str:
    return hashlib.sha256(manifest_text(files).encode("utf-8", "surrogateescape")).hexdigest()


def backup_digest(files: Mapping[str, str], links: Mapping[str, str] | None = None) -> str:
    """A version's digest: of its manifest, and of its links when it has any (a folder without
    links keeps the digest it had before links were backed up)."""
    text = manifest_text(files) + links_text(links or {})
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def has_save_config(text: str) -> bool:
    return SAVE_CONFIG_MARKER in text.splitlines()


def human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def select_files(sizes: Mapping[str, int], max_file: int, max_total: int) -> tuple[list[str], dict[str, str]]:
    """Which files a version holds: (kept, {left out: why}). printer.cfg first, then the
    smallest: the configuration is kept, a large stray file is what the limits leave out."""
    kept: list[str] = []
    skipped: dict[str, str] = {}
    total = 0
    for name in sorted(sizes, key=lambda n: (n != "printer.cfg", sizes[n], n)):
        size = sizes[name]
        if size > max_file:
            skipped[name] = f"{human(size)}, over {human(max_file)} a file"
        elif total + size > max_total:
            skipped[name] = f"{human(size)}, past the backup's {human(max_total)} in all"
        else:
            kept.append(name)
            total += size
    return sorted(kept), skipped


def limits(data: Mapping[str, Any]) -> tuple[int, int, list[str]]:
    """(max file bytes, max total bytes, problems) from host data."""
    problems = []
    found = []
    for key, default, ceiling in (("config_backup_max_file_mb", DEFAULT_MAX_FILE_MB, MAX_FILE_CEILING_MB),
                                  ("config_backup_max_total_mb", DEFAULT_MAX_TOTAL_MB, None)):
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or (ceiling is not None and value > ceiling):
            bound = f" and at most {ceiling}" if ceiling else ""
            problems.append(f"field '{key}' is {value!r}: a number of MiB above 0{bound} [{default}]")
            value = default
        found.append(int(value * MIB))
    return found[0], found[1], problems


def host_folder(root: str | Path, name: str) -> Path:
    return Path(root).expanduser() / name.replace("/", "_")


def versions(folder: Path) -> list[Path]:
    """A host's backup versions, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and _VERSION.fullmatch(p.name) and (p / MANIFEST).exists())


def version_links(version: Path) -> dict[str, str]:
    try:
        links = json.loads((version / LINKS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in links.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(links, dict) else {}


def version_identity(version: Path) -> dict[str, Any]:
    """The identity a version was taken from; ``{}`` for one made before identities were kept."""
    try:
        found = json.loads((version / IDENTITY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def version_digest(version: Path) -> str:
    digest = hashlib.sha256((version / MANIFEST).read_bytes())
    digest.update(links_text(version_links(version)).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def version_file(version: Path, name: str) -> Path | None:
    """A file of a version, through its links (as Klipper would read it), never out of the version."""
    root = version / "files"
    links = version_links(version)
    rel = PurePosixPath(name)
    for _ in range(8):  # a loop of links ends here
        if str(rel) not in links:
            path = root / rel
            return path if path.is_file() and not path.is_symlink() else None
        target = PurePosixPath(links[str(rel)])
        if target.is_absolute():
            return None  # a link out of the folder: its target was never backed up
        parts: list[str] = []
        for part in (rel.parent / target).parts:
            if part == "..":
                if not parts:
                    return None
                parts.pop()
            elif part != ".":
                parts.append(part)
        rel = PurePosixPath(*parts) if parts else PurePosixPath(".")
    return None


def newest_calibrated(folder: Path) -> Path | None:
    """The newest version whose printer.cfg (or the file it links to) has a SAVE_CONFIG block."""
    for version in reversed(versions(folder)):
        cfg = version_file(version, "printer.cfg")
        if cfg is not None and has_save_config(cfg.read_text(encoding="utf-8", errors="surrogateescape")):
            return version
    return None


def _safe_name(name: str) -> str | None:
    path = PurePosixPath(name)
    parts = [p for p in path.parts if p != "."]
    if path.is_absolute() or ".." in parts or not parts:
        return None
    return "/".join(parts)


def _copy_hashed(source: Any, target: Path, limit: int) -> tuple[str, int] | None:
    """Stream ``source`` into ``target``, hashing as it goes; None (nothing kept) past ``limit``."""
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        for block in iter(lambda: source.read(_CHUNK), b""):
            size += len(block)
            if size > limit:
                break
            digest.update(block)
            out.write(block)
    if size > limit:
        target.unlink()
        return None
    return digest.hexdigest(), size


def store_version(incoming: str, folder: str, keep: int, source: Mapping[str, Any] | None = None,
                  max_file: int = DEFAULT_MAX_FILE_MB * MIB, max_total: int = DEFAULT_MAX_TOTAL_MB * MIB,
                  ) -> tuple[str | None, dict[str, str]]:
    """Turn a downloaded tar into a version (when its content is new); prune to ``keep``.

    Files are copied from the tar as a stream (a block at a time, never a whole file in memory);
    symlinks are kept as ``LINKS.json`` entries (no link is made on the controller); files over
    the limits (a Pi that changed between its listing and its tar) are left out. ``source``: the
    identity the tar came from, kept as ``IDENTITY.json``: the same content from another machine
    is a new version. Returns (the new version's name or None when the newest version already
    holds this content from this machine, {left-out file: why}).
    """
    folder_path = Path(folder)
    folder_path.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder_path))
    sums: dict[str, str] = {}
    links: dict[str, str] = {}
    skipped: dict[str, str] = {}
    total = 0
    try:
        with tarfile.open(incoming, mode="r|") as tar:  # a stream: members are read in order, once
            for member in tar:
                name = _safe_name(member.name)
                if name is None or name in sums or name in links:
                    continue
                if member.issym():
                    links[name] = member.linkname
                    continue
                if not member.isfile():
                    continue
                if member.size > max_file or total + member.size > max_total:
                    skipped[name] = f"{human(member.size)}, over the backup's limits"
                    continue
                target = partial / "files" / name
                if any(parent in links for parent in _parents(name)):
                    continue  # a file "inside" a link: never written through one
                target.parent.mkdir(parents=True, exist_ok=True)
                source_file = tar.extractfile(member)
                copied = _copy_hashed(source_file, target, max_file) if source_file else None
                if copied is None:
                    skipped[name] = f"{human(member.size)}, over the backup's limits"
                    continue
                sums[name], size = copied
                total += size
        for name in [n for n in sums if any(parent in links for parent in _parents(n))]:
            del sums[name]  # its link came after it in the tar
        for name in links:
            shutil.rmtree(partial / "files" / name, ignore_errors=True)
        digest = backup_digest(sums, links)
        existing = versions(folder_path)
        if existing and version_digest(existing[-1]) == digest and \
                version_identity(existing[-1]) == dict(source or {}):
            return None, skipped
        # microseconds: two versions within a second still sort by time, not by digest
        now = time.time_ns() // 1000
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now // 1_000_000))}.{now % 1_000_000:06d}Z-{digest[:12]}"
        final = folder_path / name
        if final.exists():
            return None, skipped
        (partial / "files").mkdir(exist_ok=True)
        (partial / MANIFEST).write_text(manifest_text(sums), encoding="utf-8", errors="surrogateescape")
        if links:
            (partial / LINKS).write_text(json.dumps(links, indent=1, sort_keys=True), encoding="utf-8",
                                         errors="surrogateescape")
        if source:
            (partial / IDENTITY).write_text(json.dumps(dict(source), sort_keys=True), encoding="utf-8")
        os.replace(partial, final)
        for old in versions(folder_path)[:-keep]:
            shutil.rmtree(old)
        return name, skipped
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        os.unlink(incoming)


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def restore_tar(version: Path, out: Any) -> None:
    """The version's files (mode 644) and links as one tar written to ``out``, a file at a time."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = version / "files"
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, int(path.stat().st_mtime)
            with open(path, "rb") as data:
                tar.addfile(info, data)
        for name, target in sorted(version_links(version).items()):
            if _safe_name(name) is None:
                continue
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
