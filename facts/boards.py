"""Controller boards on the Pi's USB ports: what each is running, and which catalog board it is."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from pyinfra_ratos.firmware.catalog import Board, load_catalog

from .probe import as_dict, as_int, as_str, json_document, probe_command

# VID:PID -> mode. A board keeps its USB port path across modes, which is why boards are keyed by it.
USB_MODES = {
    "1d50:614e": "klipper",
    "1d50:6177": "katapult",
    "1d50:606f": "can-bridge",
    "0483:df11": "dfu",
    "2e8a:0003": "rp2040-boot",
    "2e8a:000f": "rp2040-boot",  # RP2350
}
# Bootloaders we recognise but do not drive: listed, in mode "unknown"
OTHER_BOOTLOADERS = frozenset({"1209:beba", "1eaf:0003"})
# Klipper built with custom USB ids (CONFIG_USB_VENDOR_ID) still names itself in its strings
MANUFACTURER_MODES = {"klipper": "klipper", "katapult": "katapult", "canboot": "katapult"}
DECLARED_MODES = ("klipper", "dfu", "rp2040_boot")
BOOTROM_MCUS = {"2e8a:0003": "rp2040", "2e8a:000f": "rp2350"}
# Toolboards built by RatOS carry "<board id>-t0", "-t1" as serial
_TOOLBOARD_SUFFIX = re.compile(r"-t\d+$")
_BY_ID = re.compile(r"^usb-(?P<maker>[^_]+)_(?P<mcu>[^_]+)_(?P<serial>.+)-if\d+\Z")
_MCU_NAME = re.compile(r"^[a-z0-9]+\Z")
_SECTOR_GROUP = re.compile(r"^\s*(\d+)\s*\*\s*(\d+)\s*([ KMB]?)([a-g])\s*\Z")


class DfuSector(TypedDict):
    start: int
    size: int
    attrs: str  # DfuSe memory type letter: a..g = readable | erasable | writeable bits


class DfuFlashMap(TypedDict):
    name: str
    base: int
    sectors: list[DfuSector]


class BoardInfo(TypedDict):
    port: str
    vid_pid: str
    mode: str
    manufacturer: str
    product: str
    serial: str
    mcu: str | None
    busnum: int | None
    devnum: int | None
    tty: str | None
    by_id: str | None
    by_path: str | None
    ratos_link: str | None
    netdev: str | None  # the CAN interface of a USB-to-CAN bridge ("can0")
    dfu_flash_map: DfuFlashMap | None
    board_id: str | None
    board_candidates: list[str]


def parse_dfu_flash_map(text: str | None) -> DfuFlashMap | None:
    """``@Internal Flash  /0x08000000/04*016Kg,01*064Kg`` -> name, base and one entry per sector."""
    if not text or not text.startswith("@"):
        return None
    parts = text[1:].split("/")
    if len(parts) < 3:
        return None
    try:
        address = base = int(parts[1].strip(), 0)
    except ValueError:
        return None
    sectors: list[DfuSector] = []
    for group in parts[2].split(","):
        match = _SECTOR_GROUP.match(group)
        if not match:
            return None
        count, size, unit, letter = match.groups()
        size_bytes = int(size) * {"K": 1024, "M": 1024 * 1024}.get(unit, 1)
        for _ in range(int(count)):
            sectors.append({"start": address, "size": size_bytes, "attrs": letter})
            address += size_bytes
    return {"name": parts[0].strip(), "base": base, "sectors": sectors}


def _same_flash(a: DfuFlashMap | None, b: DfuFlashMap | None) -> bool:
    # the ROM pads names with varying spaces: compare the layout, not the text
    return a is not None and b is not None and (a["base"], a["sectors"]) == (b["base"], b["sectors"])


def _mode(vid_pid: str, manufacturer: str, catalog_modes: Mapping[str, str]) -> str:
    if vid_pid in USB_MODES:
        return USB_MODES[vid_pid]
    if vid_pid in catalog_modes:
        return catalog_modes[vid_pid]
    return MANUFACTURER_MODES.get(manufacturer.lower(), "unknown")


def _catalog_modes(catalog: Mapping[str, Board]) -> dict[str, str]:
    return {usb_id: key.replace("_", "-") for board in catalog.values() for key, usb_id in board.usb.items()}


def _interesting(vid_pid: str, manufacturer: str, catalog_modes: Mapping[str, str]) -> bool:
    return (
        vid_pid in USB_MODES or vid_pid in OTHER_BOOTLOADERS or vid_pid in catalog_modes
        or manufacturer.lower() in MANUFACTURER_MODES
    )


def _link(links: Mapping[str, Any], folder: str, prefix: str, tty: str | None) -> str | None:
    if tty is None:
        return None
    names = sorted(name for name, target in as_dict(links.get(folder)).items() if target == tty)
    return f"{prefix}/{names[0]}" if names else None


def _candidates(
    mode: str, mcu: str | None, flash_map: DfuFlashMap | None, catalog: Mapping[str, Board]
) -> list[str]:
    """Catalog boards this device can be: same MCU (or DFU flash layout), and the mode declared."""
    key = mode.replace("-", "_")
    found = []
    for board in catalog.values():
        # a boot ROM is the chip's, Klipper over USB is the build's: both are in the board's
        # usb table; Katapult and CAN bridges are what the owner installed, on any board
        if key in DECLARED_MODES and key not in board.usb:
            continue
        if mcu is not None and board.mcu != mcu:
            continue
        if mode == "dfu" and flash_map is not None and not _same_flash(
            flash_map, parse_dfu_flash_map(board.dfu_flash_map)
        ):
            continue
        if mcu is None and not (mode == "dfu" and flash_map is not None):
            continue  # nothing to match on
        found.append(board.id)
    return sorted(found)


def _ratos_board(serial: str, mcu: str | None, catalog: Mapping[str, Board]) -> str | None:
    for candidate in (serial, _TOOLBOARD_SUFFIX.sub("", serial)):
        board = catalog.get(candidate)
        if board is not None and (mcu is None or board.mcu == mcu):
            return board.id
    return None


def parse_board(port: str, raw: Mapping[str, Any], links: Mapping[str, Any],
                catalog: Mapping[str, Board]) -> BoardInfo | None:
    """One device from the probe's sysfs reading, or None when it is not a board of interest."""
    attrs = as_dict(raw.get("attrs"))
    vid_pid = f"{as_str(attrs.get('idVendor')).lower()}:{as_str(attrs.get('idProduct')).lower()}"
    manufacturer, product, serial = (as_str(attrs.get(k)) for k in ("manufacturer", "product", "serial"))
    catalog_modes = _catalog_modes(catalog)
    if not _interesting(vid_pid, manufacturer, catalog_modes):
        return None
    mode = _mode(vid_pid, manufacturer, catalog_modes)
    interfaces = as_dict(raw.get("interfaces"))
    first = as_dict(interfaces.get("1.0") or (interfaces[min(interfaces)] if interfaces else {}))
    ttys = [t for intf in interfaces.values() for t in (as_dict(intf).get("tty") or [])]
    nets = [n for intf in interfaces.values() for n in (as_dict(intf).get("net") or [])]
    tty = ttys[0] if ttys else None
    by_id = _link(links, "serial/by-id", "/dev/serial/by-id", tty)
    flash_map = parse_dfu_flash_map(as_str(first.get("interface"))) if mode == "dfu" else None

    mcu: str | None = None
    if mode in ("klipper", "katapult", "can-bridge"):
        if _MCU_NAME.match(product):
            mcu = product
        elif by_id and _BY_ID.match(by_id.rsplit("/", 1)[1]):
            mcu = _BY_ID.match(by_id.rsplit("/", 1)[1])["mcu"]  # type: ignore[index]
    elif mode == "rp2040-boot":
        mcu = BOOTROM_MCUS.get(vid_pid)
    candidates = _candidates(mode, mcu, flash_map, catalog)
    if mcu is None and mode == "dfu":
        mcus = {catalog[c].mcu for c in candidates}
        mcu = mcus.pop() if len(mcus) == 1 else None
    board_id = _ratos_board(serial, mcu, catalog) if mode in ("klipper", "katapult", "can-bridge") else None
    if board_id is None and len(candidates) == 1:
        board_id = candidates[0]
    return {
        "port": port,
        "vid_pid": vid_pid,
        "mode": mode,
        "manufacturer": manufacturer,
        "product": product,
        "serial": serial,
        "mcu": mcu,
        "busnum": as_int(attrs.get("busnum")),
        "devnum": as_int(attrs.get("devnum")),
        "tty": f"/dev/{tty}" if tty else None,
        "by_id": by_id,
        "by_path": _link(links, "serial/by-path", "/dev/serial/by-path", tty),
        "ratos_link": _link(links, "RatOS", "/dev/RatOS", tty),
        "netdev": nets[0] if nets else None,
        "dfu_flash_map": flash_map,
        "board_id": board_id,
        "board_candidates": candidates,
    }


