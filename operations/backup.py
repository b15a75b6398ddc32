"""
Keep every printer's configuration on the controller, versioned, and bring it back to a new SD card.

A dead SD card must never take the calibration with it: :func:`config_dir` copies the Pi's
``~/printer_data/config`` to the controller, a new version only when its content changed::

    <backups>/<host>/<UTC timestamp>-<digest[:12]>/files/...     the files, as plain files
    <backups>/<host>/<UTC timestamp>-<digest[:12]>/MANIFEST.sha256 ``sha256sum`` lines, sorted by path

``digest`` is the sha256 of ``MANIFEST.sha256``: the Pi computes the same manifest in one command
(:class:`ConfigBackupState`), so an unchanged folder costs no transfer. :func:`restore_config`
puts the newest calibrated version (one whose printer.cfg has a SAVE_CONFIG block) back on a Pi
whose printer.cfg is missing or RatOS's initial one, and never over a printer.cfg that has a
SAVE_CONFIG block.

Left out of backups: ``RatOS/`` (RatOS's own files, which RatOS installs), ``*.bak`` (the printer
operation's backups) and ``.pyinfra-ratos*`` (restart markers, staging).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import shutil
import tarfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypedDict

from pyinfra import host, logger
from pyinfra.api import (
    FactBase,
    FileDownloadCommand,
    FileUploadCommand,
    FunctionCommand,
    OperationValueError,
    QuoteString,
    StringCommand,
    operation,
)
from typing_extensions import override

from pyinfra_ratos.facts.printer_files import probe_lines, shell_path
from pyinfra_ratos.facts.probe import json_document, probe_command
from pyinfra_ratos.klipper_config import SAVE_CONFIG_MARKER

DEFAULT_ROOT = "~/.local/share/pyinfra-ratos/config-backups"
DEFAULT_KEEP = 20
EXCLUDED_DIRS = ("RatOS",)
EXCLUDED_NAMES = ("*.bak", ".pyinfra-ratos*")
# RatOS's printer.cfg before the configurator ran: the mark of a freshly flashed card
RATOS_INITIAL_INCLUDE = "RatOS/printers/initial-setup.cfg"
MANIFEST = "MANIFEST.sha256"
REMOTE_DIR = ".cache/pyinfra-ratos"  # relative to the SSH user's home, as sftp resolves it
_VERSION = re.compile(r"^(?P<stamp>\d{8}T\d{6}\.\d{6}Z)-(?P<digest>[0-9a-f]{12})$")


class ConfigBackupStateDict(TypedDict, total=False):
    dir: str
    files: dict[str, str]  # relative path -> sha256, the files a backup holds
    digest: str  # sha256 of their manifest (see manifest_text)
    printer_cfg: bool  # printer.cfg exists
    save_config: bool  # printer.cfg has Klipper's SAVE_CONFIG block
    initial: bool  # printer.cfg is RatOS's initial one (includes initial-setup.cfg)


# --- pure helpers ----------------------------------------------------------------------------


def manifest_text(files: Mapping[str, str]) -> str:
    """``sha256sum``-style lines, sorted by path: what a version's digest is taken over."""
    return "".join(f"{files[name]}  {name}\n" for name in sorted(files))


def manifest_digest(files: Mapping[str, str]) -> str:
    return hashlib.sha256(manifest_text(files).encode("utf-8", "surrogateescape")).hexdigest()


def has_save_config(text: str) -> bool:
    return SAVE_CONFIG_MARKER in text.splitlines()


def restore_due(current: Mapping[str, Any]) -> bool:
    """A freshly flashed card: printer.cfg missing or RatOS's initial one, never a calibrated one."""
    if not current or current.get("save_config"):
        return False
    return not current.get("printer_cfg") or bool(current.get("initial"))


def _find_files(exclude_dirs: Iterable[str], exclude_names: Iterable[str]) -> str:
    """The ``find`` listing, NUL-separated, the backup and the digest both use."""
    tests = [f"-path {shlex.quote('./' + d)}" for d in exclude_dirs] + [f"-name {shlex.quote(n)}" for n in exclude_names]
    pruned = f"\\( {' -o '.join(tests)} \\) -prune -o " if tests else ""
    return f"find . {pruned}-type f -print0 | LC_ALL=C sort -z"


