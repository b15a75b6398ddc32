"""klippy as Moonraker sees it, derived from the Pi's state file: its state, message and objects.

Shared by the Moonraker stand-in (which answers with it) and the ``systemctl`` stand-in (which
writes klippy.log lines from it), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyinfra_ratos.sim import units

# klippy's own wording (klippy/klippy.py, klippy/extras/error_mcu.py); clients match on it
MESSAGE_READY = "Printer is ready"
MESSAGE_MCU_CONNECT_ERROR = """
Once the underlying issue is corrected, use the
"FIRMWARE_RESTART" command to reset the firmware, reload the
config, and restart the host software.
Error configuring printer
"""
MESSAGE_PROTOCOL_ERROR1 = """
This is frequently caused by running an older version of the
firmware on the MCU(s). Fix by recompiling and flashing the
firmware.
"""
MESSAGE_PROTOCOL_ERROR2 = """
Once the underlying issue is corrected, use the "RESTART"
command to reload the config and restart the host software.
"""
# klippy/extras/error_mcu.py appends this to a host shutdown's reason (gcode.py cmd_M112's)
MESSAGE_SHUTDOWN = """
Once the underlying issue is corrected, use the
"FIRMWARE_RESTART" command to reset the firmware, reload the
config, and restart the host software.
Printer is shutdown
"""
M112_REASON = "Shutdown due to M112 command"
# the services Moonraker allows when the state names none (moonraker/assets/default_allowed_services)
DEFAULT_ALLOWED_SERVICES = (
    "klipper_mcu", "webcamd", "MoonCord", "KlipperScreen", "moonraker-telegram-bot",
    "moonraker-obico", "sonar", "crowsnest", "octoeverywhere", "ratos-configurator",
)
PRINTER_OBJECTS_BEFORE_MCUS = ("webhooks", "configfile")
PRINTER_OBJECTS_AFTER_MCUS = ("pause_resume", "print_stats", "virtual_sdcard", "idle_timeout")


@dataclass(frozen=True)
class Klippy:
    """What Moonraker knows of klippy: its state, message and printer objects."""

    state: str  # disconnected, ready, error, shutdown
    state_message: str
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def connected(self) -> bool:
        return self.state != "disconnected"


def short_mcu_name(name: str) -> str:
    return name.split()[-1]


def mcu_object_name(name: str) -> str:
    """``mcu`` stays ``mcu``; a secondary MCU named ``EBBCan`` is the object ``mcu EBBCan``."""
    return "mcu" if name == "mcu" else f"mcu {name}"


def mcu_connects(mcu: dict[str, Any], services: dict[str, str]) -> bool:
    """An MCU klippy can talk to: enumerated, with firmware, and its service (if any) running."""
    needed = mcu.get("service")
    if needed and services.get(needed) != "active":
        return False
    return bool(mcu.get("present", True)) and mcu.get("firmware") is not None


def mcu_up_to_date(mcu: dict[str, Any], host_version: str) -> bool:
    firmware = mcu["firmware"]
    return firmware.get("version") == host_version or bool(firmware.get("protocol_compatible"))


def protocol_error_message(state: dict[str, Any], culprit: dict[str, Any]) -> str:
    """klippy's "MCU Protocol error" text (klippy/extras/error_mcu.py), versions per MCU."""
    host_version = state.get("host_version", "?")
    outdated, current = [], []
    for mcu in state.get("mcus", []):
        version = mcu["firmware"].get("version", "")
        line = f"{short_mcu_name(mcu['name'])}: Current version {version}"
        (current if version == host_version else outdated).append(line)
    detail = culprit["firmware"].get("protocol_error") or (
        f"mcu '{short_mcu_name(culprit['name'])}': Command format mismatch: "
        "config_stepper oid=%c step_pin=%c dir_pin=%c invert_step=%c step_pulse_ticks=%u"
        " vs config_stepper oid=%c step_pin=%c dir_pin=%c invert_step=%c"
    )
    lines = ["MCU Protocol error", MESSAGE_PROTOCOL_ERROR1,
             f"Your Klipper version is: {host_version}", "MCU(s) which should be updated:"]
    lines += (outdated or ["<none>"]) + ["Up-to-date MCU(s):"] + (current or ["<none>"])
    lines += [MESSAGE_PROTOCOL_ERROR2, detail]
    return "\n".join(lines)


