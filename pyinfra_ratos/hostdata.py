"""The whole inventory's host data, validated before any SSH command: every problem of every host at once.

Pure Python (no connection, no pyinfra state). :func:`validate_inventory` runs each deploy's own
validator (:func:`pyinfra_ratos.printer_model.parse_printer_data`,
:func:`pyinfra_ratos.firmware_settings.firmware_settings`) on every host, adds what no single
deploy checks (unknown keys with a "did you mean", types of pyinfra's connector keys, the printer
deploy's tuning keys), and raises ONE :class:`InventoryError` with one line per problem::

    host vcore-01: field 'printer_modle' is not a known data key. Fix: did you mean 'printer_model'?
    host vcore-02: field 'boards[0].port': 'usb3' is not a USB port path. Fix: write it like "1-1.3" ...

``boards`` is parsed here, once, by :func:`parse_boards`, for both deploys (the printer
configuration and the firmware pipeline used to disagree on mcu_name defaults and port syntax).

Which validators run on a host: those named in ``require`` (the deploys the run applies), plus
each deploy whose own keys the host sets (``printer_model``... for the printer configuration,
``klipper_source``... for the firmware). ``boards``, ``klipper_commit``, unknown keys and types
are always checked. A key of your own deploys is declared in the data key ``custom_data_keys``
(a list of names), so it is not taken for a typo.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

from pyinfra_ratos.catalog import Board
from pyinfra_ratos.kconfig import KconfigError, OverrideValue, render_fragment
from pyinfra_ratos.klipper_config import value_problem

if TYPE_CHECKING:
    from pyinfra_ratos.firmware_settings import FirmwareSettings
    from pyinfra_ratos.printer_model import PrinterSpec

BOARD_KEYS = ("board", "mcu_name", "port", "serial", "canbus_uuid", "kconfig")
# a USB port path: bus-port[.port...] (Linux allows 5 hubs below a root port)
PORT_RE = re.compile(r"^[1-9][0-9]{0,2}-[1-9][0-9]?(\.[1-9][0-9]?){0,5}$")
_MCU_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
_SERIAL = re.compile(r"^/[A-Za-z0-9_./:+@=,-]+$")
_CANBUS_UUID = re.compile(r"^[0-9a-f]{12}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

# keys each part of pyinfra-ratos reads from host data (the validators check their values)
PRINTER_KEYS = ("printer_model", "printer_size", "hotend", "extruder", "probe", "stepper_driver",
                "stepper_current", "printer_templates")
PRINTER_DEPLOY_KEYS = ("printer_user_config", "printer_when_busy", "printer_backups", "printer_config_dir")
FIRMWARE_KEYS = ("klipper_source", "firmware_cache", "flash_backend", "allow_unclean_build", "attended_flash",
                 "firmware_build")
SHARED_KEYS = ("boards", "klipper_commit", "custom_data_keys")
# deploys/provision.py and deploys/update.py (checked by provision_settings there)
PROVISION_KEYS = ("klipper_remote", "klipper_bundle_cache", "hostname", "timezone", "build_on_pi",
                  "provision_services", "config_backups", "config_backup_keep")
SECTIONS = ("printer", "firmware")


class InventoryError(ValueError):
    """The inventory cannot be used: one line per problem, ``host <name>: field '<field>' ...: <fix>``."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        hosts = {line.split(":", 1)[0] for line in self.lines}
        super().__init__(f"invalid inventory ({len(self.lines)} problems on {len(hosts)} hosts):\n"
                         + "\n".join(f"  {line}" for line in self.lines))


@dataclass(frozen=True)
class BoardSpec:
    """One entry of ``boards``, as both deploys read it."""

    board: Board
    mcu_name: str
    port: str | None = None
    serial: str | None = None
    canbus_uuid: str | None = None
    kconfig: Mapping[str, OverrideValue] = field(default_factory=dict)


@dataclass(frozen=True)
class HostSettings:
    """A host's validated data: the boards, and each deploy's settings when they apply."""

    host: str
    boards: tuple[BoardSpec, ...]
    printer: PrinterSpec | None
    firmware: FirmwareSettings | None
    data: Mapping[str, Any]


