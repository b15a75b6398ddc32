"""
Keep every printer's configuration on the controller, versioned, and bring it back to a new SD card.

A dead SD card must never take the calibration with it: :func:`config_dir` copies the Pi's
``~/printer_data/config`` to the controller, a new version only when its content changed::

    <backups>/<host>/<UTC timestamp>-<digest[:12]>/files/...       the files, as plain files
    <backups>/<host>/<UTC timestamp>-<digest[:12]>/MANIFEST.sha256 ``sha256sum`` lines, sorted by path
    <backups>/<host>/<UTC timestamp>-<digest[:12]>/LINKS.json      the symlinks: {path: target}
    <backups>/<host>/<UTC timestamp>-<digest[:12]>/IDENTITY.json   the machine it was taken from
    <backups>/identities.json                                      each name's identity (printer_identity)

``digest`` is the sha256 of ``MANIFEST.sha256`` (and of the links, when there are any): the Pi
lists the same files with their sha256 in one command (:class:`ConfigBackupState`), so an
unchanged folder costs no transfer. A version is keyed by the printer's name (its folder) and by
the identity it was taken from (``IDENTITY.json``): it is only ever stored when the Pi reached is
the machine recorded for that name (``printer_identity``), and a folder of the same content taken
from another card is a new version. The first backup of a name records its identity.

:func:`restore_config` puts the newest calibrated version (one whose printer.cfg has a SAVE_CONFIG
block) back on a Pi whose printer.cfg is missing or RatOS's initial one, and never over a
printer.cfg that has a SAVE_CONFIG block.

Symlinks in the folder are backed up as links (their target, as text), never followed: a linked
folder or a link out of the config folder brings nothing of its target. Size limits, from host
data (defaults in brackets), keep a stray print file or video out of every version::

    config_backup_max_file_mb    a larger file is left out, named in the run's output [16, at most 64]
    config_backup_max_total_mb   files past this total (smallest first, printer.cfg first of all)
                                 are left out, named too [64]

Files travel in one tar that the controller unpacks as a stream, never a whole file in memory
(the controller's side: :mod:`pyinfra_ratos.printer.backups`).
Left out of backups: ``RatOS/`` (RatOS's own files, which RatOS installs), ``*.bak`` (the printer
operation's backups) and ``.pyinfra-ratos*`` (restart markers, staging).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
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
from pyinfra.context import ctx_state
from pyinfra_ratos.facts.printer_files import probe_lines, shell_path
from pyinfra_ratos.facts.probe import json_document, probe_command
from pyinfra_ratos.operations import identity
from typing_extensions import override

from pyinfra_ratos.run import results
from pyinfra_ratos.printer import provision_settings
from pyinfra_ratos.printer.backups import (  # noqa: F401 - the controller's side, used through this module too
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_TOTAL_MB,
    IDENTITY,
    LINKS,
    MANIFEST,
    MAX_FILE_CEILING_MB,
    MIB,
    backup_digest,
    has_save_config,
    host_folder,
    human,
    limits,
    links_text,
    manifest_digest,
    manifest_text,
    newest_calibrated,
    printable,
    restore_tar,
    select_files,
    store_version,
    version_digest,
    version_file,
    version_identity,
    version_links,
    versions,
)
from pyinfra_ratos.printer.identity import ACCEPT_KEY, Identity, IdentityStore, matches, parse_machine_id
from pyinfra_ratos.printer.klipper_config import SAVE_CONFIG_MARKER

DEFAULT_ROOT = "~/.local/share/pyinfra-ratos/config-backups"
DEFAULT_KEEP = provision_settings.DEFAULT_KEEP
EXCLUDED_DIRS = ("RatOS",)
EXCLUDED_NAMES = ("*.bak", ".pyinfra-ratos*")
# RatOS's printer.cfg before the configurator ran: the mark of a freshly flashed card
RATOS_INITIAL_INCLUDE = "RatOS/printers/initial-setup.cfg"
REMOTE_DIR = ".cache/pyinfra-ratos"  # relative to the SSH user's home, as sftp resolves it


class ConfigBackupStateDict(TypedDict, total=False):
    dir: str
    files: dict[str, str]  # relative path -> sha256, the regular files a backup may hold
    sizes: dict[str, int]  # relative path -> size, of every regular file (big ones included)
    links: dict[str, str]  # relative path -> symlink target, as text
    digest: str  # sha256 of their manifest (see backup_digest), no size limit applied
    printer_cfg: bool  # printer.cfg exists
    save_config: bool  # printer.cfg has Klipper's SAVE_CONFIG block
    initial: bool  # printer.cfg is RatOS's initial one (includes initial-setup.cfg)
    machine_id: str  # the Pi's /etc/machine-id ("" without one), present even without the folder


# --- pure helpers ----------------------------------------------------------------------------


def restore_due(current: Mapping[str, Any]) -> bool:
    """A freshly flashed card: printer.cfg missing or RatOS's initial one, never a calibrated one.
    No answer about the folder (``{}``, or the machine-id alone) is not a reason to restore."""
    if "printer_cfg" not in current or current.get("save_config"):
        return False
    return not current.get("printer_cfg") or bool(current.get("initial"))


def backup_state_args(exclude_dirs: Iterable[str] = EXCLUDED_DIRS,
                      exclude_names: Iterable[str] = EXCLUDED_NAMES) -> dict[str, Any]:
    """The ``backup`` part of the probe's ``config`` arguments (``remote.probe_backup_state``)."""
    return {"exclude_dirs": list(exclude_dirs), "exclude_names": list(exclude_names),
            "save_marker": SAVE_CONFIG_MARKER, "initial_include": RATOS_INITIAL_INCLUDE,
            "hash_limit": MAX_FILE_CEILING_MB * MIB}


