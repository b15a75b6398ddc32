"""What the printer is doing now, and the one ``busy`` flag every disruptive operation obeys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from .klipper import DEFAULT_URL
from .probe import as_dict, as_str, json_document, probe_command

BUSY_PRINT_STATES = frozenset({"printing", "paused"})
# klippy states in which no job can be running: a stopped or failed service, or klippy not ready
NOT_RUNNING_SERVICE_STATES = frozenset({"inactive", "failed"})
NO_JOB_KLIPPY_STATES = frozenset({"error", "startup"})


class PrinterActivityDict(TypedDict):
    moonraker: bool  # Moonraker answered at all
    klippy_state: str  # ready|error|shutdown|startup|disconnected, "" when unknown
    print_state: str  # print_stats.state, "" when unknown
    idle_state: str  # idle_timeout.state, "" when unknown
    sdcard_active: bool
    klipper_service: str  # `systemctl is-active klipper` when Moonraker could not answer, else ""
    busy: bool


def is_busy(print_state: str, idle_state: str, sdcard_active: bool) -> bool:
    """A job is running or paused (domain.md §6): ``idle_timeout`` is ``Ready`` while paused,
    and after M112 mid-print ``print_stats`` stays ``paused`` under a ``shutdown`` klippy."""
    return print_state in BUSY_PRINT_STATES or idle_state == "Printing" or sdcard_active


def parse_printer_activity(raw: Mapping[str, Any]) -> PrinterActivityDict:
    """The probe's Moonraker answers (``remote.probe_moonraker``) as the printer's activity.

    Unknown never counts as idle: when Moonraker cannot give the job state (down, or klippy not
    connected: Moonraker restarting while klippy prints looks just like that), ``busy`` is True
    unless ``klipper.service`` is known to be stopped.
    """
    info_status = as_dict(raw.get("info")).get("status")
    query = as_dict(raw.get("query"))
    service = as_str(raw.get("klipper_service"))
    activity: PrinterActivityDict = {
        "moonraker": isinstance(info_status, int) and info_status > 0,
        "klippy_state": "disconnected" if info_status == 503 else "",
        "print_state": "", "idle_state": "", "sdcard_active": False,
        "klipper_service": service, "busy": service not in NOT_RUNNING_SERVICE_STATES,
    }
    if query.get("status") != 200:
        return activity
    status = as_dict(as_dict(as_dict(query.get("body")).get("result")).get("status"))
    info = as_dict(as_dict(as_dict(raw.get("info")).get("body")).get("result"))
    print_state = as_str(as_dict(status.get("print_stats")).get("state"))
    idle_state = as_str(as_dict(status.get("idle_timeout")).get("state"))
    sdcard_active = as_dict(status.get("virtual_sdcard")).get("is_active") is True
    klippy_state = as_str(as_dict(status.get("webhooks")).get("state")) or as_str(info.get("state"))
    busy = is_busy(print_state, idle_state, sdcard_active)
    if not (print_state or idle_state):  # job objects unknown: only a klippy that cannot print is idle
        busy = klippy_state not in NO_JOB_KLIPPY_STATES
    activity.update(klippy_state=klippy_state, print_state=print_state, idle_state=idle_state,
                    sdcard_active=sdcard_active, busy=busy)
    return activity


class PrinterActivity(FactBase[PrinterActivityDict]):
    """
    Returns what the printer is doing, from Moonraker on the Pi (one local HTTP query), and
    ``busy``: a job is printing or paused (``print_stats.state`` in printing/paused,
    ``idle_timeout.state`` Printing, or ``virtual_sdcard.is_active``). When Moonraker cannot
    tell, ``busy`` is True unless ``klipper.service`` is inactive or failed: unknown is never idle.

    .. code:: python

        {
            "moonraker": True, "klippy_state": "ready", "print_state": "printing",
            "idle_state": "Printing", "sdcard_active": True, "klipper_service": "", "busy": True,
        }
    """

    @override
    def command(self, url: str = DEFAULT_URL) -> StringCommand:
        return probe_command("moonraker", {"url": url, "mcus": False, "activity": True})

    @override
    def process(self, output: list[str]) -> PrinterActivityDict:
        return parse_printer_activity(json_document(output))

    @staticmethod
    def default() -> PrinterActivityDict:
        return parse_printer_activity({})