def backup_state_args(exclude_dirs: Iterable[str] = EXCLUDED_DIRS,
                      exclude_names: Iterable[str] = EXCLUDED_NAMES) -> dict[str, Any]:
    """The ``backup`` part of the probe's ``config`` arguments (``remote.probe_backup_state``): it
    lists the files as :func:`_find_files` does for the backup's tar, so both hold the same set."""
    return {"exclude_dirs": list(exclude_dirs), "exclude_names": list(exclude_names),
            "save_marker": SAVE_CONFIG_MARKER, "initial_include": RATOS_INITIAL_INCLUDE}


def parse_backup_state(lines: list[str]) -> ConfigBackupStateDict:
    state: ConfigBackupStateDict = {"dir": "", "files": {}, "printer_cfg": False, "save_config": False, "initial": False}
    for line in lines:
        kind, _, rest = line.partition("\t")
        if kind == "nodir":
            return {}
        if kind == "dir":
            state["dir"] = rest
        elif kind in ("printer_cfg", "save_config", "initial"):
            state[kind] = True  # type: ignore[literal-required]
        elif kind == "file":
            sha, _, name = rest.partition("  ")
            if re.fullmatch(r"[0-9a-f]{64}", sha) and name.startswith("./"):  # "\" lines: odd names, skipped
                state["files"][name[2:]] = sha
    state["digest"] = manifest_digest(state["files"])
    return state


class ConfigBackupState(FactBase[ConfigBackupStateDict]):
    """
    Returns what a backup of the printer's config folder would hold (each file's sha256 and the
    manifest digest) and the state of its printer.cfg, in one command; ``{}`` without the folder.

    .. code:: python

        {"dir": "/home/pi/printer_data/config", "files": {"printer.cfg": "9f2c...", ...},
         "digest": "4be1...", "printer_cfg": True, "save_config": True, "initial": False}
    """

    @override
    def command(self, config_dir: str = "~/printer_data/config", exclude_dirs: tuple[str, ...] = EXCLUDED_DIRS,
                exclude_names: tuple[str, ...] = EXCLUDED_NAMES) -> StringCommand:
        return probe_command("config", {"config_dir": config_dir,
                                        "backup": backup_state_args(exclude_dirs, exclude_names)})

    @override
    def process(self, output: list[str]) -> ConfigBackupStateDict:
        lines = probe_lines(json_document(output), "backup")
        # no answer (no python3, a probe error) reads as no folder: the backup then fails the host
        return parse_backup_state(lines) if lines is not None else {}

    @staticmethod
    def default() -> ConfigBackupStateDict:
        return {}


# --- the controller's side -------------------------------------------------------------------


def host_folder(root: str | Path, name: str) -> Path:
    return Path(root).expanduser() / name.replace("/", "_")


def versions(folder: Path) -> list[Path]:
    """A host's backup versions, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _VERSION.match(p.name) and (p / MANIFEST).exists())


def version_digest(version: Path) -> str:
    return hashlib.sha256((version / MANIFEST).read_bytes()).hexdigest()


def newest_calibrated(folder: Path) -> Path | None:
    """The newest version whose printer.cfg has a SAVE_CONFIG block."""
    for version in reversed(versions(folder)):
        cfg = version / "files" / "printer.cfg"
        if cfg.is_file() and has_save_config(cfg.read_text(encoding="utf-8", errors="surrogateescape")):
            return version
    return None


def _safe_member(member: tarfile.TarInfo) -> str | None:
    name = PurePosixPath(member.name)
    parts = [p for p in name.parts if p != "."]
    if not member.isfile() or name.is_absolute() or ".." in parts or not parts:
        return None
    return "/".join(parts)


def store_version(incoming: str, folder: str, keep: int) -> str | None:
    """Turn a downloaded tar into a version (when its content is new); prune to ``keep``.

    Returns the new version's name, None when the newest version already holds this content.
    """
    folder_path = Path(folder)
    files: dict[str, bytes] = {}
    with tarfile.open(incoming) as tar:
        for member in tar.getmembers():
            name = _safe_member(member)
            handle = tar.extractfile(member) if name else None
            if name and handle:
                files[name] = handle.read()
    os.unlink(incoming)
    sums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    digest = manifest_digest(sums)
    existing = versions(folder_path)
    if existing and version_digest(existing[-1]) == digest:
        return None
    # microseconds: two versions within a second still sort by time, not by digest
    now = time.time_ns() // 1000
    name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now // 1_000_000))}.{now % 1_000_000:06d}Z-{digest[:12]}"
    final = folder_path / name
    if final.exists():
        return None
    partial = folder_path / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    for rel, data in files.items():
        target = partial / "files" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (partial / MANIFEST).write_text(manifest_text(sums), encoding="utf-8", errors="surrogateescape")
    os.replace(partial, final)
    for old in versions(folder_path)[:-keep]:
        shutil.rmtree(old)
    return name


def restore_tar(version: Path) -> bytes:
    """The version's files as one tar (mode 644), to upload in one transfer."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = version / "files"
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o644, int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- operations ------------------------------------------------------------------------------


