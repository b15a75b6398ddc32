"""
Read-only fleet audit: one SSH command per Pi, a line per printer and board.

.. code:: sh

    pyinfra -y INVENTORY deploys/audit.py

Prints each Pi's Klipper version, klippy state, whether it is busy or offline, and for every
board its USB port, mode and whether its MCU runs the host's version. Changes nothing
(``ratos-fleet status INVENTORY`` prints the same as one table, or JSON).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from pyinfra_ratos.run.connection import set_nodelay
from pyinfra_ratos.deploys import executed_by_pyinfra
from pyinfra_ratos.facts.audit import FleetAudit


def audit_lines(name: str, audit: dict) -> list[str]:
    """The audit of one Pi as text lines (pure)."""
    klipper, mcus, activity = audit["klipper"], audit["mcu_firmware"], audit["activity"]
    network = "online" if audit["network"].get("default_route") else "offline"
    busy = "busy" if activity.get("busy") else "idle"
    lines = [f"[{name}] klipper {klipper.get('version') or '?'}  klippy {mcus.get('klippy_state') or '?'}  "
             f"{busy}  {network}"]
    for port, board in sorted(audit["boards"].items()):
        lines.append(f"[{name}]   {port:<8} {board.get('mode', '?'):<10} {board.get('board_id') or board.get('mcu') or '?'}")
    for mcu_name, mcu in sorted((mcus.get("mcus") or {}).items()):
        state = {True: "up to date", False: "behind", None: "unknown"}[mcu.get("matches_host")]
        lines.append(f"[{name}]   mcu {mcu_name:<14} {mcu.get('version') or '-':<24} {state}")
    return lines


@deploy("Audit")
def audit_fleet() -> None:
    set_nodelay(host)
    for line in audit_lines(host.name, host.get_fact(FleetAudit)):
        print(line, flush=True)


if executed_by_pyinfra(globals()):
    audit_fleet()