def _relative(text: str) -> str | None:
    """``./a/b`` as the probe prints it -> ``a/b``; None for anything that could leave the folder."""
    if not text.startswith("./"):
        return None
    parts = PurePosixPath(text[2:]).parts
    if not parts or parts[0] == "/" or ".." in parts:
        return None
    return "/".join(parts)


def parse_backup_state(lines: list[str]) -> ConfigBackupStateDict:
    state: ConfigBackupStateDict = {"dir": "", "files": {}, "sizes": {}, "links": {}, "printer_cfg": False,
                                    "save_config": False, "initial": False}
    machine_id = ""
    for line in lines:
        kind, _, rest = line.partition("\t")
        if kind == "machine_id":
            machine_id = parse_machine_id(rest)
        elif kind == "nodir":
            return {"machine_id": machine_id}
        elif kind == "dir":
            state["dir"] = rest
        elif kind in ("printer_cfg", "save_config", "initial"):
            state[kind] = True  # type: ignore[literal-required]
        elif kind == "file":
            sha, _, more = rest.partition("\t")
            size, _, name = more.partition("\t")
            rel = _relative(name)
            if re.fullmatch(r"[0-9a-f]{64}", sha) and size.isdigit() and rel:
                state["files"][rel] = sha
                state["sizes"][rel] = int(size)
        elif kind == "big":
            size, _, name = rest.partition("\t")
            rel = _relative(name)
            if size.isdigit() and rel:
                state["sizes"][rel] = int(size)
        elif kind == "link":
            try:
                rel_text, target = json.loads(rest)
            except (ValueError, TypeError):
                continue
            rel = _relative(rel_text) if isinstance(rel_text, str) else None
            if rel and isinstance(target, str) and target and "\0" not in target:
                state["links"][rel] = target
    state["machine_id"] = machine_id
    state["digest"] = backup_digest(state["files"], state["links"])
    return state