def _root(dest_root: str | None) -> str:
    return str(dest_root or host.data.get("config_backups") or DEFAULT_ROOT)


def _fail(message: str) -> StringCommand:
    return StringCommand("printf", "'%s\\n'", QuoteString(f"pyinfra-ratos: {message}"), ">&2;", "exit", "1")


def _mkdir(path: str) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)


def _store(incoming: str, folder: str, keep: int) -> None:
    name = store_version(incoming, folder, keep)
    if name:
        host.log(f"config backup: new version {folder}/{name}")


@operation()
def config_dir(
    dest_root: str | None = None,
    config_dir: str = "~/printer_data/config",
    keep: int = DEFAULT_KEEP,
    current: Mapping[str, Any] | None = None,
):
    """
    Back the printer's config folder up on the controller, as a new version when it changed.

    + dest_root: the controller's backup folder (default: host data ``config_backups``, else
      ``~/.local/share/pyinfra-ratos/config-backups``); versions go to ``<dest_root>/<host>/``
    + config_dir: Klipper's config folder on the Pi
    + keep: versions kept per host (oldest deleted first)
    + current: the Pi's ``ConfigBackupState`` for ``config_dir``, read once by the caller (read
      here when not given)

    Nothing happens when the newest version holds the same content (same manifest digest). Else
    the folder travels in one tar download and becomes ``<UTC timestamp>-<digest[:12]>/``.

    **Example:**

    .. code:: python

        backup.config_dir(name="Back the config up", dest_root="/srv/printer-backups")
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise OperationValueError(f"keep={keep!r}: keep at least one version (an int >= 1)")
    state = current if current is not None else host.get_fact(ConfigBackupState, config_dir=config_dir)
    if not state:
        yield _fail(f"{host.name}: {config_dir} does not exist on the Pi: nothing to back up")
        return
    folder = host_folder(_root(dest_root), host.name)
    existing = versions(folder)
    if existing and version_digest(existing[-1]) == state["digest"]:
        host.noop(f"config backup {existing[-1].name} is up to date")
        return
    remote_tar = f"{REMOTE_DIR}/config-backup.tar"
    yield StringCommand("sh", "-c", QuoteString("\n".join([
        f"cd {shell_path(config_dir)} || exit 1",
        f'mkdir -p "$HOME"/{REMOTE_DIR} || exit 1',
        f'{_find_files(EXCLUDED_DIRS, EXCLUDED_NAMES)} | tar -cf "$HOME"/{remote_tar} --null --no-recursion -T -',
    ])))
    yield FunctionCommand(_mkdir, (str(folder),), {})
    incoming = str(folder / f".incoming-{os.getpid()}.tar")
    yield FileDownloadCommand(remote_tar, incoming)
    yield StringCommand("rm", "-f", f'"$HOME"/{remote_tar}')
    yield FunctionCommand(_store, (incoming, str(folder), keep), {})


def restore_script(config_dir: str, remote_tar: str, sums: Mapping[str, str], version: str) -> StringCommand:
    check = " ".join(shlex.quote(f"{sha}  {name}") for name, sha in sorted(sums.items()))
    return StringCommand("sh", "-c", QuoteString("\n".join([
        f"d={shell_path(config_dir)}; t=\"$HOME\"/{remote_tar}; s=\"$d/.pyinfra-ratos-restore\"",
        'fail() { rm -rf -- "$s" "$t"; echo "pyinfra-ratos: restore: $1; printer.cfg left unchanged" >&2; exit 1; }',
        'mkdir -p -- "$d" || fail "cannot create $d"',
        # the check the plan made, made again right before writing: never over calibration
        f'grep -qxF -- {shlex.quote(SAVE_CONFIG_MARKER)} "$d/printer.cfg" 2>/dev/null && '
        'fail "printer.cfg has a SAVE_CONFIG block now"',
        'rm -rf -- "$s" && mkdir -- "$s" && tar -xf "$t" -C "$s" --no-same-owner || fail "cannot unpack the backup (disk full?)"',
        f'(cd "$s" && printf "%s\\n" {check} | sha256sum --quiet --strict -c -) || fail "the uploaded backup is incomplete"',
        'stamp=$(date +%Y%m%d-%H%M%S-%N)',
        # every other file first; printer.cfg last: its rename completes the restore
        '(cd "$s" && find . -type f ! -path ./printer.cfg) | while IFS= read -r f; do',
        '  mkdir -p -- "$(dirname -- "$d/$f")" || exit 1',
        '  if cmp -s -- "$s/$f" "$d/$f"; then continue; fi',  # the same bytes: no backup, no rename
        '  if [ -e "$d/$f" ]; then cp -p -- "$d/$f" "$d/$f.$stamp.bak" || exit 1; fi',
        '  mv -f -- "$s/$f" "$d/$f" || exit 1',
        'done || fail "moving the restored files into place failed"',
        'if [ -e "$s/printer.cfg" ]; then',
        '  if [ -e "$d/printer.cfg" ]; then cp -p -- "$d/printer.cfg" "$d/printer.cfg.$stamp.bak" || fail "no room for a backup"; fi',
        '  mv -f -- "$s/printer.cfg" "$d/printer.cfg" || fail "rename failed"',
        "fi",
        'rm -rf -- "$s" "$t"',
        f'echo "pyinfra-ratos: restored {len(sums)} files of backup {version}"',
    ])))


@operation()
def restore_config(
    dest_root: str | None = None,
    config_dir: str = "~/printer_data/config",
    current: Mapping[str, Any] | None = None,
):
    """
    Put the newest calibrated backup back on a Pi whose SD card was replaced.

    + dest_root: the controller's backup folder (as for :func:`config_dir`)
    + config_dir: Klipper's config folder on the Pi
    + current: the Pi's ``ConfigBackupState``, read once by the caller (read here when not given)

    Acts only on a freshly flashed card: printer.cfg missing, or RatOS's initial printer.cfg
    (``[include RatOS/printers/initial-setup.cfg]``) without a SAVE_CONFIG block. It restores every
    file of the newest version whose printer.cfg has a SAVE_CONFIG block: uploaded in one tar,
    checked against the version's sha256 sums, each file renamed into place (the one it replaces
    kept as ``<file>.<timestamp>.bak``), printer.cfg last. A printer.cfg with a SAVE_CONFIG block is
    never overwritten, checked again on the Pi right before writing.

    **Example:**

    .. code:: python

        backup.restore_config(name="Bring the calibration back", dest_root="/srv/printer-backups")
    """
    state = current if current is not None else host.get_fact(ConfigBackupState, config_dir=config_dir)
    if state.get("save_config"):
        host.noop("printer.cfg has its SAVE_CONFIG block: nothing to restore")
        return
    if not restore_due(state or {"printer_cfg": False}):
        host.noop("printer.cfg is not RatOS's initial one: left as it is")
        return
    folder = host_folder(_root(dest_root), host.name)
    version = newest_calibrated(folder)
    if version is None:
        host.noop(f"no calibrated backup of {host.name} in {folder}: a new printer, nothing to restore")
        return
    sums = {}
    for line in (version / MANIFEST).read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        sha, _, name = line.partition("  ")
        sums[name] = sha
    host.log(f"printer.cfg has no calibration: restoring backup {version.name}", logger.warning)
    remote_tar = f"{REMOTE_DIR}/config-restore.tar"
    yield StringCommand("mkdir", "-p", f'"$HOME"/{REMOTE_DIR}')
    yield FileUploadCommand(io.BytesIO(restore_tar(version)), remote_tar)
    yield restore_script(config_dir, remote_tar, sums, version.name)
