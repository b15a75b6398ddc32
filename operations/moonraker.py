"""
Pin the software Moonraker's update manager offers, so the web UI cannot move a printer off the fleet.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pyinfra import host, logger
from pyinfra.api import OperationValueError, operation

from pyinfra_ratos.printer import klipper_config as kc
from pyinfra_ratos.facts.printer_files import PrinterFiles

from .printer import (MOONRAKER_URL, apply_writes, check_common, covers, fail_command, file_write, printer_busy,
                      restart_marker)

_COMMIT = re.compile(r"^[0-9a-f]{40}\Z")
_NAME = re.compile(r"^[A-Za-z0-9_-]+\Z")


def files_query(conf_file: str = "moonraker.conf") -> dict[str, tuple[str, ...]]:
    """The ``PrinterFiles`` arguments (besides ``config_dir``) :func:`pins` reads with."""
    return {"files": (conf_file, restart_marker("moonraker")), "read": (conf_file,)}


def pin_commits(text: str, pins: Mapping[str, str]) -> tuple[str, list[str]]:
    """``text`` with ``pinned_commit`` set in each ``[update_manager <name>]``; the names whose
    section is missing are returned (nothing offers to update them, so nothing to pin)."""
    missing = []
    for name, commit in pins.items():
        changed = kc.set_option(text, f"update_manager {name}", "pinned_commit", commit)
        if changed is None:
            missing.append(name)
        else:
            text = changed
    return text, missing


@operation()
def pins(
    commits: Mapping[str, str] | None = None,
    config_dir: str = "~/printer_data/config",
    conf_file: str = "moonraker.conf",
    backups: int = 5,
    when_busy: str = "write",
    restart: bool = True,
    moonraker_url: str = MOONRAKER_URL,
    current_files: Mapping[str, Any] | None = None,
    printer_activity: Mapping[str, Any] | None = None,
):
    """
    Set ``pinned_commit`` in ``[update_manager <name>]`` sections of ``moonraker.conf``.

    + commits: ``{update manager name: full commit hash}``; default: ``{"klipper": <klipper_commit>}``
      from the host data (no ``klipper_commit``: nothing to do)
    + config_dir: the folder of moonraker.conf on the Pi
    + conf_file: Moonraker's config file name
    + backups: backups kept (``moonraker.conf.<timestamp>.bak``)
    + when_busy: the printer prints: ``write`` and leave Moonraker's restart pending, or ``defer``
    + restart: restart Moonraker (it reads its config at start) when the printer is idle
    + current_files: the Pi's ``PrinterFiles`` read by the caller with at least
      :func:`files_query`'s arguments (e.g. ``ConfigState``, shared with ``printer.config``); read
      here when not given or when it lacks a file. Given, the operation reads nothing itself
    + printer_activity: the Pi's ``PrinterActivity`` read by the caller (its FleetAudit's
      ``activity``); read here when not given. The restart re-checks on the Pi that no print started

    The file is written atomically, only when a pin changes; every other byte is kept.

    **Example:**

    .. code:: python

        moonraker.pins(commits={"klipper": "0d67d9c45e6e8d1a7c0f2b6f4a1e9d3c5b7a8f90"})
    """
    check_common(backups, when_busy)
    if commits is None:
        commit = host.data.get("klipper_commit")
        commits = {"klipper": commit} if commit else {}
    for name, commit in commits.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise OperationValueError(f"moonraker pins: {name!r} is not an update manager name")
        if not isinstance(commit, str) or not _COMMIT.match(commit):
            yield fail_command(f"{host.name}: klipper_commit / pin {name}: {commit!r} is not a full commit hash. "
                               "Fix: use the 40 lower-case hex digits of `git rev-parse HEAD`. Nothing was written.")
            return
    if not commits:
        host.noop("no commit to pin")
        return

    query = files_query(conf_file)
    files = current_files if covers(current_files, query) else host.get_fact(PrinterFiles, config_dir=config_dir,
                                                                             **query)
    if not files or not files["files"][conf_file]["exists"]:
        yield fail_command(f"{host.name}: {config_dir}/{conf_file} not found; is Moonraker installed?")
        return
    current = files["files"][conf_file]
    if current["text"] is None:
        yield fail_command(f"{host.name}: {conf_file} is too big to edit safely; nothing was written")
        return
    text, missing = pin_commits(current["text"], commits)
    for name in missing:
        host.log(f"{conf_file} has no [update_manager {name}] section: nothing offers to update it, not pinned",
                 logger.warning)
    write = file_write(conf_file, text, current, "pinned_commit")
    pending = files["files"][restart_marker("moonraker")]["exists"]
    if write is None and not pending:
        host.noop(f"{conf_file} pins are up to date")
        return
    busy = printer_busy(moonraker_url, printer_activity) if restart or when_busy == "defer" else False
    if busy and when_busy == "defer" and write:
        host.log(f"deferred: the printer is busy; {conf_file} not written", logger.warning)
        return
    yield from apply_writes(files["dir"], [write] if write else [], files["free_bytes"], backups, "moonraker",
                            busy, restart, moonraker_url, pending)
