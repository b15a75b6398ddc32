"""
Read-only fleet audit: one SSH command per Pi, a line per printer and board.

.. code:: sh

    pyinfra -y INVENTORY deploys/audit.py

Prints each Pi's Klipper version against the fleet's pin (``klipper_commit``), klippy state,
whether it is busy or offline, and for every board its USB port, mode and whether its MCU is at
the pin: the same compare as ``ratos-fleet status`` and the report
(:func:`pyinfra_ratos.firmware.converged.firmware_word`). Changes nothing (``ratos-fleet status INVENTORY``
prints the same as one table, or JSON).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from pyinfra_ratos.run.connection import tune as tune_connection
from pyinfra_ratos.firmware.converged import firmware_word
from pyinfra_ratos.deploys import executed_by_pyinfra
from pyinfra_ratos.facts.audit import FleetAudit


def audit_lines(name: str, audit: dict, pin_commit: str | None = None, pin_version: str | None = None) -> list[str]:
    """The audit of one Pi as text lines (pure); without a pin, MCUs are compared with the host."""
    klipper, mcus, activity = audit["klipper"], audit["mcu_firmware"], audit["activity"]
    network = "online" if audit["network"].get("default_route") else "offline"
    busy = "busy" if activity.get("busy") else "idle"
    host_version = mcus.get("host_version") or klipper.get("version") or ""
    if not (pin_commit or pin_version):
        pin_version = host_version or None
    lines = [f"[{name}] klipper {klipper.get('version') or '?'} ({firmware_word(host_version, pin_commit, pin_version)})"
             f"  klippy {mcus.get('klippy_state') or '?'}  {busy}  {network}"]
    for port, board in sorted(audit["boards"].items()):
        lines.append(f"[{name}]   {port:<8} {board.get('mode', '?'):<10} {board.get('board_id') or board.get('mcu') or '?'}")
    for mcu_name, mcu in sorted((mcus.get("mcus") or {}).items()):
        state = firmware_word(mcu.get("version"), pin_commit, pin_version)
        lines.append(f"[{name}]   mcu {mcu_name:<14} {mcu.get('version') or '-':<24} {state}")
    return lines


@deploy("Audit")
def audit_fleet() -> None:
    tune_connection(host)
    commit = host.data.get("klipper_commit")
    for line in audit_lines(host.name, host.get_fact(FleetAudit), commit if isinstance(commit, str) else None):
        print(line, flush=True)


if executed_by_pyinfra(globals()):
    audit_fleet()
