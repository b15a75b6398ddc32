"""
Read-only fleet audit: one SSH command per Pi, a line per printer and board.

.. code:: sh

    pyinfra -y INVENTORY deploys/audit.py

Prints each Pi's Klipper version against the fleet's pin (``klipper_commit``), klippy state,
whether it is busy or offline, for every board its USB port, mode and whether its MCU is at the
pin (the same compare as ``ratos-fleet status`` and the report:
:func:`pyinfra_ratos.firmware.converged.firmware_word`), and whether the update would rewrite its
configuration (the same judgement as ``status``'s CONFIG column:
:func:`pyinfra_ratos.run.config_status.judge_config`). Changes nothing (``ratos-fleet status
INVENTORY`` prints the same as one table, or JSON).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from pyinfra_ratos.run.connection import tune as tune_connection
from pyinfra_ratos.firmware.converged import firmware_word
from pyinfra_ratos.deploys import executed_by_pyinfra
from pyinfra_ratos.facts.update_state import UpdateState
from pyinfra_ratos.run.config_status import judge_config, status_reads


def audit_lines(name: str, audit: dict, pin_commit: str | None = None, pin_version: str | None = None,
                config: dict | None = None) -> list[str]:
    """The audit of one Pi as text lines (pure); without a pin, MCUs are compared with the host.
    ``config``: :func:`judge_config`'s answer, a last line when given."""
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
    if config is not None:
        reason = [] if config["state"] == "up to date" else str(config["reason"]).splitlines()
        lines.append(f"[{name}]   config {config['state']}" + (f"  {reason[0]}" if reason else ""))
        lines += [f"[{name}]     {line.strip()}" for line in reason[1:]]
    return lines


@deploy("Audit")
def audit_fleet() -> None:
    tune_connection(host)
    data = host.data.dict()
    read = host.get_fact(UpdateState, **status_reads(host.name, data))  # the audit and the config folder
    commit = data.get("klipper_commit")
    for line in audit_lines(host.name, read["audit"], commit if isinstance(commit, str) else None,
                            config=judge_config(host.name, data, read)):
        print(line, flush=True)


if executed_by_pyinfra(globals()):
    audit_fleet()
