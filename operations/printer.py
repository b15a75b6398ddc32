"""
Write a RatOS printer's configuration without losing a byte the user owns.

Files in the config folder (``~/printer_data/config``), RatOS's split:

- ``RatOS.cfg``: generated from the templates and the inventory, owned by the tool, rewritten
  whenever its rendering changes;
- ``printer.cfg``: owned by the user (their sections, Klipper's SAVE_CONFIG calibration), with
  ``[include RatOS.cfg]`` first; created when missing, otherwise left alone unless adoption or
  regeneration is asked for (``user_config``);
- ``<file>.<YYYYmmdd-HHMMSS-ns>.bak``: the previous version of every replaced file (newest N kept);
- ``.pyinfra-ratos-restart-<service>``: a restart owed to a printer that was busy when it changed.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
from copy import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pyinfra import host, logger, state
from pyinfra.api import OperationValueError, QuoteString, StringCommand, operation
from pyinfra.api.command import FileUploadCommand

from pyinfra_ratos.printer import gate
from pyinfra_ratos.printer import klipper_config as kc
from pyinfra_ratos.printer import model as pm
from pyinfra_ratos.firmware.catalog import Board, load_catalog
from pyinfra_ratos.facts.boards import AttachedBoards
from pyinfra_ratos.facts.printer import PrinterActivity
from pyinfra_ratos.facts.printer_files import MAX_TEXT_BYTES, PrinterFiles, encode_text, sha256_text, shell_path
from pyinfra_ratos.templates import TemplateRenderError, render

MOONRAKER_URL = "http://127.0.0.1:7125"
USER_CONFIG_MODES, WHEN_BUSY = pm.USER_CONFIG_MODES, pm.WHEN_BUSY
MARGIN_BYTES = 16 * 1024  # never fill a file system to the last block


def restart_marker(service: str) -> str:
    return f".pyinfra-ratos-restart-{service}"


# --- pure decisions -------------------------------------------------------------------------


@dataclass(frozen=True)
class FileWrite:
    name: str
    text: str
    old_text: str | None  # None: the file does not exist (or was too big to read)
    old_sha256: str | None  # None: the file must still be missing when written
    old_size: int
    reason: str


def file_write(name: str, text: str, current: Mapping[str, Any] | None, reason: str) -> FileWrite | None:
    """A write when ``text`` differs from the file on the Pi, else None."""
    exists = bool(current and current.get("exists"))
    if exists and current["sha256"] == sha256_text(text):  # type: ignore[index]
        return None
    return FileWrite(name=name, text=text, old_text=current.get("text") if exists else None,  # type: ignore[union-attr]
                     old_sha256=current["sha256"] if exists else None,  # type: ignore[index]
                     old_size=int(current["size"]) if exists else 0, reason=reason)  # type: ignore[index]


def plan_user_file(
    mode: str, current_text: str | None, exists: bool, generated_name: str, generated_text: str,
    rendered_user: str,
) -> tuple[str | None, str | None, list[str]]:
    """``(new text or None, note, errors)`` for the user-owned file."""
    if not exists:
        return rendered_user, "created", []
    if current_text is None:
        return None, "too big to read: left alone", []
    orphans = kc.orphan_autosave_lines(current_text)
    if mode == "keep":
        if kc.includes_file(current_text, generated_name):
            return None, None, []
        return None, f"does not include {generated_name}, so the generated file has no effect " \
                     f"(user_config='adopt' adds the include)", []
    if mode == "adopt":
        if kc.includes_file(current_text, generated_name):
            return None, None, []
        return kc.adopt_user_config(current_text, generated_name, kc.superseded_by(generated_text)), "adopted", []
    if orphans:
        return None, None, [f"lines {', '.join(map(str, orphans[:5]))} start with '#*#' but there is no SAVE_CONFIG "
                            "marker line above them: regenerating would lose them. Fix the file by hand first"]
    _, block = kc.split_save_config(current_text)
    return kc.merge_save_config(rendered_user, block), "regenerated (SAVE_CONFIG block kept)", []


def new_problems(old_text: str | None, new_text: str) -> list[kc.Problem]:
    """Problems of ``new_text`` that ``old_text`` did not have (line numbers aside)."""
    def key(problem: kc.Problem) -> str:
        return re.sub(r"line \d+", "line N", problem.message)

    known = {key(p) for p in kc.validate(old_text, allow_save_config=True)} if old_text is not None else set()
    return [p for p in kc.validate(new_text, allow_save_config=True) if key(p) not in known]


def needed_bytes(writes: Sequence[FileWrite]) -> int:
    """New copies, plus backups of the old ones (the old files are only freed after the rename)."""
    return sum(len(encode_text(w.text)) + w.old_size for w in writes) + MARGIN_BYTES


def unified_diff(name: str, old: str | None, new: str) -> list[str]:
    return [line.rstrip("\n") for line in difflib.unified_diff(
        (old or "").splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"a/{name}" if old is not None else "/dev/null", tofile=f"b/{name}")]


def render_config(spec: pm.PrinterSpec, attached: Mapping[str, Any], previous: Mapping[str, str],
                  generated_file: str, template_dir: str | None) -> tuple[str, str, list[str]]:
    """``(generated text, rendered user file, notes)`` with each board's serial path chosen from
    what is attached (and what the generated file named before). Raises TemplateRenderError."""
    notes, serials = [], {}
    for entry in spec.boards:
        choice = pm.choose_serial(entry, attached, previous.get(entry.section))
        serials[entry.mcu_name] = choice.path
        if choice.note:
            notes.append(choice.note)
    context = {**pm.template_context(spec, serials), "generated": generated_file}
    return render("RatOS.cfg.j2", context, template_dir), render("printer.cfg.j2", context, template_dir), notes


def needs_usb(spec: pm.PrinterSpec) -> bool:
    """Whether choosing the boards' serial paths needs the Pi's attached USB devices."""
    return any(e.serial is None and e.board.interface not in ("linux", "can") for e in spec.boards)


@dataclass(frozen=True)
class ConfigDecision:
    """What :func:`config` does with a printer's config folder: the one answer ``plan``, ``update``
    and ``status`` give to "is the configuration converged?"."""

    writes: tuple[FileWrite, ...] = ()
    failure: str | None = None  # nothing may be written (invalid data, template or rendering): why
    notes: tuple[str, ...] = ()  # told to the operator (a serial kept, a user file left alone)
    pending: bool = False  # a Klipper restart owed since an earlier run found the printer busy

    @property
    def converged(self) -> bool:
        return self.failure is None and not self.writes and not self.pending


def decide_files(spec: pm.PrinterSpec, attached: Mapping[str, Any], files: Mapping[str, Any], user_config: str,
                 generated_file: str, user_file: str, template_dir: str | None) -> ConfigDecision:
    """The writes that converge the folder ``files`` (a ``PrinterFiles`` value covering
    :func:`files_query`) to the rendering of ``spec``; pure."""
    current = files["files"]
    try:
        generated_text, user_rendered, notes = render_config(
            spec, attached, pm.previous_serials(current[generated_file]["text"]), generated_file, template_dir)
    except TemplateRenderError as error:
        return ConfigDecision(failure=f"{error}. Nothing was written.")

    def present(target: str) -> bool:
        return target == generated_file or files["includes"].get(target, False)

    errors = [f"{generated_file} (from RatOS.cfg.j2) {p}" for p in
              kc.validate(generated_text) + kc.missing_includes(generated_text, present)]
    user_text, user_note, user_errors = plan_user_file(
        user_config, current[user_file]["text"], current[user_file]["exists"], generated_file, generated_text,
        user_rendered)
    errors += [f"{user_file}: {e}" for e in user_errors]
    if user_text is not None:
        # the user's own quirks (klippy tolerates duplicates, say) are theirs: report what we add
        problems = new_problems(current[user_file]["text"] if user_config == "adopt" else None, user_text)
        # includes the user wrote are theirs too: check only those our template asked for
        problems += kc.missing_includes(user_text, lambda t: files["includes"].get(t, True) or t == generated_file)
        source = "adopted" if user_config == "adopt" and current[user_file]["exists"] else "from printer.cfg.j2"
        errors += [f"{user_file} ({source}) {p}" for p in problems]
    if errors:
        return ConfigDecision(failure="invalid configuration, nothing was written:\n" +
                              "\n".join(f"  - {e}" for e in errors))
    if user_note and user_text is None:
        notes.append(f"{user_file}: {user_note}")
    writes = tuple(w for w in (
        file_write(generated_file, generated_text, current[generated_file], "generated"),
        file_write(user_file, user_text, current[user_file], user_note or "") if user_text is not None else None,
    ) if w is not None)
    return ConfigDecision(writes=writes, notes=tuple(notes), pending=bool(current[restart_marker("klipper")]["exists"]))


def decide_config(host_name: str, printer: Mapping[str, Any], files: Mapping[str, Any] | None,
                  attached: Mapping[str, Any] | None, user_config: str = "adopt", generated_file: str = "RatOS.cfg",
                  user_file: str = "printer.cfg", templates: str | None = None,
                  catalog: Mapping[str, Board] | None = None) -> ConfigDecision | None:
    """:func:`config`'s decision from what a caller already read (e.g. ``ratos-fleet status``):
    ``files`` a ``PrinterFiles`` value read with :func:`config_files_query`'s arguments, ``attached``
    the Pi's ``AttachedBoards``; None when they do not answer what it needs (then :func:`config`
    would read more). Pure: reads nothing, writes nothing."""
    try:
        spec = pm.parse_printer_data(host_name, printer, catalog if catalog is not None else load_catalog())
    except pm.PrinterDataError as error:
        return ConfigDecision(failure=str(error))
    if files is not None and not files:
        return ConfigDecision(failure="the config folder does not exist on the Pi: is this a RatOS Pi (printer_data)?")
    query = config_files_query(printer, generated_file, user_file, templates, catalog, host_name)
    if files is None or query is None or not covers(files, query) or (needs_usb(spec) and attached is None):
        return None
    return decide_files(spec, attached or {}, files, user_config, generated_file, user_file,
                        templates or printer.get("printer_templates"))


# --- commands --------------------------------------------------------------------------------


def fail_command(message: str) -> StringCommand:
    """Fail this host only (an exception would stop every host), with the message on stderr."""
    return StringCommand("printf", "'%s\\n'", QuoteString(message), ">&2;", "exit", "1")


def install_command(directory: str, write: FileWrite, temp_name: str, backups: int) -> StringCommand:
    """Check the uploaded copy, back the old file up, keep owner and mode, rename, prune backups."""
    new_sha = sha256_text(write.text)
    old_check = (
        f'[ -e "$f" ] || fail "it disappeared on the Pi since it was read; rerun"\n'
        f'[ "$(sha256sum < "$f" | cut -c1-64)" = {shlex.quote(write.old_sha256 or "")} ] || '
        'fail "it changed on the Pi since it was read (a SAVE_CONFIG?); rerun"\n'
        'b="$f.$(date +%Y%m%d-%H%M%S-%N).bak"\n'
        'cp -p -- "$f" "$b" || { rm -f -- "$b"; fail "no room for the backup $b (disk full?)"; }\n'
        'chmod --reference="$f" -- "$t" && chown --reference="$f" -- "$t" 2>/dev/null || '
        'fail "cannot give the new copy the owner and mode of the old one (run with _sudo=True)"'
        if write.old_sha256 else
        '[ -e "$f" ] && fail "it appeared on the Pi since it was read; rerun"\n'
        'chmod 644 -- "$t"'
    )
    script = "\n".join([
        f"cd {shell_path(directory)} || exit 1",
        f"f={shlex.quote(write.name)}; t={shlex.quote(temp_name)}",
        'fail() { rm -f -- "$t"; echo "pyinfra-ratos: $f: $1; $f left unchanged" >&2; exit 1; }',
        f'[ "$(sha256sum < "$t" | cut -c1-64)" = {shlex.quote(new_sha)} ] || fail "the uploaded copy is incomplete (disk full?)"',
        # a link (a printer.cfg kept in git elsewhere, say) is the user's: never replaced by a file
        '[ -L "$f" ] && fail "it is a symbolic link to $(readlink -- "$f"): not replacing the link with a file;'
        ' update the file it points to yourself, or replace the link by that file, then rerun"',
        old_check,
        'sync -- "$t" 2>/dev/null',
        'mv -f -- "$t" "$f" || fail "rename failed"',
        f'ls -1 -- "$f".*.bak 2>/dev/null | sort -r | tail -n +{backups + 1} | while IFS= read -r old; do rm -f -- "$old"; done',
        "exit 0",
    ])
    return StringCommand("sh", "-c", QuoteString(script))


def restart_command(directory: str, service: str, url: str) -> StringCommand:
    """Restart a service through the printer agent, unless the printer is not positively idle on
    the Pi right then (the plan read it idle, but on a big farm minutes pass before this runs):
    then the restart is left pending (marked in ``directory``) and the host fails with exit 75.
    Done means a new main PID or start time (:mod:`pyinfra_ratos.firmware.agent`)."""
    from pyinfra_ratos.operations.firmware import agent_command  # firmware imports this module

    marker = f"{directory.rstrip('/')}/{restart_marker(service)}"
    return agent_command({"moonraker": url, "restart": service,
                          "pending_marker": marker[2:] if marker.startswith("~/") else marker})


def mark_pending_command(directory: str, service: str) -> StringCommand:
    return StringCommand("sh", "-c", QuoteString(f"cd {shell_path(directory)} && touch {shlex.quote(restart_marker(service))}"))


def show_diffs(writes: Sequence[FileWrite]) -> None:
    """Under ``--diff``, or in the change-detection pass (``--dry``, the confirm prompt), once."""
    if state.is_executing and not (state.config.DIFF and not state.check_for_changes):
        return
    for write in writes:
        host.log(f"{'Will modify' if write.old_sha256 else 'Will create'} {write.name} ({write.reason})", logger.info)
        if write.old_sha256 and write.old_text is None:
            logger.info("  (old file too big to show)")
        for line in unified_diff(write.name, write.old_text, write.text):
            logger.info("  %s", line)


def apply_writes(
    directory: str, writes: Sequence[FileWrite], free_bytes: int, backups: int, service: str,
    busy: bool, restart: bool, url: str, pending: bool,
):
    """Commands for a set of writes and the restart they call for (shared with moonraker pins)."""
    if writes:
        need = needed_bytes(writes)
        if free_bytes < need:
            yield fail_command(
                f"{host.name}: disk full: {directory} has {free_bytes // 1024} KiB free, writing "
                f"{', '.join(w.name for w in writes)} needs {need // 1024} KiB (new copies and backups). "
                "Nothing was written; free some space and rerun.")
            return
        show_diffs(writes)
        for write in writes:
            temp_name = f".{write.name}.pyinfra-ratos.tmp"
            yield FileUploadCommand(BytesIO(encode_text(write.text)), f"{directory}/{temp_name}")
            yield install_command(directory, write, temp_name, backups)
    if not restart or not (writes or pending):
        return
    if busy:
        host.log(f"{service} restart pending: the printer is busy (it runs on the next deploy when idle)",
                 logger.warning)
        if writes and not pending:
            yield mark_pending_command(directory, service)
        return
    yield restart_command(directory, service, url)


def check_common(backups: int, when_busy: str) -> None:
    if isinstance(backups, bool) or not isinstance(backups, int) or backups < 1:
        raise OperationValueError(f"backups={backups!r}: keep at least one backup (an int >= 1)")
    if when_busy not in WHEN_BUSY:
        raise OperationValueError(f"when_busy={when_busy!r}: use one of {', '.join(WHEN_BUSY)}")


def files_query(generated_file: str, user_file: str, includes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The ``PrinterFiles`` arguments (besides ``config_dir``) :func:`config` reads with."""
    return {"files": (generated_file, user_file, restart_marker("klipper")), "read": (generated_file, user_file),
            "includes": tuple(dict.fromkeys(includes))}


