"""The ``boards`` list of a host's data, parsed once for every deploy (pure Python).

Each entry: ``board`` (catalog id), ``mcu_name``, ``port``, ``serial``, ``canbus_uuid``,
``kconfig`` (see ``printer_model`` and ``firmware_settings`` for their meaning). Every value is
matched whole; two boards of one host never share an mcu_name, a port, a serial or a CAN UUID;
Kconfig overrides are rendered here already, so a bad one fails before any Pi is touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.data.rules import Rule, a_type, did_you_mean, field_name, shown, text
from pyinfra_ratos.data.rules import problems as value_problems
from pyinfra_ratos.firmware.kconfig import KconfigError, OverrideValue, render_fragment
from pyinfra_ratos.printer.klipper_config import value_problem

BOARD_KEYS = ("board", "mcu_name", "port", "serial", "canbus_uuid", "kconfig")
MAX_BOARDS = 32
# a USB port path: bus-port[.port...] (Linux allows 5 hubs below a root port); matched whole
PORT_RE = re.compile(r"[1-9][0-9]{0,2}-[1-9][0-9]?(\.[1-9][0-9]?){0,5}")
_SERIAL = re.compile(r"/[A-Za-z0-9_./:+@=,-]{1,254}")
_KCONFIG_KEY = re.compile(r"(CONFIG_)?[A-Z0-9_]{1,64}")
# what USB strings and the like need, and nothing make (it reads .config: '$' expands there),
# kconfiglib or a shell would read as syntax
_KCONFIG_TEXT = re.compile(r"[A-Za-z0-9 _.,:/+@=()%-]{0,255}")
BOARD_RULES: dict[str, Rule] = {
    "port": Rule(text(PORT_RE.pattern, "a USB port path"),
                 "write it like \"1-1.3\" (see lsusb -t or /dev/serial/by-path on the Pi)", optional=True),
    "mcu_name": Rule(text(r"[a-z0-9_]{1,32}", "a Klipper MCU name"),
                     "lower-case letters, digits and '_' (e.g. toolboard_t0)", optional=True),
    "canbus_uuid": Rule(text(r"[0-9a-f]{12}", "a CAN UUID"),
                        "set the 12 lower-case hex digits of canbus_query.py or Katapult's flashtool -q (e.g. \"a1b2c3d4e5f6\")",
                        optional=True),
}
# boards that share one of these are the same board, twice
UNIQUE_BOARD_KEYS = ("mcu_name", "port", "serial", "canbus_uuid")


@dataclass(frozen=True)
class BoardSpec:
    """One entry of ``boards``, as both deploys read it."""

    board: Board
    mcu_name: str
    port: str | None = None
    serial: str | None = None
    canbus_uuid: str | None = None
    kconfig: Mapping[str, OverrideValue] = field(default_factory=dict)

    @property
    def section(self) -> str:
        """Its printer.cfg section: ``[mcu]`` or ``[mcu <name>]``."""
        return "mcu" if self.mcu_name == "mcu" else f"mcu {self.mcu_name}"


def parse_boards(raw: Any, catalog: Mapping[str, Board]) -> tuple[list[BoardSpec], list[tuple[str, str]]]:
    """The ``boards`` list as board specs, and its problems as ``(field, "<problem>. Fix: <fix>")``.

    mcu_name defaults: ``rpi`` for the host MCU, ``toolboard_t<n>`` for toolboards in order,
    ``mcu`` for the first other board (the control board), the board id for any further one.
    Two boards with the same mcu_name, port, serial or canbus_uuid are refused.
    """
    problems: list[tuple[str, str]] = []
    example = '[{"board": "btt-octopus-pro-h723-11"}, {"board": "btt-ebb42-12", "mcu_name": "toolboard_t0"}]'
    if not isinstance(raw, (list, tuple)) or not raw:
        return [], [("boards", f"missing or not a list. Fix: set boards = {example}")]
    if len(raw) > MAX_BOARDS:
        return [], [("boards", f"{len(raw)} boards. Fix: list a printer's boards, at most {MAX_BOARDS}")]
    entries: list[BoardSpec] = []
    seen: dict[tuple[str, Any], int] = {}  # (key, value) -> first board's index
    toolboards = 0
    for index, item in enumerate(raw):
        where = f"boards[{index}]"
        if not isinstance(item, Mapping) or "board" not in item:
            problems.append((where, f"{shown(item)} is not a table with a 'board' key. "
                                    "Fix: write {\"board\": \"<catalog id>\"}"))
            continue
        for key in sorted(set(item) - set(BOARD_KEYS), key=shown):
            problems.append((f"{where}.{field_name(key)}",
                             f"unknown board key. Fix: {did_you_mean(key, BOARD_KEYS)}"))
        board_id = item["board"]
        board = catalog.get(board_id) if isinstance(board_id, str) else None
        if board is None:
            problems.append((f"{where}.board", f"{shown(board_id)} is not in the board catalog. "
                                               f"Fix: {_catalog_hint(board_id, catalog)}"))
        # every field is checked, known board or not: all the problems of an entry at once
        count = len(problems)
        port, serial, uuid = item.get("port"), item.get("serial"), item.get("canbus_uuid")
        mcu_name = _mcu_name(item, board, toolboards, entries)
        given = {"port": port, "canbus_uuid": uuid, "mcu_name": mcu_name}  # None: not given (or no default)
        problems += [(f"{where}.{key}", text) for key, text in value_problems(BOARD_RULES, given)]
        problem = _serial_problem(serial)
        if problem:
            problems.append((f"{where}.serial", f"{problem}. Fix: write a path such as "
                                                "/dev/serial/by-id/usb-Klipper_stm32h723xx_...-if00"))
        overrides = item.get("kconfig", {})
        problem = _kconfig_problem(overrides)
        if problem:
            problems.append((f"{where}.kconfig", problem))
        if len(problems) == count:  # every value is valid: compare them with the other boards'
            values = {"mcu_name": mcu_name, "port": port, "serial": serial, "canbus_uuid": uuid}
            for key in UNIQUE_BOARD_KEYS:
                first = seen.setdefault((key, values[key]), index) if values[key] is not None else index
                if first != index:
                    problems.append((f"{where}.{key}", f"{shown(values[key])} is boards[{first}]'s {key} too: two "
                                                       f"boards cannot share it. Fix: give each board its own {key}"))
        if board is None:
            continue
        toolboards += board.toolboard
        if board.interface in ("can", "usbcan") and uuid is None:
            what = "a CAN board" if board.interface == "can" else "a USB-to-CAN bridge (it is a node of its bus)"
            problems.append((f"{where}.canbus_uuid", f"missing for {what}. Fix: {BOARD_RULES['canbus_uuid'].fix}"))
        if board.interface == "can" and port is not None:
            problems.append((f"{where}.port", f"{board.id} is on CAN, not USB: it is found by its canbus_uuid. "
                                              "Fix: remove port"))
        if board.interface not in ("can", "usbcan") and uuid is not None:
            problems.append((f"{where}.canbus_uuid", f"{board.id} is a {board.interface} board, not a CAN node. "
                                                     "Fix: remove canbus_uuid (or use the board's CAN variant)"))
        if len(problems) > count:
            continue
        try:
            render_fragment(board, overrides)  # renders now, so a bad override fails before any Pi is touched
        except KconfigError as error:
            message = str(error) if "Fix:" in str(error) else f"{error}. Fix: correct or remove that Kconfig override"
            problems.append((f"{where}.kconfig", message))
            continue
        entries.append(BoardSpec(board, str(mcu_name), port, serial, uuid, dict(overrides)))
    if entries and "mcu" not in [e.mcu_name for e in entries]:
        problems.append(("boards", "no board is the main 'mcu'. Fix: set mcu_name = \"mcu\" on the control board"))
    return entries, problems


def _catalog_hint(board_id: Any, catalog: Mapping[str, Board]) -> str:
    close = did_you_mean(board_id, catalog, "")
    return f"{close + ' Else use' if close else 'use'} a catalog id (pyinfra_ratos/firmware/boards/*.toml) or add a board file"


def _serial_problem(serial: Any) -> str | None:
    if serial is None:
        return None
    if not isinstance(serial, str):
        return f"{shown(serial)} is {a_type(serial)}, not a device path"
    if len(serial) <= 255 and _SERIAL.fullmatch(serial):
        return None
    if len(serial) <= 255 and value_problem(serial):
        return value_problem(serial)
    return f"{shown(serial)} is not an absolute device path"


def _mcu_name(item: Mapping[str, Any], board: Board | None, toolboards: int, entries: Sequence[BoardSpec]) -> Any:
    if "mcu_name" in item:
        return item["mcu_name"]
    if board is None:
        return None
    if board.interface == "linux":
        return "rpi"
    if board.toolboard:
        return f"toolboard_t{toolboards}"
    return "mcu" if not any(e.mcu_name == "mcu" for e in entries) else board.id.replace("-", "_")


def _kconfig_problem(overrides: Any) -> str | None:
    """What makes ``kconfig`` unusable before rendering (the renderer checks the symbols against the board)."""
    if not isinstance(overrides, Mapping):
        return (f"{shown(overrides)} is not a table. "
                "Fix: write Kconfig symbols, e.g. {\"CANBUS_FREQUENCY\": 1000000}")
    for key, value in overrides.items():
        if not isinstance(key, str) or not _KCONFIG_KEY.fullmatch(key):
            return (f"{shown(key)} is not a Kconfig symbol. "
                    "Fix: upper-case letters, digits and '_', like USB_SERIAL_NUMBER or CONFIG_USB_SERIAL_NUMBER")
        if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
            return (f"override '{key}': {shown(value)} does not fit in 64 bits. "
                    "Fix: the value of a Kconfig int or hex symbol")
        if isinstance(value, str) and not _KCONFIG_TEXT.fullmatch(value):
            return (f"override '{key}': {shown(value)} is not plain text. Fix: a Kconfig string of at most 255 "
                    "letters, digits, spaces and _ . , : / + @ = ( ) % -")
    return None
