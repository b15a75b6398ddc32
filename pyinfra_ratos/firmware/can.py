"""A printer's CAN boards, decided from the ``CanBus`` fact: where each node is, and the flash order.

Pure Python. The plan finds a CAN toolboard by its node (``<interface>/<uuid>``) among the attached
devices, as it finds a USB board by its port, so the flash methods see one shape; the mode says what
the bus said of it (``can-klipper``, ``can-katapult``, ``can-silent``, ``can-unknown``, ``can-down``)
and ``reason`` why it cannot be flashed now. A printer flashes its CAN toolboards first, its USB
boards next and its USB-to-CAN bridge last: resetting the bridge takes the bus down (Arksine,
katapult issue #83; Klipper docs/CANBUS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
# flash order by catalog interface: toolboards on the bus, then USB boards and the host, the bridge last
FLASH_RANK = {"can": 0, "usb": 1, "linux": 1, "usbcan": 2}


def can_attached(can: Mapping[str, Any], wanted: Iterable[tuple[str, str | None, str]] = (),
                 bridged: bool = False) -> dict[str, dict[str, Any]]:
    """The CAN nodes as attached devices keyed ``<interface>/<uuid>``.

    ``can``: the ``CanBus`` fact; ``wanted``: ``(uuid, mcu_name, interface)`` of the inventory's CAN
    boards (a node missing from the printer's config is still named, as not known to the bus);
    ``bridged``: the bus runs on a USB-to-CAN bridge, whose firmware sets its speed (Linux's bitrate
    is ignored), else the interface's bitrate is the bus speed (``bitrate`` of each entry).
    """
    interfaces = can.get("interfaces") or {}
    nodes = dict(can.get("nodes") or {})
    for uuid, mcu_name, interface in wanted:
        nodes.setdefault(uuid, {"uuid": uuid, "mcu_name": mcu_name, "interface": interface, "answers": None,
                                "app": None, "mcu_version": None,
                                "why_unknown": "it is not in the printer's config yet (no canbus_uuid for it)"})
    entries: dict[str, dict[str, Any]] = {}
    for uuid, node in nodes.items():
        interface = node.get("interface") or "can0"
        info = interfaces.get(interface) or {}
        name = node.get("mcu_name")
        what = f"CAN node {name} ({uuid})" if name else f"CAN node {uuid}"
        entry: dict[str, Any] = {"port": f"{interface}/{uuid}", "uuid": uuid, "interface": interface,
                                 "mcu_name": name, "app": node.get("app"), "vid_pid": None, "reason": None,
                                 "bitrate": None if bridged else info.get("bitrate")}
        if info and (not info.get("present") or info.get("state") != "up"):
            state = info.get("state") if info.get("present") else "absent"
            entry.update(mode="can-down", reason=f"{what}: {interface} is {state or 'not up'}: bring the interface "
                                                 "up (or the USB-to-CAN bridge back) and rerun")
        elif node.get("answers") is True:
            entry["mode"] = "can-katapult" if node.get("app") == "Katapult" else "can-klipper"
        elif node.get("answers") is False:
            entry.update(mode="can-silent", reason=f"{what} does not answer on {interface} (klippy cannot reach it "
                                                   "and it did not answer a query for unassigned nodes): check its "
                                                   "power, CAN wiring and termination; its printer was left as it was")
        else:
            entry.update(mode="can-unknown", reason=f"cannot tell whether {what} answers on {interface}: "
                                                    f"{node.get('why_unknown') or 'no query was made'}")
        entries[entry["port"]] = entry
    return entries


def bitrate_problem(entry: Mapping[str, Any], constants: Mapping[str, Any]) -> str | None:
    """Why an image must not go to the node: it runs the bus at another speed than the interface
    (the node would never be heard again, not even to be given its old firmware back)."""
    wanted, bus = constants.get("CANBUS_FREQUENCY"), entry.get("bitrate")
    if wanted is None or bus is None or str(wanted) == str(bus):
        return None
    return (f"the image runs the CAN bus at {wanted} bit/s but {entry.get('interface')} is at {bus} bit/s: build it "
            f"for {bus} (the board entry's kconfig CANBUS_FREQUENCY) or set the interface's bitrate")


def flash_order(items: Sequence[T], interface_of: Callable[[T], str | None]) -> list[T]:
    """``items`` in the order a printer's boards are flashed (stable within a rank)."""
    return sorted(items, key=lambda item: FLASH_RANK.get(interface_of(item) or "usb", 1))