def covers(files: Mapping[str, Any] | None, query: Mapping[str, Sequence[str]]) -> bool:
    """Whether a ``PrinterFiles`` value read by a caller answers ``query`` (``{}``: no folder, final)."""
    if files is None:
        return False
    if not files:
        return True
    known = files.get("files", {})
    return (all(name in known for name in query.get("files", ()))
            and all(name in known and (known[name]["text"] is not None or not known[name]["exists"]
                                       or known[name]["size"] > MAX_TEXT_BYTES) for name in query.get("read", ()))
            and all(target in files.get("includes", {}) for target in query.get("includes", ())))


# the template context (stand-in serials) -> the files the packaged templates include
_PACKAGED_INCLUDES: dict[str, list[str]] = {}


def _printer_data() -> dict[str, Any]:
    """The current host's printer keys (one pass over its data, not one lookup per key)."""
    data = host.data.dict()
    return {key: copy(data[key]) for key in pm.DATA_KEYS if data.get(key) is not None}


def config_files_query(
    printer: Mapping[str, Any] | None = None, generated_file: str = "RatOS.cfg", user_file: str = "printer.cfg",
    templates: str | None = None, catalog: Mapping[str, Board] | None = None, host_name: str | None = None,
) -> dict[str, tuple[str, ...]] | None:
    """What :func:`config` will read for the host (``PrinterFiles`` arguments), so that a caller
    can read it in one fact shared with other operations; None when the host's printer data or
    templates do not render (the operation, reading for itself, reports why)."""
    data = dict(printer) if printer is not None else _printer_data()
    try:
        spec = pm.parse_printer_data(host_name or host.name, data, catalog if catalog is not None else load_catalog())
        includes = template_includes(spec, generated_file, templates or data.get("printer_templates"))
    except (pm.PrinterDataError, TemplateRenderError):
        return None
    return files_query(generated_file, user_file, includes)


