"""Scenario files: a TOML description of a virtual farm, validated before anything starts.

.. code:: toml

    [[pi]]
    name = "vcore-01"            # also the hostname
    state = "standby"            # print_stats.state
    network = "online"           # online|offline
    fresh = false                # true: a freshly flashed SD card (no ~/klipper, no calibration)
    klipper = "active"           # klipper.service: active|inactive|activating|deactivating
    klippy = "ready"             # ready|shutdown (after M112: a running print reads paused)
    moonraker_fault = "none"     # none|503 (Klippy Host not connected)|hang (never answers)
    moonraker_hang_seconds = 0   # with hang: answer this many seconds late; 0 = never
    arch = "armhf"               # armhf (uname -m: armv7l) | aarch64: what a host MCU must be built for
    [[pi.boards]]
    board = "btt-octopus-pro-h723-11"
    mode = "klipper"             # bootloader state at start
    firmware = "old"             # old|current|blank
    faults = []
    bootloader = "auto"          # where the 1200-baud request leads: auto|dfu|katapult
    katapult_start = "0x08008000"   # optional: the application start Katapult reports

Every error names the Pi, the key and the allowed values, so a typo is fixed in one go.
``state``, ``klipper``, ``klippy``, ``moonraker_fault`` and ``moonraker_hang_seconds`` are also
knobs a test flips at run time (:mod:`pyinfra_ratos.sim.knobs`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRINT_STATES = ("standby", "printing", "paused", "complete", "cancelled", "error")
NETWORKS = ("online", "offline")
BOARD_MODES = ("klipper", "dfu", "katapult", "can-bridge", "rp2040-boot", "absent")
FIRMWARES = ("old", "current", "blank")
FAULTS = (
    "dfu-exit-74",
    "dfu-exit-251",
    "no-reenumerate",
    "stuck-dfu",
    "ignore-bootloader-request",
    "slow-erase",
    "corrupt-write",
    "no-return-after-leave",  # RP2040 BOOTSEL: REBOOT accepted, never back on USB
    # and "transfer-error-block-N" (RP2040 BOOTSEL: the N-th PICOBOOT WRITE fails)
    "katapult-transfer-error",  # also katapult-transfer-error@N: the block that breaks (default 3)
    "katapult-wrong-start",
    "can-silent",            # a CAN node that answers nothing (unpowered, a broken wire)
    "can-bus-off-on-query",  # a CAN node pushed into bus-off by a query two nodes answer at once
    "bridge-never-back",     # a USB-to-CAN bridge asked for its bootloader resets back into its old
                             # application, never into the bootloader
)
BOOTLOADERS = ("auto", "dfu", "katapult")  # where Klipper's 1200-baud request leads
SERVICE_STATES = ("active", "inactive")
KLIPPER_STATES = ("active", "inactive", "activating", "deactivating")  # systemd ActiveState
KLIPPY_STATES = ("ready", "shutdown")
MOONRAKER_FAULTS = ("none", "503", "hang")
MODELS = ("v-core-3", "v-core-4", "v-minion")
# the Pi's userland -> what its `uname -m` stand-in answers
ARCHES = {"armhf": "armv7l", "aarch64": "aarch64"}
HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MCU_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
USB_PORT_RE = re.compile(r"^[1-9][0-9]?-[1-9][0-9]?(\.[1-9][0-9]?){0,4}$")


class ScenarioError(ValueError):
    """A scenario file that cannot describe a farm; the message says where and how to fix it."""


@dataclass(frozen=True)
class BoardSpec:
    board: str
    mode: str = "klipper"
    firmware: str = "old"
    faults: tuple[str, ...] = ()
    mcu_name: str = "mcu"  # Klipper's object name: "mcu" or the name after "mcu " (e.g. "toolboard_t0")
    port: str = ""  # USB port path, e.g. "1-1.3"
    serial: str = ""  # USB serial string; "" -> a chip-UID style serial
    bootloader: str = "auto"  # auto: katapult when the catalog board has Katapult (flash_methods), else dfu
    katapult_start: int | None = None  # the application start Katapult reports; None: the board's
    canbus_uuid: str = ""  # a CAN toolboard's or a bridge's node; "" -> derived from the Pi and port


@dataclass(frozen=True)
class PiSpec:
    name: str
    state: str = "standby"
    network: str = "online"
    boards: tuple[BoardSpec, ...] = ()
    klipper: str = "active"
    moonraker: str = "active"
    klipper_owner: str = "pi"  # "root": the dubious-ownership trap of a checkout made by sudo
    model: str = "v-core-3"  # RatOS printer model the Pi's printer.cfg includes
    allowed_services: tuple[str, ...] = ("klipper", "moonraker", "klipper-mcu", "crowsnest")
    # A freshly flashed RatOS SD card: no ~/klipper, RatOS's initial printer.cfg (no SAVE_CONFIG),
    # klipper.service present but disabled and stopped (nothing configured it yet).
    fresh: bool = False
    group: str = "pis"  # the inventory group (list) the Pi is written into, e.g. "canary"
    checkout: str = "current"  # ~/klipper at the "current" commit or the "old" release (v0.12.0)
    klippy: str = "ready"  # "shutdown": klippy after M112 (see sim.knobs)
    moonraker_fault: str = "none"  # "503": lost klippy; "hang": never answers
    moonraker_hang_seconds: float = 0  # with "hang": answer this late; 0 = never
    arch: str = "armhf"  # "aarch64": a 64-bit Raspberry Pi OS (uname -m and the host MCU it runs)


@dataclass(frozen=True)
class Scenario:
    pis: tuple[PiSpec, ...]
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def pi(self, name: str) -> PiSpec:
        for pi in self.pis:
            if pi.name == name:
                return pi
        raise KeyError(name)


def _check(where: str, key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ScenarioError(
            f"{where}: key '{key}' is {value!r}; allowed values: {', '.join(allowed)}"
        )
    return value


def _check_keys(where: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            raise ScenarioError(
                f"{where}: unknown key '{key}'; allowed keys: {', '.join(allowed)}"
            )


def _default_port(index: int) -> str:
    # Boards hang off the Pi's internal hub (1-1) the way a Pi 4 numbers its USB ports.
    return f"1-1.{index + 1}"


def _board(
    where: str, index: int, raw: Any, board_known: Callable[[str], bool] | None
) -> BoardSpec:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: each [[pi.boards]] entry must be a table")
    _check_keys(where, raw, ("board", "mode", "firmware", "faults", "mcu_name", "port", "serial", "bootloader",
                             "katapult_start", "canbus_uuid"))
    board = raw.get("board")
    if not isinstance(board, str) or not board:
        raise ScenarioError(f"{where}: key 'board' is required (a RatOS board id)")
    if board_known is not None and not board_known(board):
        raise ScenarioError(
            f"{where}: key 'board' is {board!r}, which is not in the board catalog; "
            "use a catalog id (see pyinfra_ratos/firmware/boards/) or add a board file"
        )
    faults = raw.get("faults", [])
    if not isinstance(faults, list):
        raise ScenarioError(f"{where}: key 'faults' must be a list; allowed values: {', '.join(FAULTS)}")
    for fault in faults:
        name, at, block = fault.partition("@") if isinstance(fault, str) else (fault, "", "")
        if at and not (name == "katapult-transfer-error" and block.isdigit()):
            raise ScenarioError(f"{where}: fault {fault!r}: only katapult-transfer-error takes @<block number>")
        if not re.fullmatch(r"transfer-error-block-[1-9][0-9]*", str(name)):
            _check(where, "faults", name, FAULTS)
    start = raw.get("katapult_start")
    try:
        katapult_start = None if start is None else int(start, 0) if isinstance(start, str) else int(start)
    except ValueError:
        raise ScenarioError(f"{where}: key 'katapult_start' is {start!r}; use an address such as "
                            "'0x08008000'") from None
    mcu_name = raw.get("mcu_name", "mcu" if index == 0 else f"toolboard_t{index - 1}")
    if not isinstance(mcu_name, str) or not MCU_NAME_RE.match(mcu_name):
        raise ScenarioError(f"{where}: key 'mcu_name' is {mcu_name!r}; use letters, digits and _")
    port = raw.get("port", _default_port(index))
    if not isinstance(port, str) or not USB_PORT_RE.match(port):
        raise ScenarioError(f"{where}: key 'port' is {port!r}; use a USB port path such as '1-1.3'")
    serial = raw.get("serial", "")
    if not isinstance(serial, str):
        raise ScenarioError(f"{where}: key 'serial' must be a string")
    uuid = raw.get("canbus_uuid", "")
    if not isinstance(uuid, str) or not re.fullmatch(r"([0-9a-f]{12})?", uuid):
        raise ScenarioError(f"{where}: key 'canbus_uuid' is {uuid!r}; use 12 lower-case hex digits")
    return BoardSpec(
        board=board,
        mode=_check(where, "mode", raw.get("mode", "klipper"), BOARD_MODES),
        firmware=_check(where, "firmware", raw.get("firmware", "old"), FIRMWARES),
        faults=tuple(faults),
        mcu_name=mcu_name,
        port=port,
        serial=serial,
        bootloader=_check(where, "bootloader", raw.get("bootloader", "auto"), BOOTLOADERS),
        katapult_start=katapult_start,
        canbus_uuid=uuid,
    )


def _group(where: str, group: Any) -> str:
    if not isinstance(group, str) or not re.match(r"^[a-z_][a-z0-9_]*$", group):
        raise ScenarioError(f"{where}: key 'group' is {group!r}; use a Python name such as canary or production")
    return group


def _pi(index: int, raw: Any, board_known: Callable[[str], bool] | None) -> PiSpec:
    if not isinstance(raw, dict):
        raise ScenarioError(f"pi[{index}]: each [[pi]] entry must be a table")
    name = raw.get("name")
    where = f"pi {name!r}" if isinstance(name, str) else f"pi[{index}]"
    _check_keys(
        where,
        raw,
        (
            "name", "state", "network", "boards", "klipper", "moonraker", "klipper_owner",
            "allowed_services", "model", "fresh", "group", "checkout", "klippy",
            "moonraker_fault", "moonraker_hang_seconds", "arch",
        ),
    )
    if not isinstance(name, str) or not HOSTNAME_RE.match(name):
        raise ScenarioError(
            f"{where}: key 'name' is {name!r}; it is the hostname: lower-case letters, digits and '-'"
        )
    boards_raw = raw.get("boards", [])
    if not isinstance(boards_raw, list):
        raise ScenarioError(f"{where}: key 'boards' must be a list of [[pi.boards]] tables")
    boards = tuple(
        _board(f"{where} board[{i}]", i, b, board_known) for i, b in enumerate(boards_raw)
    )
    for key, getter in (("mcu_name", lambda b: b.mcu_name), ("port", lambda b: b.port)):
        seen = [getter(b) for b in boards]
        dupes = sorted({v for v in seen if seen.count(v) > 1})
        if dupes:
            raise ScenarioError(f"{where}: key '{key}' repeats {dupes}; each board needs its own")
    owner = raw.get("klipper_owner", "pi")
    _check(where, "klipper_owner", owner, ("pi", "root"))
    allowed = raw.get("allowed_services", list(PiSpec.allowed_services))
    if not isinstance(allowed, list) or not all(isinstance(s, str) for s in allowed):
        raise ScenarioError(f"{where}: key 'allowed_services' must be a list of service names")
    fresh = raw.get("fresh", False)
    if not isinstance(fresh, bool):
        raise ScenarioError(f"{where}: key 'fresh' is {fresh!r}; use true or false")
    hang = raw.get("moonraker_hang_seconds", 0)
    if isinstance(hang, bool) or not isinstance(hang, (int, float)) or hang < 0:
        raise ScenarioError(f"{where}: key 'moonraker_hang_seconds' is {hang!r}; use seconds >= 0 (0: never answer)")
    return PiSpec(
        name=name,
        state=_check(where, "state", raw.get("state", "standby"), PRINT_STATES),
        network=_check(where, "network", raw.get("network", "online"), NETWORKS),
        boards=boards,
        # a fresh card's klipper.service has no checkout to run: stopped unless the scenario says
        klipper=_check(where, "klipper", raw.get("klipper", "inactive" if fresh else "active"), KLIPPER_STATES),
        moonraker=_check(where, "moonraker", raw.get("moonraker", "active"), SERVICE_STATES),
        klipper_owner=owner,
        allowed_services=tuple(allowed),
        model=_check(where, "model", raw.get("model", "v-core-3"), MODELS),
        fresh=fresh,
        group=_group(where, raw.get("group", "pis")),
        checkout=_check(where, "checkout", raw.get("checkout", "current"), ("current", "old")),
        klippy=_check(where, "klippy", raw.get("klippy", "ready"), KLIPPY_STATES),
        moonraker_fault=_check(where, "moonraker_fault", raw.get("moonraker_fault", "none"), MOONRAKER_FAULTS),
        moonraker_hang_seconds=hang,
        arch=_check(where, "arch", raw.get("arch", "armhf"), tuple(ARCHES)),
    )


def parse_scenario(
    data: dict[str, Any], source: str = "<scenario>", board_known: Callable[[str], bool] | None = None
) -> Scenario:
    """Validate a decoded scenario; ``board_known`` checks board ids against the catalog."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a TOML document with [[pi]] tables")
    extra = {k: v for k, v in data.items() if k != "pi"}
    raw_pis = data.get("pi")
    if not isinstance(raw_pis, list) or not raw_pis:
        raise ScenarioError(f"{source}: no [[pi]] tables; a farm needs at least one Pi")
    pis = tuple(_pi(i, raw, board_known) for i, raw in enumerate(raw_pis))
    names = [p.name for p in pis]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ScenarioError(f"{source}: Pi names repeat {dupes}; key 'name' must be unique")
    return Scenario(pis=pis, source=source, extra=extra)


def load_scenario(path: str | Path, board_known: Callable[[str], bool] | None = None) -> Scenario:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(data, source=str(path), board_known=board_known)
