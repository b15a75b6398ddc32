"""
Provision a RatOS Pi from its inventory record: from a freshly flashed SD card to a converged printer.

.. code:: sh

    pyinfra -y INVENTORY deploys/provision.py

In order, per host: the config backup (before anything touches the config) or, on a card that was
replaced, the restore of the newest calibrated backup; hostname and timezone; packages; the udev
rule for ``/dev/RatOS/<serial>``; ``~/klipper`` at the fleet's pinned commit (from GitHub, or from
the controller's bundle when the Pi is offline); services enabled and running (Klipper restarted
on a new commit, unless printing); firmware for every board; RatOS.cfg/printer.cfg and Moonraker's
pins; a last backup when the config changed. What every step decides from is read in one SSH
command (``ProvisionState``): a converged Pi costs that one command and yields none.

pyinfra reads facts before anything runs, so what follows a Klipper checkout or a restore (firmware
is built for the commit the Pi runs, the config is rendered over the restored printer.cfg) runs
at execution time in a ``python.call``, reading the Pi as it is then; a converged Pi does not need
it and stays a no-op.

Host data (besides the printer's and firmware's keys, see ``printer_model``/``firmware_settings``)::

    klipper_commit       the fleet's pinned Klipper commit, 40 hex digits                  (required)
    klipper_source       a Klipper checkout on the controller holding it (bundles, firmware) (required)
    klipper_remote       origin of a new checkout [https://github.com/Klipper3d/klipper.git]
    klipper_bundle_cache the controller's bundle folder [~/.cache/pyinfra-ratos/bundles]
    hostname             the Pi's hostname [the inventory name, when it is a valid hostname]
    timezone             e.g. "Europe/Copenhagen" [left as it is]
    build_on_pi          true: also install the ARM toolchain (--no-install-recommends) [false]
    provision_services   systemd units enabled and running [klipper, moonraker, klipper-mcu]
    config_backups       the controller's backup folder [~/.local/share/pyinfra-ratos/config-backups]
    config_backup_keep   versions kept per host [20]
    printer_config_dir, printer_user_config, printer_when_busy, printer_backups: as deploys/printer_config.py
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, python, server, systemd

from pyinfra_ratos.deploys import executed_by_pyinfra, left_alone
from pyinfra_ratos.deploys.firmware import apply_firmware, held, plan_firmware, preparation_failures, stage_for_hand
from pyinfra_ratos.run import results
from pyinfra_ratos.printer import gate
from pyinfra_ratos.facts.audit import FleetAuditDict
from pyinfra_ratos.facts.config_state import merge_queries
from pyinfra_ratos.facts.provision_state import ProvisionState, SystemStateDict
from pyinfra_ratos.facts.remote import remote_endpoint
from pyinfra_ratos.operations import backup, firmware, klipper, moonraker, printer
from pyinfra_ratos.run.planned import add_if_needed, added_while_executing
from pyinfra_ratos.printer.provision_settings import ProvisionSettings, provision_settings, user_config_mode

BASE_PACKAGES = ("dfu-util", "python3-venv", "git")
TOOLCHAIN = ("gcc-arm-none-eabi", "binutils-arm-none-eabi", "libnewlib-arm-none-eabi")
UDEV_RULE_PATH = "/etc/udev/rules.d/98-pyinfra-ratos.rules"
# RatOS names a board's serial port after the USB serial its firmware reports (RatOS builds set it
# to the board id), for every device whose firmware says it is Klipper: printer.cfg's
# ``serial: /dev/RatOS/<board id>`` then survives reflashing and replugging.
UDEV_RULE = (
    "# Written by pyinfra-ratos (deploys/provision.py): /dev/RatOS/<USB serial> for Klipper boards.\n"
    'SUBSYSTEM=="tty", SUBSYSTEMS=="usb", ATTRS{manufacturer}=="Klipper", ATTRS{serial}=="?*", '
    'SYMLINK+="RatOS/$attr{serial}"\n'
)
UDEV_RELOAD = ("udevadm control --reload-rules && udevadm trigger --subsystem-match=tty --action=add "
               "|| echo 'pyinfra-ratos: udev is not running here: the rule applies from the next boot'")
# --- steps -----------------------------------------------------------------------------------


# pyinfra caches no fact and its operations read theirs again: what the steps decide from is read
# once, in the one ProvisionState command, and an operation is called only when there is something
# to do (it then reads what it needs itself): a converged Pi costs that one command


def provision_reads(settings: ProvisionSettings) -> tuple[type, dict[str, Any]]:
    """The one fact :func:`provision` reads from the host, with its arguments."""
    endpoint = remote_endpoint(settings.remote)
    return ProvisionState, {
        "hosts": [f"{endpoint[0]}:{endpoint[1]}"] if endpoint else [],
        "config_dir": settings.config_dir,
        **merge_queries(printer.config_files_query(), moonraker.files_query()),
        "packages": list(wanted_packages(settings)),
        "units": list(units(settings).values()),
        "zone": zone_file(settings),
        "system_files": [UDEV_RULE_PATH],
    }


def wanted_packages(settings: ProvisionSettings) -> tuple[str, ...]:
    return BASE_PACKAGES + (TOOLCHAIN if settings.build_on_pi else ())


def units(settings: ProvisionSettings) -> dict[str, str]:
    return {service: service if "." in service else f"{service}.service" for service in settings.services}


def zone_file(settings: ProvisionSettings) -> str:
    return f"/usr/share/zoneinfo/{settings.timezone}" if settings.timezone else ""


def _udev_rule_in_place(system: SystemStateDict) -> bool:
    found = system["files"].get(UDEV_RULE_PATH)
    wanted = hashlib.sha1(UDEV_RULE.encode()).hexdigest()
    return found is not None and (found["sha1"], found["mode"], found["user"], found["group"]) == (
        wanted, "644", "root", "root")


def _system(settings: ProvisionSettings, system: SystemStateDict) -> None:
    if settings.hostname and system["hostname"] != settings.hostname:
        server.hostname(name="Hostname", hostname=settings.hostname, _sudo=True)
    if settings.timezone and system["timezone"] != settings.timezone:
        zone = zone_file(settings)
        if not system["zone_file"]:
            firmware.refuse(name="Timezone", reason=f"timezone {settings.timezone!r}: no {zone} on the Pi (a typo?)")
        else:
            files.link(name="Timezone", path="/etc/localtime", target=zone, _sudo=True)
            files.put(name="Timezone name", src=StringIO(f"{settings.timezone}\n"), dest="/etc/timezone",
                      mode="644", _sudo=True)
    missing = [p for p in wanted_packages(settings) if not system["packages"].get(p)]
    if missing:  # an apt-get update only when something must be installed
        apt.packages(name="Packages", packages=missing, update=True, cache_time=3600,
                     extra_install_args="--no-install-recommends", _sudo=True)
    if not _udev_rule_in_place(system):
        rule = files.put(name="udev rule: /dev/RatOS/<serial>", src=StringIO(UDEV_RULE), dest=UDEV_RULE_PATH,
                         user="root", group="root", mode="644", _sudo=True)
        server.shell(name="Reload udev rules", commands=[UDEV_RELOAD], _sudo=True, _if=rule.did_change)


def _services(settings: ProvisionSettings, system: SystemStateDict) -> None:
    for service, unit in units(settings).items():
        if not (system["running"].get(unit) and system["enabled"].get(unit)):
            systemd.service(name=f"{service} enabled and running", service=service, running=True, enabled=True,
                            _sudo=True)


def printer_configuration(settings: ProvisionSettings, config: Mapping[str, Any],
                          files: Mapping[str, Any] | None = None,
                          attached: Mapping[str, Any] | None = None,
                          activity: Mapping[str, Any] | None = None) -> list[Any]:
    """printer.config and moonraker.pins; ``files``/``attached``/``activity``: the Pi's PrinterFiles,
    AttachedBoards and PrinterActivity the caller already read (see ``facts.config_state``), else
    each op reads its own."""
    user_config = user_config_mode(settings, config)
    # given everything they read, an operation with nothing to do is left out (see planned)
    given = files is not None and activity is not None

    def add(op: Any, read_all: bool, **kwargs: Any) -> Any:
        return add_if_needed(op, **kwargs) if read_all else op(**kwargs)

    return [
        add(printer.config, given and attached is not None,
            name="Klipper configuration (RatOS.cfg, printer.cfg)", config_dir=settings.config_dir,
            user_config=user_config, backups=settings.file_backups, when_busy=settings.when_busy,
            current_files=files, attached_boards=attached, printer_activity=activity),
        add(moonraker.pins, given,
            name="Pin the fleet's Klipper commit in moonraker.conf", config_dir=settings.config_dir,
            backups=settings.file_backups, when_busy=settings.when_busy, current_files=files,
            printer_activity=activity),
    ]


def _final_backup(settings: ProvisionSettings) -> None:
    # no current=: the operation reads the folder itself, when planned and again when executed
    backup.config_dir(name="Back up the new configuration", dest_root=settings.backups,
                      config_dir=settings.config_dir, keep=settings.backup_keep)


def converge_config(settings: ProvisionSettings, config: Mapping[str, Any] | None,
                    read: Mapping[str, Any] | None = None) -> None:
    """Configuration and its last backup. ``config`` None: running late (after a restore), read the Pi
    now. ``read``: the config folder's files, boards and activity already read (``ProvisionState``)."""
    late = config is None
    if late:
        config = host.get_fact(backup.ConfigBackupState, config_dir=settings.config_dir)
    changes = printer_configuration(settings, config, **(read or {}))
    results.note_op(host.name, "config", changes[0])
    results.note_op(host.name, "pins", changes[1])
    if late:
        _final_backup(settings)
    else:
        back_up_changes(settings, changes)