# --- boards, shared by both deploys ----------------------------------------------------------


def parse_boards(raw: Any, catalog: Mapping[str, Board]) -> tuple[list[BoardSpec], list[tuple[str, str]]]:
    """The ``boards`` list as board specs, and its problems as ``(field, "<problem>. Fix: <fix>")``.

    mcu_name defaults: ``rpi`` for the host MCU, ``toolboard_t<n>`` for toolboards in order,
    ``mcu`` for the first other board (the control board), the board id for any further one.
    """
    problems: list[tuple[str, str]] = []
    example = '[{"board": "btt-octopus-pro-h723-11"}, {"board": "btt-ebb42-12", "mcu_name": "toolboard_t0"}]'
    if not raw or not isinstance(raw, Sequence) or isinstance(raw, str):
        return [], [("boards", f"missing or not a list. Fix: set boards = {example}")]
    entries: list[BoardSpec] = []
    toolboards = 0
    for index, item in enumerate(raw):
        where = f"boards[{index}]"
        if not isinstance(item, Mapping) or "board" not in item:
            problems.append((where, f"{item!r} is not a table with a 'board' key. "
                                    "Fix: write {\"board\": \"<catalog id>\"}"))
            continue
        for key in sorted(set(item) - set(BOARD_KEYS), key=str):
            problems.append((f"{where}.{key}", f"unknown board key. Fix: {_did_you_mean(str(key), BOARD_KEYS)}"))
        board = catalog.get(item["board"]) if isinstance(item["board"], str) else None
        if board is None:
            close = difflib.get_close_matches(str(item["board"]), list(catalog), n=1)
            hint = f"did you mean {close[0]!r}? Else use" if close else "use"
            problems.append((f"{where}.board", f"{item['board']!r} is not in the board catalog. "
                                               f"Fix: {hint} a catalog id (pyinfra_ratos/boards/*.toml) or add a board file"))
        # every field is checked, known board or not: all the problems of an entry at once
        count = len(problems)
        port, serial, uuid = item.get("port"), item.get("serial"), item.get("canbus_uuid")
        if port is not None and (not isinstance(port, str) or not PORT_RE.match(port)):
            problems.append((f"{where}.port", f"{port!r} is not a USB port path. "
                                              "Fix: write it like \"1-1.3\" (see lsusb -t or /dev/serial/by-path on the Pi)"))
        if serial is not None and (not isinstance(serial, str) or not _SERIAL.match(serial)):
            problem = value_problem(serial) if isinstance(serial, str) else None
            problems.append((f"{where}.serial", f"{problem or repr(serial) + ' is not an absolute device path'}. "
                                                "Fix: write a path such as /dev/serial/by-id/usb-Klipper_stm32h723xx_...-if00"))
        if "mcu_name" in item:
            mcu_name = item["mcu_name"]
        elif board is None:
            mcu_name = None
        elif board.interface == "linux":
            mcu_name = "rpi"
        elif board.toolboard:
            mcu_name = f"toolboard_t{toolboards}"
        else:
            mcu_name = "mcu" if not any(e.mcu_name == "mcu" for e in entries) else board.id.replace("-", "_")
        if mcu_name is not None and (not isinstance(mcu_name, str) or not _MCU_NAME.match(mcu_name)):
            problems.append((f"{where}.mcu_name", f"{mcu_name!r} is not a Klipper MCU name. "
                                                  "Fix: lower-case letters, digits and '_' (e.g. toolboard_t0)"))
        overrides = item.get("kconfig", {})
        if not isinstance(overrides, Mapping):
            problems.append((f"{where}.kconfig", f"{overrides!r} is not a table. "
                                                 "Fix: write Kconfig symbols, e.g. {\"CANBUS_FREQUENCY\": 1000000}"))
        if board is None:
            continue
        toolboards += board.toolboard
        if len(problems) > count:
            continue
        if board.interface == "can" and serial is None and (
            not isinstance(uuid, str) or not _CANBUS_UUID.match(uuid)
        ):
            problems.append((f"{where}.canbus_uuid", f"{uuid!r} is not a CAN UUID. "
                                                     "Fix: set the 12 hex digits reported by Katapult's flashtool -q "
                                                     "(e.g. \"a1b2c3d4e5f6\")"))
        try:
            render_fragment(board, overrides)  # renders now, so a bad override fails before any Pi is touched
        except KconfigError as error:
            text = str(error) if "Fix:" in str(error) else f"{error}. Fix: correct or remove that Kconfig override"
            problems.append((f"{where}.kconfig", text))
            continue
        entries.append(BoardSpec(board, str(mcu_name), port, serial, uuid, dict(overrides)))
    names = [e.mcu_name for e in entries]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(("boards", f"mcu_name {name!r} is used twice. Fix: give each board its own mcu_name"))
    if entries and "mcu" not in names:
        problems.append(("boards", "no board is the main 'mcu'. Fix: set mcu_name = \"mcu\" on the control board"))
    return entries, problems


