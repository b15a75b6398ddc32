"""Everything a provision reads from a Pi, in one SSH command: the update's state and the system's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from typing_extensions import override

from .audit import FleetAudit, FleetAuditDict, parse_fleet_audit
from .config_state import ConfigStateDict, config_state_args, parse_config_state
from .klipper import DEFAULT_LOG, DEFAULT_URL
from .probe import as_dict, as_str, json_document, probe_command


class FileStateDict(TypedDict):
    sha1: str
    mode: str  # octal, as files.put's mode ("644")
    user: str
    group: str


class SystemStateDict(TypedDict):
    hostname: str  # = Hostname
    timezone: str  # = Timezone
    zone_file: bool  # the zone asked for is a file under /usr/share/zoneinfo
    packages: dict[str, bool]  # the packages asked for: installed (dpkg "ii"/"hi"), as DebPackages has them
    running: dict[str, bool]  # = SystemdStatus(services=units)
    enabled: dict[str, bool]  # = SystemdEnabled(services=units)
    files: dict[str, FileStateDict | None]  # the files asked for (None: not a regular file)


class ProvisionStateDict(TypedDict):
    audit: FleetAuditDict  # = FleetAudit(klipper_path, moonraker_url, klippy_log, hosts)
    config: ConfigStateDict  # = ConfigState(config_dir, files, read, includes)
    system: SystemStateDict


def parse_system_state(raw: Mapping[str, Any]) -> SystemStateDict:
    """The probe's ``system`` part; a missing answer reads as nothing installed, running or found
    (the provision then does the step, whose own operation reads the Pi again)."""
    shown = [line for line in raw.get("systemd") or [] if isinstance(line, str)]
    packages = as_dict(raw.get("packages"))
    files = as_dict(raw.get("files"))
    return {
        "hostname": as_str(raw.get("hostname")),
        "timezone": as_str(raw.get("timezone")),
        "zone_file": raw.get("zone_file") is True,
        "packages": {str(name): as_str(state)[:2] in ("ii", "hi") for name, state in packages.items()},
        "running": SystemdStatus().process(shown),
        "enabled": SystemdEnabled().process(shown),
        "files": {str(path): _file_state(value) for path, value in files.items()},
    }


def _file_state(value: Any) -> FileStateDict | None:
    if not isinstance(value, dict):
        return None
    return {"sha1": as_str(value.get("sha1")), "mode": as_str(value.get("mode")), "user": as_str(value.get("user")),
            "group": as_str(value.get("group"))}


def parse_provision_state(document: Mapping[str, Any]) -> ProvisionStateDict:
    return {"audit": parse_fleet_audit(as_dict(document.get("audit"))), "config": parse_config_state(document),
            "system": parse_system_state(as_dict(document.get("system")))}


class ProvisionState(FactBase[ProvisionStateDict]):
    """
    Returns ``FleetAudit``, ``ConfigState`` and the system's state a provision decides from
    (hostname, timezone, packages, units, files) from ONE command (one Python process on the Pi),
    so that a converged provision costs one SSH command instead of pyinfra's own Hostname,
    Timezone, DebPackages, SystemdStatus, SystemdEnabled, File... round trips.

    .. code:: python

        # pyinfra INVENTORY fact pyinfra_ratos.facts.provision_state.ProvisionState packages=git
        {"audit": {...}, "config": {"backup": {...}, "files": {...}},
         "system": {"hostname": "vcore-01", "timezone": "Europe/Copenhagen", "zone_file": True,
                    "packages": {"git": True}, "running": {"klipper.service": True},
                    "enabled": {"klipper.service": True},
                    "files": {"/etc/udev/rules.d/98-pyinfra-ratos.rules": {"sha1": "...", "mode": "644",
                                                                         "user": "root", "group": "root"}}}}
    """

    @override
    def command(
        self,
        config_dir: str = "~/printer_data/config",
        files: Sequence[str] = (),
        read: Sequence[str] = (),
        includes: Sequence[str] = (),
        packages: Sequence[str] = (),
        units: Sequence[str] = (),
        zone: str = "",
        system_files: Sequence[str] = (),
        klipper_path: str = "~/klipper",
        moonraker_url: str = DEFAULT_URL,
        klippy_log: str = DEFAULT_LOG,
        hosts: str | Iterable[str] = (),
        timeout: float = 3.0,
    ) -> StringCommand:
        return probe_command("provision", {
            "audit": FleetAudit.probe_args(klipper_path, moonraker_url, klippy_log, hosts, timeout),
            "config": config_state_args(config_dir, files, read, includes),
            "system": {"packages": list(packages), "units": list(units), "zone": zone,
                       "files": list(system_files)},
        })

    @override
    def process(self, output: list[str]) -> ProvisionStateDict:
        return parse_provision_state(json_document(output))

    @staticmethod
    def default() -> ProvisionStateDict:
        return parse_provision_state({})