def parse_attached_boards(raw: Mapping[str, Any], catalog: Mapping[str, Board] | None = None) -> dict[str, BoardInfo]:
    """The boards in the probe's output (``remote.probe_boards``), keyed by USB port path."""
    catalog = default_catalog() if catalog is None else catalog
    links = as_dict(raw.get("links"))
    boards: dict[str, BoardInfo] = {}
    for port, device in sorted(as_dict(raw.get("devices")).items()):
        info = parse_board(port, as_dict(device), links, catalog)
        if info is not None:
            boards[port] = info
    return boards


@functools.lru_cache(maxsize=1)
def default_catalog() -> dict[str, Board]:
    return load_catalog()


class AttachedBoards(FactBase[dict[str, BoardInfo]]):
    """
    Returns the controller boards on the Pi's USB, keyed by USB port path, read from sysfs and
    ``/dev`` (no ``lsusb`` parsing). Hubs and devices that are no Klipper board, bootloader or
    MCU boot ROM (cameras, keyboards) are left out. ``mode`` follows the VID:PID (domain.md §2);
    ``mcu`` comes from the product string (Klipper, Katapult), the by-id name, the boot ROM's id
    (RP2040) or the DfuSe flash layout when only one MCU in the catalog has it.
    ``board_id`` is the RatOS serial (``<board id>`` or ``<board id>-t0``) when it names a catalog
    board, else the only candidate; ``board_candidates`` are the catalog boards with that MCU
    that have this USB mode.

    .. code:: python

        {
            "1-1.3": {
                "port": "1-1.3", "vid_pid": "0483:df11", "mode": "dfu",
                "manufacturer": "STMicroelectronics", "product": "STM32  BOOTLOADER",
                "serial": "800DA10DF712", "mcu": "stm32h723xx", "busnum": 1, "devnum": 3,
                "tty": None, "by_id": None, "by_path": None, "ratos_link": None, "netdev": None,
                "dfu_flash_map": {"name": "Internal Flash", "base": 134217728,
                                  "sectors": [{"start": 134217728, "size": 131072, "attrs": "g"}, ...]},
                "board_id": None,
                "board_candidates": ["btt-kraken", "btt-octopus-pro-h723-11", ...],
            },
        }
    """

    @override
    def command(self) -> StringCommand:
        return probe_command("boards")

    @override
    def process(self, output: list[str]) -> dict[str, BoardInfo]:
        return parse_attached_boards(json_document(output))

    @staticmethod
    def default() -> dict[str, BoardInfo]:
        return {}