class ConfigBackupState(FactBase[ConfigBackupStateDict]):
    """
    Returns what a backup of the printer's config folder would hold (each regular file's sha256
    and size, each symlink's target, the digest) and the state of its printer.cfg, in one
    command; and the Pi's machine-id. Without the folder: ``{"machine_id": ...}`` alone.

    .. code:: python

        {"dir": "/home/pi/printer_data/config", "files": {"printer.cfg": "9f2c...", ...},
         "sizes": {"printer.cfg": 1532, ...}, "links": {"macros.cfg": "shared/macros.cfg"},
         "digest": "4be1...", "printer_cfg": True, "save_config": True, "initial": False,
         "machine_id": "3d1219c7c4c5404aaa1f6d2a48adfda4"}
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


# --- operations ------------------------------------------------------------------------------


def _root(dest_root: str | None) -> str:
    return identity.store_root(dest_root)


def _fail(message: str) -> StringCommand:
    return StringCommand("printf", "'%s\\n'", QuoteString(f"pyinfra-ratos: {message}"), ">&2;", "exit", "1")


def _record_identity(state: Any, host: Any, root: str, name: str, seen: Identity, accept: Any) -> None:
    """Record (or confirm) the name's identity at execution, deciding again with the store as it
    is now: another host or run may have recorded this machine meanwhile."""
    twins = identity.seen_elsewhere(state, name, seen)
    if twins:
        raise RuntimeError(f"{name}: reaches the same machine as {twins[0]} in this run ({seen.describe()}): "
                           "not recording it; nothing was backed up. Fix: give each printer its own address")
    verdict = IdentityStore(root).record(name, seen, accept)
    if verdict.action == "stop":
        raise RuntimeError(verdict.message)
    if verdict.action == "record":
        host.log(f"printer identity recorded: {seen.describe()}")


def _store(incoming: str, folder: str, keep: int, root: str, name: str, seen: Identity, max_file: int,
           max_total: int) -> None:
    record = IdentityStore(root).records().get(name)
    if record is None or not matches(record, seen):
        os.unlink(incoming)
        raise RuntimeError(f"{name}: the Pi reached ({seen.describe()}) is not the one recorded for {name}: "
                           "not storing its config as this printer's backup")
    version, skipped = store_version(incoming, folder, keep, seen.as_record(), max_file, max_total)
    for file, why in skipped.items():
        host.log(f"config backup: left out {printable(file)} ({why})", logger.warning)
    if version:
        host.log(f"config backup: new version {folder}/{version}")


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

    First the printer's identity: the first backup of a name records it, a Pi that is not the
    machine recorded for this name fails the host and nothing is stored (see ``printer_identity``).
    Nothing else happens when the newest version holds the same content from the same machine.
    Else the folder travels in one tar download and becomes ``<UTC timestamp>-<digest[:12]>/``.
    Files over the size limits (host data ``config_backup_max_file_mb``,
    ``config_backup_max_total_mb``) are left out and named, on every run.

    **Example:**

    .. code:: python

        backup.config_dir(name="Back the config up", dest_root="/srv/printer-backups")
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise OperationValueError(f"keep={keep!r}: keep at least one version (an int >= 1)")
    state = current if current is not None else host.get_fact(ConfigBackupState, config_dir=config_dir)
    max_file, max_total, problems = limits(host.data)
    if problems:
        yield _fail(f"{host.name}: " + "; ".join(problems))
        return
    root = _root(dest_root)
    seen = identity.seen_identity(state.get("machine_id"))
    verdict = identity.judge(host.name, seen, root, ctx_state.get())
    if verdict.action == "stop":
        yield _fail(verdict.message)
        return
    if not state.get("dir"):
        yield _fail(f"{host.name}: {config_dir} does not exist on the Pi: nothing to back up")
        return
    kept, skipped = select_files(state.get("sizes", {}), max_file, max_total)
    named = {printable(file): why for file, why in skipped.items()}  # names from the Pi: no raw ESC
    for file, why in named.items():
        host.log(f"config backup: left out {file} ({why})", logger.warning)
    results.note_backup_skipped(host.name, named)
    files = {name: state["files"][name] for name in kept if name in state["files"]}
    links = dict(state.get("links", {}))
    folder = host_folder(root, host.name)
    existing = versions(folder)
    if verdict.action == "record":
        yield FunctionCommand(_record_identity, (root, host.name, seen, host.data.get(ACCEPT_KEY)), {})
    elif existing and version_digest(existing[-1]) == backup_digest(files, links) and \
            version_identity(existing[-1]) == seen.as_record():
        host.noop(f"config backup {existing[-1].name} is up to date")
        return
    names = sorted(files) + sorted(links)
    remote_tar = f"{REMOTE_DIR}/config-backup.tar"
    # the names the Pi listed, as data ("./" first: tar never reads one as an option); links are
    # stored as links (tar's default), never followed
    listing = " ".join(shlex.quote(f"./{name}") for name in names)
    listed = f'printf "%s\\0" {listing}' if names else ":"  # an empty folder: an empty tar
    yield StringCommand("sh", "-c", QuoteString("\n".join([
        f"cd {shell_path(config_dir)} || exit 1",
        f'mkdir -p "$HOME"/{REMOTE_DIR} || exit 1',
        f'{listed} | tar -cf "$HOME"/{remote_tar} --null --no-recursion -T -',
    ])))
    incoming = str(folder / f".incoming-{os.getpid()}-{time.time_ns()}.tar")
    yield FunctionCommand(_mkdir, (str(folder),), {})
    yield FileDownloadCommand(remote_tar, incoming)
    yield StringCommand("rm", "-f", f'"$HOME"/{remote_tar}')
    yield FunctionCommand(_store, (incoming, str(folder), keep, root, host.name, seen, max_file, max_total), {})


def _mkdir(path: str) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
def restore_script(config_dir: str, remote_tar: str, sums: Mapping[str, str], version: str) -> StringCommand:
    check = " ".join(shlex.quote(f"{sha}  {name}") for name, sha in sorted(sums.items()))
    return StringCommand("sh", "-c", QuoteString("\n".join([
        f"d={shell_path(config_dir)}; t={shell_path('~/' + remote_tar)}; s=\"$d/.pyinfra-ratos-restore\"",
        'fail() { rm -rf -- "$s" "$t"; echo "pyinfra-ratos: restore: $1; printer.cfg left unchanged" >&2; exit 1; }',
        # a folder on the Pi that is a link out of the config folder is never written through
        'inside() { case "$(realpath -m -- "$(dirname -- "$d/$1")")/" in "$(realpath -m -- "$d")"/*) return 0;; esac; '
        'echo "pyinfra-ratos: restore: $1 would land outside $d" >&2; return 1; }',
        'mkdir -p -- "$d" || fail "cannot create $d"',
        # the check the plan made, made again right before writing: never over calibration
        f'grep -qxF -- {shlex.quote(SAVE_CONFIG_MARKER)} "$d/printer.cfg" 2>/dev/null && '
        'fail "printer.cfg has a SAVE_CONFIG block now"',
        'rm -rf -- "$s" && mkdir -- "$s" && tar -xf "$t" -C "$s" --no-same-owner || fail "cannot unpack the backup (disk full?)"',
        f'(cd "$s" && printf "%s\\n" {check} | sha256sum --quiet --strict -c -) || fail "the uploaded backup is incomplete"',
        'stamp=$(date +%Y%m%d-%H%M%S-%N)',
        # every other file first; printer.cfg last: its rename completes the restore
        '(cd "$s" && find . -type f ! -path ./printer.cfg) | while IFS= read -r f; do',
        '  inside "$f" && mkdir -p -- "$(dirname -- "$d/$f")" || exit 1',
        '  if [ ! -L "$d/$f" ] && cmp -s -- "$s/$f" "$d/$f"; then continue; fi',  # the same bytes: no backup, no rename
        '  if [ -e "$d/$f" ] || [ -L "$d/$f" ]; then cp -pP -- "$d/$f" "$d/$f.$stamp.bak" || exit 1; fi',
        '  mv -fT -- "$s/$f" "$d/$f" || exit 1',
        'done || fail "moving the restored files into place failed"',
        # the links as links (never over a real folder), after the files they may point to
        '(cd "$s" && find . -type l ! -path ./printer.cfg) | while IFS= read -r f; do',
        '  inside "$f" && mkdir -p -- "$(dirname -- "$d/$f")" || exit 1',
        '  if [ -d "$d/$f" ] && [ ! -L "$d/$f" ]; then continue; fi',
        '  if [ -e "$d/$f" ] || [ -L "$d/$f" ]; then cp -pP -- "$d/$f" "$d/$f.$stamp.bak" || exit 1; fi',
        '  mv -fT -- "$s/$f" "$d/$f" || exit 1',
        'done || fail "putting the restored links in place failed"',
        'if [ -e "$s/printer.cfg" ] || [ -L "$s/printer.cfg" ]; then',
        '  if [ -e "$d/printer.cfg" ] || [ -L "$d/printer.cfg" ]; then cp -pP -- "$d/printer.cfg" "$d/printer.cfg.$stamp.bak" || fail "no room for a backup"; fi',
        '  mv -fT -- "$s/printer.cfg" "$d/printer.cfg" || fail "rename failed"',
        "fi",
        'rm -rf -- "$s" "$t"',
        f"printf 'pyinfra-ratos: restored %s files of backup %s\\n' {len(sums)} {shlex.quote(version)}",
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
    if not restore_due(state if state.get("dir") else {"printer_cfg": False}):
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
    source = version_identity(version)
    taken = f" (taken from machine-id {source.get('machine_id') or '?'})" if source else ""
    host.log(f"printer.cfg has no calibration: restoring backup {version.name}{taken}", logger.warning)
    remote_tar = f"{REMOTE_DIR}/config-restore.tar"
    local_tar = os.path.join(tempfile.gettempdir(), f"pyinfra-ratos-restore-{os.getpid()}-{time.time_ns()}.tar")
    yield StringCommand("mkdir", "-p", f'"$HOME"/{REMOTE_DIR}')
    # written and sent as a file when the operation runs: no version is ever held in memory
    yield FunctionCommand(_write_restore_tar, (version, local_tar), {})
    yield FileUploadCommand(local_tar, remote_tar)
    yield FunctionCommand(os.unlink, (local_tar,), {})
    yield restore_script(config_dir, remote_tar, sums, version.name)


def _write_restore_tar(version: Path, path: str) -> None:
    with open(path, "wb") as out:
        restore_tar(version, out)