def mcu_status(mcu: dict[str, Any], with_stats: bool) -> dict[str, Any]:
    firmware = mcu["firmware"]
    constants = dict(firmware.get("config", {}))
    status: dict[str, Any] = {
        "mcu_version": firmware.get("version", ""),
        "mcu_build_versions": firmware.get("build_versions", ""),
        "mcu_constants": constants,
    }
    if with_stats:
        # shape of klippy/mcu.py last_stats; the numbers are those of an idle board
        status["last_stats"] = {
            "mcu_awake": 0.003, "mcu_task_avg": 1.4e-05, "mcu_task_stddev": 1.1e-05,
            "bytes_write": 4279, "bytes_read": 9536, "bytes_retransmit": 9,
            "bytes_invalid": 0, "send_seq": 321, "receive_seq": 321, "retransmit_seq": 2,
            "srtt": 0.001, "rttvar": 0.0, "rto": 0.025, "ready_bytes": 0,
            "upcoming_bytes": 0, "freq": int(constants.get("CLOCK_FREQ", 0)),
        }
    return status


def job_objects(print_state: str, filename: str, shutdown: bool = False) -> dict[str, dict[str, Any]]:
    printing = print_state == "printing"
    paused = print_state == "paused"
    idle = "Printing" if printing else "Ready" if paused else "Idle"
    active_file = filename if printing or paused else ""
    if shutdown and printing:
        # klippy/extras/virtual_sdcard.py: the work timer stops and notes a pause; idle_timeout's
        # handler returns NEVER once shut down, so it stays at Printing; pause_resume is untouched
        print_state, printing = "paused", False
    return {
        "pause_resume": {"is_paused": paused},
        "print_stats": {
            "filename": active_file, "total_duration": 0.0, "print_duration": 0.0,
            "filament_used": 0.0, "state": print_state, "message": "",
            "info": {"total_layer": None, "current_layer": None},
        },
        "virtual_sdcard": {
            "file_path": active_file or None, "progress": 0.0, "is_active": printing,
            "file_position": 0, "file_size": 0,
        },
        "idle_timeout": {"state": idle, "printing_time": 0.0, "idle_timeout": 600.0},
    }


def derive_klippy(state: dict[str, Any]) -> Klippy:
    """klippy's state as Moonraker would see it, from the Pi's state file alone."""
    services = state.get("services", {})
    if services.get("klipper") != "active" or units.transition("klipper", state):
        return Klippy("disconnected", "Klippy Disconnected")
    mcus = state.get("mcus", [])
    host_version = state.get("host_version", "?")
    mcu_objects: dict[str, dict[str, Any]] = {}
    klippy_state, message = "ready", MESSAGE_READY
    # klippy identifies MCUs in config order and stops at the first it cannot reach
    unreachable = next((m for m in mcus if not mcu_connects(m, services)), None)
    if unreachable is not None:
        klippy_state = "error"
        message = (f"mcu '{short_mcu_name(unreachable['name'])}': Unable to connect"
                   + MESSAGE_MCU_CONNECT_ERROR)
        reached = mcus[: mcus.index(unreachable)]
        for mcu in mcus:
            connected = any(mcu is m for m in reached)
            mcu_objects[mcu_object_name(mcu["name"])] = mcu_status(mcu, False) if connected else {}
    else:
        outdated = next((m for m in mcus if not mcu_up_to_date(m, host_version)), None)
        if outdated is not None:
            klippy_state, message = "error", protocol_error_message(state, outdated)
        for mcu in mcus:
            mcu_objects[mcu_object_name(mcu["name"])] = mcu_status(mcu, outdated is None)
    shutdown = state.get("klippy") == "shutdown"
    if shutdown:
        # klippy.py invoke_shutdown: the reason replaces only a ready message (error_mcu.py adds
        # the advice); an error stays worded as it was, but the category becomes shutdown
        if klippy_state == "ready":
            message = state.get("klippy_shutdown_reason", M112_REASON) + MESSAGE_SHUTDOWN
        klippy_state = "shutdown"
    objects: dict[str, dict[str, Any]] = {
        "webhooks": {"state": klippy_state, "state_message": message},
        "configfile": {},
    }
    objects.update(mcu_objects)
    objects.update(job_objects(state.get("print_state", "standby"), state.get("print_filename", ""),
                               shutdown))
    return Klippy(klippy_state, message, objects)