def _converge_late(settings: ProvisionSettings) -> None:
    """converge_config from a python.call, once the restored config is in place."""
    with added_while_executing():
        converge_config(settings, None)


def back_up_changes(settings: ProvisionSettings, changes: list[Any]) -> None:
    """Back the config folder up once more after ``changes`` (operations) that will write to it,
    reading it as they left it: the controller then holds what the Pi runs, and the next run finds
    its backup up to date (one transfer now, not one on the next run).

    A plain operation reading the folder itself: pyinfra runs its body again when it executes,
    after the writes, and reads the folder then. (Not an operation added at execution time: in
    pyinfra's API mode an operation's hash is its position on its host, so one added while
    executing can take the hash of another host's later operation, which then runs it twice.)"""
    if any(op.will_change for op in changes):
        _final_backup(settings)


def klipper_and_boards(settings: ProvisionSettings, audit: FleetAuditDict) -> tuple[Any, list[Any]] | str | None:
    """Klipper at the fleet's commit and every board on the firmware for it: prepared first (builds
    for that commit, image checks, uploads, the commit fetched), then done by the printer agent in
    one transaction. Returns (checkout plan, board steps) when the printer goes ahead; the reason
    when it must keep its Klipper (a held board); None when the host fails (refused checkout,
    preparation failed: the failing operation says why, nothing was changed)."""
    plan = klipper.plan_checkout(settings.commit, audit["klipper"], audit["network"], settings.remote)
    fetch = {"commit": settings.commit, "klipper": audit["klipper"], "network": audit["network"],
             "remote_url": settings.remote}
    if plan.action == "refuse":  # a dirty, foreign or broken checkout: the fetch fails the host, saying why
        klipper.fetch(name="Bring the fleet's Klipper commit", **fetch)
        return None
    boards = plan_firmware(audit, commit=settings.commit)
    stay = gate.klipper_move_refused(plan.changes_commit, held(boards))
    if stay:
        stage_for_hand(boards)  # a board a person flashes by hand: its file waits on the Pi
        return stay
    if preparation_failures(boards):
        apply_firmware(boards)  # fails the host, naming every board that cannot be prepared
        return None
    add_if_needed(klipper.fetch, name="Bring the fleet's Klipper commit", source=settings.source,
                  bundle_cache=settings.bundle_cache, **fetch)
    # disrupt once: the printer agent flashes, moves Klipper and restarts it, or puts both back
    apply_firmware(boards, move=klipper.move_of(plan, settings.commit, audit["klipper"]))
    return plan, boards


