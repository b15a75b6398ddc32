"""
Update a printer of the fleet: config backup, Klipper to the pinned commit, firmware, configuration.

.. code:: sh

    pyinfra -y INVENTORY deploys/update.py            # every host, as pyinfra schedules them
    ratos-fleet update INVENTORY                      # canary first, then batches, with the report

Per host: the printer's config folder is copied to the controller first (a new version only when
it changed); a printer that is busy (printing, paused, or whose state cannot be read) is then left
alone and reported as skipped. Otherwise ``~/klipper`` moves to the fleet's pinned commit (from its
remote, or the controller's bundle when the Pi is offline), Klipper restarts on it, every board is
rebuilt-once/flashed where its MCU does not run the new identity, and RatOS.cfg, printer.cfg and
Moonraker's pin are converged; when they changed, the folder is backed up once more, as they left
it. Host data: as ``deploys/provision.py`` (``klipper_commit``, ``klipper_source``, the printer's
and the firmware's keys). A converged printer adds no operation (see :mod:`pyinfra_ratos.run.planned`)
and costs one SSH command (``UpdateState``).
"""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import deploy

from pyinfra_ratos.run import results
from pyinfra_ratos.run import prefetch
from pyinfra_ratos.printer import gate
from pyinfra_ratos.firmware.bundle import describe
from pyinfra_ratos.run.connection import tune as tune_connection
from pyinfra_ratos.deploys import executed_by_pyinfra, left_alone
from pyinfra_ratos.deploys.provision import (
    ProvisionSettings,
    klipper_and_boards,
    back_up_changes,
    printer_configuration,
    provision_settings,
)
from pyinfra_ratos.facts.config_state import merge_queries
from pyinfra_ratos.facts.remote import remote_endpoint
from pyinfra_ratos.facts.update_state import UpdateState
from pyinfra_ratos.operations import backup, firmware, moonraker, printer
from pyinfra_ratos.run.planned import add_if_needed


def update_reads(settings: ProvisionSettings | None = None) -> list[tuple[type, dict[str, Any]]]:
    """The facts :func:`update_printer` reads from the current host, as (fact, kwargs), so that a
    fleet run can read them for a whole batch at once (``pyinfra_ratos.run.prefetch``). ``settings``:
    the host's, when the caller has them (else read from its data)."""
    if settings is None:
        settings, _ = provision_settings(host.name, host.data.dict())
    if settings is None:
        return []
    endpoint = remote_endpoint(settings.remote)
    # one round trip for the audit, the backup, printer.config and moonraker.pins, read once for
    # plan and execution: the backup only downloads, Klipper's checkout and the flashes write no
    # config file, and each write still checks on the Pi that its file is as it was read
    return [(UpdateState, {
        "hosts": [f"{endpoint[0]}:{endpoint[1]}"] if endpoint else [],
        "config_dir": settings.config_dir,
        **merge_queries(printer.config_files_query(), moonraker.files_query()),
    })]


@deploy("Update printer")
def update_printer() -> None:
    tune_connection(host)
    settings, errors = provision_settings(host.name, host.data.dict())
    if settings is None:
        firmware.refuse(name="Update", reason="\n".join(errors))
        return
    # the reads the fleet's prefetch worked out for this host (the same function, the same data)
    [(fact, kwargs)] = prefetch.take_reads(host.name) or update_reads(settings)
    read = prefetch.get_fact(host, fact, **kwargs)
    if not backup.identity.verified(read["config"]["backup"], settings.backups): return  # noqa: E701 - not the printer recorded
    audit, state = read["audit"], read["config"]
    config = state["backup"]
    before = audit["klipper"].get("version") or None
    # every operation below is given all it reads (the facts above): one with nothing to do is
    # left out of the deploy (planned.add_if_needed), so a converged printer adds none at all
    results.note_op(host.name, "backup", add_if_needed(
        backup.config_dir, name="Back up the printer's config", dest_root=settings.backups,
        config_dir=settings.config_dir, keep=settings.backup_keep, current=config))
    busy = gate.disruption_refused(audit["activity"])
    if busy:
        skip(before, busy)
        return
    ahead = klipper_and_boards(settings, audit)
    if isinstance(ahead, str):
        skip(before, ahead)
        return
    if ahead is None:
        return
    plan, boards = ahead
    target = describe(settings.source, settings.commit) if settings.source and plan.changes_commit else None
    results.note(host.name, klipper={"before": before, "after": target or before,
                                     "action": "updated" if plan.changes_commit else "unchanged", "reason": ""})
    # a flash re-enumerates its board (new serial path): then printer.config reads the USB itself
    flashing = any(step.plan is not None and step.plan.action == "flash" for step in boards)
    config_op, pins_op = printer_configuration(settings, config, files=state["files"],
                                               attached=None if flashing else audit["boards"],
                                               activity=audit["activity"])  # idle: busy ones returned above
    results.note_op(host.name, "config", config_op)
    results.note_op(host.name, "pins", pins_op)
    back_up_changes(settings, [config_op, pins_op])


def skip(before: str | None, reason: str) -> None:
    """Leave the printer exactly as it is, saying why (the report counts it as not done)."""
    results.note(host.name, skipped=reason, klipper={"before": before, "after": before, "action": "skipped",
                                                      "reason": reason})
    left_alone(reason)


if executed_by_pyinfra(globals()):
    update_printer()
