"""Converge every printer's configuration from its inventory data.

    pyinfra -y INVENTORY deploys/printer_config.py           # apply
    pyinfra INVENTORY deploys/printer_config.py --dry        # show the diffs, change nothing

Per host, from its inventory data (keys: ``pyinfra_ratos.printer.model``): ``RatOS.cfg`` is
rendered and written when it changed, ``printer.cfg`` stays the user's (created when missing,
adopted when it does not include ``RatOS.cfg`` yet), Klipper restarts only when a file it reads
changed and the printer is idle, and ``moonraker.conf`` pins ``klipper_commit``.

Optional host data that tunes the run (defaults in brackets):

    printer_user_config  keep | adopt | regenerate   what to do with an existing printer.cfg [adopt]
    printer_when_busy    write | defer               a printing Pi: write, restart later; or skip [write]
    printer_backups      int >= 1                    backups kept per file [5]
    printer_config_dir   path                        Klipper's config folder [~/printer_data/config]

A host whose data is invalid fails alone, with every bad field named, before anything is written.
"""

from __future__ import annotations

from pyinfra import host

from pyinfra_ratos.operations import identity, moonraker, printer

identity.verified()  # not the printer recorded for this name: a failing operation first, nothing else runs
config_dir = host.data.get("printer_config_dir", "~/printer_data/config")
when_busy = host.data.get("printer_when_busy", "write")
backups = host.data.get("printer_backups", 5)

printer.config(
    name="Klipper configuration (RatOS.cfg, printer.cfg)",
    config_dir=config_dir,
    user_config=host.data.get("printer_user_config", "adopt"),
    backups=backups,
    when_busy=when_busy,
)
moonraker.pins(
    name="Pin the fleet's Klipper commit in moonraker.conf",
    config_dir=config_dir,
    backups=backups,
    when_busy=when_busy,
)