def template_includes(spec: pm.PrinterSpec, generated_file: str, template_dir: str | None) -> list[str]:
    """The files the printer's two renderings include (globs and the generated file left out).
    Raises TemplateRenderError.

    The includes do not depend on the serial paths: rendered with a stand-in, reading no USB. The
    packaged templates do not change while the process runs: printers with the same model and
    boards (most of a farm) include the same files, rendered once."""
    stand_in = {e.mcu_name: "/dev/serial/by-id/stand-in" for e in spec.boards}
    context = {**pm.template_context(spec, stand_in), "generated": generated_file}
    key = None if template_dir else json.dumps(context, sort_keys=True, default=str)
    includes = _PACKAGED_INCLUDES.get(key) if key else None
    if includes is None:
        texts = [render(name, context, template_dir) for name in ("RatOS.cfg.j2", "printer.cfg.j2")]
        includes = [t for text in texts for t in kc.include_targets(text) if not kc.is_glob(t) and t != generated_file]
        if key:
            if len(_PACKAGED_INCLUDES) > 256:
                _PACKAGED_INCLUDES.clear()
            _PACKAGED_INCLUDES[key] = includes
    return list(includes)


def printer_busy(url: str, activity: Mapping[str, Any] | None = None) -> bool:
    """Whether the printer is busy: ``activity`` when the caller read it, else asked now."""
    if activity is None:
        activity = host.get_fact(PrinterActivity, url=url)
    # no answer at all is not "idle": never restart what we cannot see (the one gate)
    return gate.disruption_refused(activity) is not None


