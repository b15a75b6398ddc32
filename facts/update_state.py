"""Everything the fleet update reads from a Pi, in one SSH command: the audit and the config folder."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from .audit import FleetAudit, FleetAuditDict, parse_fleet_audit
from .config_state import ConfigStateDict, config_state_args, parse_config_state
from .klipper import DEFAULT_LOG, DEFAULT_URL
from .probe import as_dict, json_document, probe_command


class UpdateStateDict(TypedDict):
    audit: FleetAuditDict  # = FleetAudit(klipper_path, moonraker_url, klippy_log, hosts)
    config: ConfigStateDict  # = ConfigState(config_dir, files, read, includes)


class UpdateState(FactBase[UpdateStateDict]):
    """
    Returns ``FleetAudit`` and ``ConfigState`` of a Pi from ONE command (one Python process on the
    Pi), each with exactly the value the single fact gives: what ``deploys/update.py`` decides
    from, so that a converged printer costs one SSH command. Arguments: those of both facts.

    .. code:: python

        # pyinfra INVENTORY fact pyinfra_ratos.facts.update_state.UpdateState files=printer.cfg
        {"audit": {"boards": {...}, "klipper": {...}, "mcu_firmware": {...}, "activity": {...},
                   "network": {...}},
         "config": {"backup": {"dir": "/home/pi/printer_data/config", "digest": "4be1...", ...},
                    "files": {"dir": "/home/pi/printer_data/config", "files": {...}, ...}}}
    """

    @override
    def command(
        self,
        config_dir: str = "~/printer_data/config",
        files: Sequence[str] = (),
        read: Sequence[str] = (),
        includes: Sequence[str] = (),
        klipper_path: str = "~/klipper",
        moonraker_url: str = DEFAULT_URL,
        klippy_log: str = DEFAULT_LOG,
        hosts: str | Iterable[str] = (),
        timeout: float = 3.0,
    ) -> StringCommand:
        return probe_command("update", {
            "audit": FleetAudit.probe_args(klipper_path, moonraker_url, klippy_log, hosts, timeout),
            "config": config_state_args(config_dir, files, read, includes),
        })

    @override
    def process(self, output: list[str]) -> UpdateStateDict:
        return parse_update_state(json_document(output))

    @staticmethod
    def default() -> UpdateStateDict:
        return parse_update_state({})


def parse_update_state(document: dict[str, Any]) -> UpdateStateDict:
    return {"audit": parse_fleet_audit(as_dict(document.get("audit"))), "config": parse_config_state(document)}
