"""What the printer is doing now, and the one ``busy`` flag every disruptive operation obeys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from pyinfra_ratos.firmware.agent import judge_activity

from .klipper import DEFAULT_URL
from .probe import as_dict, as_str, json_document, probe_command

class PrinterActivityDict(TypedDict):
    moonraker: bool  # Moonraker answered at all
    klippy_state: str  # ready|error|shutdown|startup|disconnected, "" when unknown
    print_state: str  # print_stats.state, "" when unknown
    idle_state: str  # idle_timeout.state, "" when unknown
    sdcard_active: bool
    klipper_service: str  # `systemctl is-active klipper` when Moonraker could not answer, else ""
    busy: bool  # not positively idle: nothing disruptive may run
    reason: str  # why it is busy ("" when idle), for the report and the terminal


def parse_printer_activity(raw: Mapping[str, Any]) -> PrinterActivityDict:
    """The probe's Moonraker answers (``remote.probe_moonraker``) as the printer's activity.

    ``busy`` and ``reason`` come from :func:`pyinfra_ratos.firmware.agent.judge_activity`, the very
    function the agent re-checks with on the Pi right before a disruptive step: only a positive
    answer is idle (a job state that shows no job, or a klipper unit that is positively stopped).
    """
    info_status = as_dict(raw.get("info")).get("status")
    query = as_dict(raw.get("query"))
    service = as_str(raw.get("klipper_service"))
    idle, reason = judge_activity(dict(raw))
    activity: PrinterActivityDict = {
        "moonraker": isinstance(info_status, int) and info_status > 0,
        "klippy_state": "disconnected" if info_status == 503 else "",
        "print_state": "", "idle_state": "", "sdcard_active": False,
        "klipper_service": service, "busy": not idle, "reason": reason,
    }
    if query.get("status") != 200:
        return activity
    status = as_dict(as_dict(as_dict(query.get("body")).get("result")).get("status"))
    info = as_dict(as_dict(as_dict(raw.get("info")).get("body")).get("result"))
    activity.update(
        klippy_state=as_str(as_dict(status.get("webhooks")).get("state")) or as_str(info.get("state")),
        print_state=as_str(as_dict(status.get("print_stats")).get("state")),
        idle_state=as_str(as_dict(status.get("idle_timeout")).get("state")),
        sdcard_active=as_dict(status.get("virtual_sdcard")).get("is_active") is True,
    )
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
