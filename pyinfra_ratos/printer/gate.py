"""The one gate every entry point passes before it disrupts a printer. Pure Python.

Two questions, asked from the facts a deploy read (and asked again on the Pi by the printer agent,
:mod:`pyinfra_ratos.firmware.agent`, right before the first disruptive step, with the same
:func:`~pyinfra_ratos.firmware.agent.judge_activity`):

- may this run disrupt the printer now? Only on a positive answer that it is idle: printing,
  paused, klippy shut down, Moonraker answering 503 or not at all while Klipper runs, a unit
  starting or stopping, another run holding the printer: no checkout, restart, flash or service
  change. A fresh card, with no Klipper running, is idle.
- may its Klipper move? Not while a board is held back from flashing (never flashed unattended,
  or not flashable now): a new host with a board on old firmware stops the printer with an MCU
  protocol error, so the printer keeps the Klipper and firmware it has, which work together.

``deploys/provision.py``, ``update.py``, ``firmware.py``, ``printer_config.py`` and ``ratos-fleet``
all ask here; the reason reaches the report and the terminal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def disruption_refused(activity: Mapping[str, Any] | None) -> str | None:
    """Why the printer must not be disrupted now, or None when it is positively idle.

    ``activity``: the ``PrinterActivity`` fact (``busy`` and ``reason`` from ``judge_activity``);
    missing or empty counts as unknown, and unknown is busy.
    """
    if activity and activity.get("busy") is False:
        return None
    return str((activity or {}).get("reason") or "printer state unknown")


def klipper_move_refused(changes_commit: bool, held: Sequence[str]) -> str | None:
    """Why Klipper must stay at its commit (None: it may move). ``held``: reasons of held boards."""
    if changes_commit and held:
        return f"not updating Klipper: {held[0]}"
    return None
