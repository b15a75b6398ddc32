"""The shared state of one virtual Pi: what its services, printer and boards are doing.

One JSON file per Pi, inside the Pi at ``/var/lib/ratos-sim/state.json`` (so, seen from the
controller, under the Pi's ``/var`` overlay in the farm's state directory). The Moonraker
stand-in, the ``systemctl`` stand-in, the USB board emulator and the tests all read and write it
through this module; writes are atomic (temp file + rename) under an ``flock`` so that no reader
ever sees half a file.

Shape::

    {
      "hostname": "vcore-01",
      "print_state": "standby",          # print_stats.state
      "print_filename": "",
      "services": {"klipper": "active", "moonraker": "active", "klipper-mcu": "active"},
      "allowed_services": ["klipper", "moonraker", "klipper-mcu", "crowsnest"],
      "klipper_path": "/home/pi/klipper",
      "klipper_user": "pi",
      "host_version": "v0.13.0-12-g4d1f2a3b5",   # computed when klipper (re)starts
      "host_build_versions": "",
      "mcus": [
        {"name": "mcu", "board": "btt-octopus-pro-h723-11", "port": "1-1.3",
         "present": true,                        # False: not enumerated as Klipper (DFU, absent)
         "firmware": {"version": "...", "build_versions": "...", "config": {"MCU": "stm32h723xx"}}
                     # null: blank board, nothing to talk to
        }
      ]
    }

Optional keys read by the Moonraker and ``systemctl`` stand-ins (defaults in brackets; the
knobs among them are set at run time with ``ratos-sim-knob``, :mod:`pyinfra_ratos.sim.knobs`)::

    "enabled": {"klipper": true, ...},       # systemctl is-enabled/enable/disable [all true]
    "home": "/home/pi",                      # [home of klipper_user]
    "klippy_log": "...",                     # [<home>/printer_data/logs/klippy.log]
    "moonraker_log": "...",                  # [<home>/printer_data/logs/moonraker.log]
    "moonraker_pid_file": "...",             # [/run/ratos-sim/moonraker.pid]
    "moonraker_host": "127.0.0.1", "moonraker_port": 7125,
    "klippy_pid": 1234,                      # klipper's main process, written by systemctl start
    "unit_started": {"klipper": [realtime_usec, monotonic_usec]},  # ExecMainStartTimestamp*
    "unit_transition": {"klipper": "activating"},  # or deactivating (sim.units) [none]
    "nrestarts": {"klipper": 0},             # systemctl show NRestarts [0]
    "run_dir": "...",                        # units' pid files [/run/ratos-sim, or beside the
                                             #  state file when that is not the Pi's own]
    "klippy": "shutdown",                    # klippy after M112 [ready]
    "klippy_shutdown_reason": "...",         # [Shutdown due to M112 command]
    "moonraker_fault": "503",                # or hang [none] (sim.moonraker)
    "moonraker_hang_seconds": 120,           # with hang: answer this late; 0 = never [0]
    mcus[].service: "klipper-mcu"            # the MCU only connects while that service is active
    mcus[].firmware.protocol_compatible: true  # a version mismatch klippy does not notice
    mcus[].firmware.protocol_error: "..."    # last line of the "MCU Protocol error" message
    mcus[].firmware.message_count: 123       # N in "Loaded MCU 'mcu' N commands" [counted
                                             #  from commands/responses/output, else 123]
    "allowed_services" absent: Moonraker's defaults (asvc list + klipper*/moonraker*)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

STATE_PATH_ENV = "RATOS_SIM_STATE"
DEFAULT_STATE_PATH = "/var/lib/ratos-sim/state.json"

SERVICES = ("klipper", "moonraker", "klipper-mcu")


def state_path(path: str | None = None) -> str:
    return path or os.environ.get(STATE_PATH_ENV) or DEFAULT_STATE_PATH


def load(path: str | None = None) -> dict[str, Any]:
    with open(state_path(path), encoding="utf-8") as handle:
        return json.load(handle)


def save(state: dict[str, Any], path: str | None = None) -> None:
    target = state_path(path)
    directory = os.path.dirname(target) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def update(path: str | None = None) -> Iterator[dict[str, Any]]:
    """Read-modify-write the state under an exclusive lock."""
    target = state_path(path)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    with open(target + ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = load(target)
        yield state
        save(state, target)