# --- known keys ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def pyinfra_keys() -> Mapping[str, Any]:
    """pyinfra's own data keys: every connector's (ssh_*, docker_* ...) with its declared type,
    and the global arguments a host's data may set (``_sudo``, ``_env`` ...), typed ``Any``.
    Read once per process (the connectors are entry points: scanning them cost 3 ms a call)."""
    from pyinfra.api.arguments import all_argument_meta
    from pyinfra.api.connectors import get_all_connectors

    keys: dict[str, Any] = {key: Any for key in all_argument_meta if key.startswith("_")}
    for connector in get_all_connectors().values():
        data_cls = getattr(connector, "data_cls", None)
        hints = get_type_hints(data_cls) if data_cls is not None else {}
        for key in getattr(connector, "data_meta", None) or {}:
            keys[key] = hints.get(key, Any)
    return types.MappingProxyType(keys)


def known_keys() -> tuple[str, ...]:
    return (*PRINTER_KEYS, *PRINTER_DEPLOY_KEYS, *FIRMWARE_KEYS, *SHARED_KEYS, *PROVISION_KEYS, *pyinfra_keys())


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "remove it"


def _type_problem(value: Any, expected: Any) -> str | None:
    """Why ``value`` is not of the (simple) declared type, None when it is or cannot be told."""
    if expected is Any:
        return None
    options = get_args(expected) if get_origin(expected) is Union else (expected,)
    for option in options:
        base = get_origin(option) or option
        if not isinstance(base, type):
            return None
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        if base is int and isinstance(value, bool):
            continue
        if isinstance(value, base):
            return None
    names = " or ".join(getattr(get_origin(o) or o, "__name__", str(o)) for o in options)
    return f"{value!r} is a {type(value).__name__}; pyinfra expects {names}"


def _key_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    custom = data.get("custom_data_keys", [])
    if not isinstance(custom, (list, tuple)) or not all(isinstance(k, str) for k in custom):
        problems.append(("custom_data_keys", f"{custom!r} is not a list of key names. Fix: write [\"my_key\"]"))
        custom = []
    typed = pyinfra_keys()
    known = set(known_keys())
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append((repr(key), "not a string. Fix: name data keys with strings"))
        elif key in typed:
            problem = _type_problem(value, typed[key])
            if problem:
                problems.append((key, f"{problem}. Fix: give pyinfra's connector a value of that type"))
        elif key not in known and key not in custom:
            problems.append((key, f"unknown data key. Fix: {_did_you_mean(key, known)} "
                                  "(a key of your own deploy: list it in custom_data_keys)"))
    commit = data.get("klipper_commit")
    if commit is not None and (not isinstance(commit, str) or not _COMMIT.match(commit)):
        problems.append(("klipper_commit", f"{commit!r} is not a full commit hash. Fix: use the 40 lower-case hex "
                                           "digits of `git rev-parse HEAD` in the fleet's Klipper checkout"))
    return problems