@deploy("Provision a RatOS Pi")
def provision() -> None:
    settings, errors = provision_settings(host.name, host.data.dict())
    if settings is None:
        firmware.refuse(name="Provision", reason="\n".join(errors))
        return
    fact, kwargs = provision_reads(settings)
    read = host.get_fact(fact, **kwargs)
    audit, config, system = read["audit"], read["config"]["backup"], read["system"]
    if not backup.identity.verified(config, settings.backups): return  # noqa: E701 - not the printer recorded

    # the calibration is safe on the controller before anything on the Pi changes
    restoring = backup.restore_due(config) and backup.newest_calibrated(
        backup.host_folder(settings.backups or backup.DEFAULT_ROOT, host.name)) is not None
    if not restoring:  # a fresh card's defaults are not worth a version
        add_if_needed(backup.config_dir, name="Back up the printer's config", dest_root=settings.backups,
                      config_dir=settings.config_dir, keep=settings.backup_keep, current=config)
    # the gate every entry point shares: a printer that is not positively idle is left as it is
    # (a fresh card, with no Klipper running, is idle)
    busy = gate.disruption_refused(audit["activity"])
    if busy:
        results.note(host.name, skipped=busy)
        left_alone(busy)
        return
    backup.restore_config(name="Restore the config of a replaced SD card", dest_root=settings.backups,
                          config_dir=settings.config_dir, current=config)

    _system(settings, system)

    ahead = klipper_and_boards(settings, audit)
    if isinstance(ahead, str):
        # the printer keeps its Klipper, firmware and configuration, which work together, until
        # the held board can be flashed (as update does)
        results.note(host.name, skipped=ahead)
        left_alone(ahead)
        return
    if ahead is None:
        return
    _services(settings, system)
    if restoring:
        python.call(name="Configuration for the restored config", function=_converge_late, settings=settings)
    else:
        # a flash re-enumerates its board (new serial path): then printer.config reads the USB itself
        _, boards = ahead
        flashing = any(step.plan is not None and step.plan.action == "flash" for step in boards)
        converge_config(settings, config, {"files": read["config"]["files"], "activity": audit["activity"],
                                           "attached": None if flashing else audit["boards"]})


if executed_by_pyinfra(globals()):
    provision()
