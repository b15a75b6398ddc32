"""Everything a fleet audit reads from a Pi, in one SSH command."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from .boards import BoardInfo, parse_attached_boards
from .can import CanBusDict, can_args, parse_can_bus
from .klipper import DEFAULT_LOG, DEFAULT_URL, KlipperHostDict, McuFirmwareDict, parse_klipper_host, parse_mcu_firmware
from .network import NetworkReachabilityDict, parse_network_reachability
from .printer import PrinterActivityDict, parse_printer_activity
from .probe import as_dict, expand_hosts, json_document, probe_command


class FleetAuditDict(TypedDict):
    boards: dict[str, BoardInfo]  # = AttachedBoards
    klipper: KlipperHostDict  # = KlipperHost(klipper_path)
    mcu_firmware: McuFirmwareDict  # = McuFirmware(moonraker_url, klippy_log)
    activity: PrinterActivityDict  # = PrinterActivity(moonraker_url)
    network: NetworkReachabilityDict  # = NetworkReachability(hosts, klipper_path, moonraker_url)
    can: CanBusDict  # = CanBus(): {} shapes on a printer without CAN


def parse_fleet_audit(raw: Mapping[str, Any]) -> FleetAuditDict:
    """The bundle probe's output (``remote.probe_audit``) through each fact's own parser."""
    moonraker = as_dict(raw.get("moonraker"))
    return {
        "boards": parse_attached_boards(as_dict(raw.get("boards"))),
        "klipper": parse_klipper_host(as_dict(raw.get("klipper"))),
        "mcu_firmware": parse_mcu_firmware(moonraker),
        "activity": parse_printer_activity(moonraker),
        "network": parse_network_reachability(as_dict(raw.get("network"))),
        "can": parse_can_bus(as_dict(raw.get("can"))),
    }


class FleetAudit(FactBase[FleetAuditDict]):
    """
    Returns AttachedBoards, KlipperHost, McuFirmware, PrinterActivity and NetworkReachability of a
    Pi from ONE SSH command (pyinfra 3 caches no fact: five facts are five round trips), each
    under its own key and with exactly the value the single fact would give. Moonraker is asked
    once for the MCUs and the job state together.

    .. code:: python

        # pyinfra INVENTORY fact pyinfra_ratos.facts.audit.FleetAudit
        {
            "boards": {"1-1.1": {...}},
            "klipper": {"version": "v0.13.0-3-g4d1f2a3b5", ...},
            "mcu_firmware": {"source": "moonraker", "mcus": {...}, ...},
            "activity": {"busy": False, ...},
            "network": {"default_route": True, "reachable": {"github.com:443": True}, ...},
        }
    """

    @override
    def command(
        self,
        klipper_path: str = "~/klipper",
        moonraker_url: str = DEFAULT_URL,
        klippy_log: str = DEFAULT_LOG,
        hosts: str | Iterable[str] = (),
        timeout: float = 3.0,
    ) -> StringCommand:
        return probe_command("audit", self.probe_args(klipper_path, moonraker_url, klippy_log, hosts, timeout))

    @staticmethod
    def probe_args(klipper_path: str, moonraker_url: str, klippy_log: str, hosts: str | Iterable[str],
                   timeout: float) -> dict[str, Any]:
        """The probe's ``audit`` arguments (shared with the facts that bundle an audit)."""
        return {"klipper_path": klipper_path, "moonraker_url": moonraker_url, "klippy_log": klippy_log,
                "hosts": expand_hosts(hosts), "timeout": float(timeout), "can": can_args()}

    @override
    def process(self, output: list[str]) -> FleetAuditDict:
        return parse_fleet_audit(json_document(output))

    @staticmethod
    def default() -> FleetAuditDict:
        return parse_fleet_audit({})
