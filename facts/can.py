"""The printer's CAN bus: its interface, the nodes its config expects, and whether each answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from .klipper import DEFAULT_LOG, DEFAULT_URL
from .probe import as_dict, as_int, as_str, json_document, probe_command


class CanInterfaceDict(TypedDict):
    present: bool
    state: str | None       # the kernel's operstate: "up", "down"...
    bitrate: int | None
    txqueuelen: int | None


class CanNodeDict(TypedDict):
    uuid: str
    mcu_name: str | None    # Klipper's name of the MCU ("mcu", "toolboard_t0"); None: not in the config
    interface: str
    mcu_version: str | None  # klippy talks to it (Moonraker's mcu_version)
    app: str | None         # what it answered a query with: "Klipper" | "Katapult"; None: not found
    answers: bool | None    # True: klippy or a query heard it; False: a query was sent, no answer; None: unknown
    why_unknown: str        # why no query was sent, when answers is None


class CanBusDict(TypedDict):
    interfaces: dict[str, CanInterfaceDict]
    nodes: dict[str, CanNodeDict]  # by UUID


def _mcu_name(section: Any) -> str | None:
    if not isinstance(section, str):
        return None
    return "mcu" if section == "mcu" else section[4:] if section.startswith("mcu ") else None


def parse_can_bus(raw: Mapping[str, Any]) -> CanBusDict:
    """The ``can`` probe's output (``remote.probe_can``) as typed values; ``{}`` shapes when absent."""
    interfaces: dict[str, CanInterfaceDict] = {}
    for name, info in as_dict(raw.get("interfaces")).items():
        info = as_dict(info)
        interfaces[str(name)] = {"present": bool(info.get("present")), "state": as_str(info.get("state")) or None,
                                 "bitrate": as_int(info.get("bitrate")), "txqueuelen": as_int(info.get("txqueuelen"))}
    queries = as_dict(raw.get("queries"))
    nodes: dict[str, CanNodeDict] = {}
    for node in raw.get("nodes") or []:
        node = as_dict(node)
        uuid, interface = as_str(node.get("uuid")).lower(), as_str(node.get("interface")) or "can0"
        if not uuid:
            continue
        version = as_str(node.get("mcu_version")) or None
        query = as_dict(queries.get(interface))
        found = {as_str(f.get("uuid")): as_str(f.get("app")) for f in map(as_dict, query.get("found") or [])}
        answers: bool | None
        if version:
            answers, app = True, "Klipper"
        elif query.get("sent"):
            answers, app = uuid in found, found.get(uuid)
        else:
            answers, app = None, None
        nodes[uuid] = {"uuid": uuid, "mcu_name": _mcu_name(node.get("section")), "interface": interface,
                       "mcu_version": version, "app": app, "answers": answers,
                       "why_unknown": as_str(query.get("refusal")) if answers is None else ""}
    return {"interfaces": interfaces, "nodes": nodes}


class CanBus(FactBase[CanBusDict]):
    """
    Returns the printer's CAN: each interface's state, bitrate and txqueuelen, and every node the
    printer's config expects (``canbus_uuid`` per ``[mcu ...]``, plus ``uuids``): whether it
    answers, with which application, and its ``mcu_version`` through Moonraker. Unassigned nodes
    are asked for (CMD_QUERY_UNASSIGNED) only when that is safe: the printer idle and at most one
    node that klippy does not talk to (``canbus.can_discovery_refusal``). Part of ``FleetAudit``.

    .. code:: python

        {"interfaces": {"can0": {"present": True, "state": "up", "bitrate": 1000000, "txqueuelen": 128}},
         "nodes": {"65efaa4cf65d": {"mcu_name": "toolboard_t0", "interface": "can0", "answers": True,
                                    "app": "Klipper", "mcu_version": "v0.13.0-3-g4d1f2a3b5", ...}}}
    """

    @override
    def command(self, config_dir: str = "~/printer_data/config", interface: str = "can0", uuids: tuple[str, ...] = (),
                moonraker_url: str = DEFAULT_URL) -> StringCommand:
        return probe_command("can", {"can": can_args(config_dir, interface, uuids), "moonraker_url": moonraker_url,
                                     "klippy_log": DEFAULT_LOG})

    @override
    def process(self, output: list[str]) -> CanBusDict:
        return parse_can_bus(json_document(output))

    @staticmethod
    def default() -> CanBusDict:
        return parse_can_bus({})


def can_args(config_dir: str = "~/printer_data/config", interface: str = "can0",
             uuids: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """The probe's ``can`` arguments (shared with the audit that bundles it)."""
    return {"config_dir": config_dir, "interface": interface, "uuids": [u.lower() for u in uuids]}