# --- the operation ---------------------------------------------------------------------------


@operation()
def config(
    printer: Mapping[str, Any] | None = None,
    config_dir: str = "~/printer_data/config",
    generated_file: str = "RatOS.cfg",
    user_file: str = "printer.cfg",
    user_config: str = "adopt",
    templates: str | None = None,
    backups: int = 5,
    when_busy: str = "write",
    restart: bool = True,
    moonraker_url: str = MOONRAKER_URL,
    catalog: Mapping[str, Board] | None = None,
    attached_boards: Mapping[str, Any] | None = None,
    current_files: Mapping[str, Any] | None = None,
    printer_activity: Mapping[str, Any] | None = None,
):
    """
    Render a RatOS printer's configuration and converge the Pi's files to it.

    + printer: the printer's inventory data (keys: see ``pyinfra_ratos.printer.model``); default:
      the host's data (``printer_model``, ``printer_size``, ``boards``, ``hotend``, ...)
    + config_dir: Klipper's config folder on the Pi
    + generated_file: the file the tool owns (``RatOS.cfg``), rendered from ``RatOS.cfg.j2``
    + user_file: the file the user owns (``printer.cfg``), from ``printer.cfg.j2`` when missing
    + user_config: what to do with an existing user file: ``keep`` it as is; ``adopt`` it (default:
      when it lacks ``[include <generated_file>]``, add it before the first section and comment
      out the sections the generated file now sets, keeping everything else byte for byte);
      ``regenerate`` it from its template, carrying the SAVE_CONFIG block over byte for byte
    + templates: a folder of the user's templates, searched first (default: host data
      ``printer_templates``)
    + backups: backups kept per file (``<file>.<timestamp>.bak``)
    + when_busy: the printer prints: ``write`` the files and leave the Klipper restart pending
      (done by the next deploy that finds it idle), or ``defer`` everything to a later deploy
    + restart: restart Klipper (through Moonraker) after a change, when the printer is idle
    + attached_boards: the Pi's ``AttachedBoards``, read once by the caller (e.g. its FleetAudit's
      ``boards``) while nothing will replug them before this runs; read here when not given
    + current_files: the Pi's ``PrinterFiles`` read by the caller with at least
      :func:`config_files_query`'s arguments (e.g. ``ConfigState``); read here when not given or
      when it lacks a file or include. Given, the operation reads nothing itself, neither when
      planned nor when executed (the install commands still check each file is as it was read)
    + printer_activity: the Pi's ``PrinterActivity`` read by the caller (its FleetAudit's
      ``activity``); read here when not given. The restart re-checks on the Pi that no print started

    Nothing is written when the host data, the rendering or the rendered config is invalid (the
    host fails with the field or the template line named), nor when the file system lacks room.
    Writes are atomic (upload next to the file, rename); a file that changed on the Pi since it
    was read (a SAVE_CONFIG meanwhile) is not overwritten.

    **Example:**

    .. code:: python

        printer.config(
            name="RatOS configuration",
            printer={"printer_model": "v-core-3", "printer_size": 300,
                     "boards": [{"board": "btt-octopus-pro-h723-11"}]},
        )
    """
    if user_config not in USER_CONFIG_MODES:
        raise OperationValueError(f"user_config={user_config!r}: use one of {', '.join(USER_CONFIG_MODES)}")
    check_common(backups, when_busy)
    for label, name in (("generated_file", generated_file), ("user_file", user_file)):
        if "/" in name or not name.endswith(".cfg") or kc.value_problem(name):
            raise OperationValueError(f"{label}={name!r}: a plain file name ending in .cfg")

    data = dict(printer) if printer is not None else _printer_data()
    template_dir = templates or data.get("printer_templates")
    try:
        spec = pm.parse_printer_data(host.name, data, catalog if catalog is not None else load_catalog())
    except pm.PrinterDataError as error:
        yield fail_command(str(error))
        return

    if not needs_usb(spec):
        attached: Mapping[str, Any] = {}
    else:
        attached = attached_boards if attached_boards is not None else host.get_fact(AttachedBoards)

    try:
        includes = template_includes(spec, generated_file, template_dir)
    except TemplateRenderError as error:
        yield fail_command(f"{host.name}: {error}. Nothing was written.")
        return

    # one round trip: both files, the restart marker, and every include target the renderings name
    query = files_query(generated_file, user_file, includes)
    files = current_files if covers(current_files, query) else host.get_fact(PrinterFiles, config_dir=config_dir, **query)
    if not files:
        yield fail_command(f"{host.name}: {config_dir} does not exist on the Pi. Nothing was written; "
                           "is this a RatOS Pi (printer_data)?")
        return
    # a board that is not running Klipper right now keeps the serial the generated file names
    decision = decide_files(spec, attached, files, user_config, generated_file, user_file, template_dir)
    if decision.failure:
        yield fail_command(f"{host.name}: {decision.failure}")
        return
    for note in decision.notes:
        host.log(note, logger.warning)
    writes, pending = list(decision.writes), decision.pending
    if not writes and not pending:
        host.noop(f"{generated_file} and {user_file} are up to date")
        return
    busy = printer_busy(moonraker_url, printer_activity) if restart or when_busy == "defer" else False
    if busy and when_busy == "defer" and writes:
        host.log(f"deferred: the printer is busy; {', '.join(w.name for w in writes)} not written "
                 "(the next deploy that finds it idle writes them)", logger.warning)
        return
    yield from apply_writes(files["dir"], writes, files["free_bytes"], backups, "klipper", busy, restart,
                            moonraker_url, pending)