def _printer_deploy_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    from pyinfra_ratos.operations.printer import USER_CONFIG_MODES, WHEN_BUSY

    problems = []
    mode = data.get("printer_user_config", "adopt")
    if mode not in USER_CONFIG_MODES:
        problems.append(("printer_user_config", f"{mode!r} is not a mode. Fix: use one of {', '.join(USER_CONFIG_MODES)}"))
    when_busy = data.get("printer_when_busy", "write")
    if when_busy not in WHEN_BUSY:
        problems.append(("printer_when_busy", f"{when_busy!r} is not known. Fix: use one of {', '.join(WHEN_BUSY)}"))
    backups = data.get("printer_backups", 5)
    if isinstance(backups, bool) or not isinstance(backups, int) or backups < 1:
        problems.append(("printer_backups", f"{backups!r} is not a count. Fix: keep at least one backup (an int >= 1)"))
    folder = data.get("printer_config_dir", "~/printer_data/config")
    if not isinstance(folder, str) or not folder or "\n" in folder:
        problems.append(("printer_config_dir", f"{folder!r} is not a path. Fix: write Klipper's config folder, "
                                               "e.g. \"~/printer_data/config\""))
    return problems


# --- the whole inventory ---------------------------------------------------------------------


def _line(host: str, message: str) -> str:
    """``host <name>: field '<field>' ...``; the validators' own ``<field>: ...`` lines are rewritten."""
    if message.startswith(("field '", "--data ")):
        return f"host {host}: {message}"
    name, _, rest = message.partition(": ")
    return f"host {host}: field '{name}': {rest}"


def _sections(data: Mapping[str, Any], require: Collection[str]) -> set[str]:
    applied = set(require)
    if any(key in data for key in (*PRINTER_KEYS, *PRINTER_DEPLOY_KEYS)):
        applied.add("printer")
    if any(key in data for key in FIRMWARE_KEYS):
        applied.add("firmware")
    return applied


def validate_host(
    host: str, data: Mapping[str, Any], override: Mapping[str, Any], catalog: Mapping[str, Board],
    require: Collection[str] = (),
) -> tuple[HostSettings | None, list[str]]:
    """One host: its settings (None when it has problems) and its problem lines."""
    from pyinfra_ratos.firmware_settings import HostDataError, firmware_settings
    from pyinfra_ratos.printer_model import PrinterDataError, parse_printer_data

    lines: list[str] = [_line(host, f"{name}: {text}") for name, text in _key_problems(data)]
    boards: list[BoardSpec] = []
    if "boards" in data:
        boards, problems = parse_boards(data["boards"], catalog)
        lines += [_line(host, f"{name}: {text}") for name, text in problems]
    sections = _sections(data, require)
    printer = firmware = None
    if "printer" in sections:
        lines += [_line(host, f"{name}: {text}") for name, text in _printer_deploy_problems(data)]
        try:
            printer = parse_printer_data(host, data, catalog)
        except PrinterDataError as error:
            lines += [_line(host, message) for message in error.errors]
    if "firmware" in sections:
        try:
            firmware = firmware_settings(host, data, override, catalog)
        except HostDataError as error:
            lines += [_line(host, message) for message in error.errors]
    unique = list(dict.fromkeys(lines))  # both deploys report a bad board the same way: once is enough
    if unique:
        return None, unique
    return HostSettings(host, tuple(boards), printer, firmware, dict(data)), []


def validate_inventory(
    hosts: Mapping[str, Mapping[str, Any]],
    override: Mapping[str, Any],
    catalog: Mapping[str, Board],
    require: Collection[str] = (),
) -> dict[str, HostSettings]:
    """Every host's settings, or :class:`InventoryError` listing every problem of every host.

    + hosts: ``{host name: its data}``, override data included (pyinfra's ``host.data.dict()``)
    + override: the run's ``--data`` values (``attended_flash`` is only accepted from there)
    + catalog: the board catalog (:func:`pyinfra_ratos.catalog.load_catalog`)
    + require: deploys whose required keys every host must have: ``printer``, ``firmware``
    """
    unknown = sorted(set(require) - set(SECTIONS))
    if unknown:
        raise ValueError(f"require={unknown!r}: use some of {', '.join(SECTIONS)}")
    settings: dict[str, HostSettings] = {}
    lines: list[str] = []
    for host, data in hosts.items():
        found, problems = validate_host(host, data, override, catalog, require)
        lines += problems
        if found is not None:
            settings[host] = found
    if lines:
        raise InventoryError(lines)
    return settings
