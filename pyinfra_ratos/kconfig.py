"""Kconfig fragments for a board, and the check that ``make olddefconfig`` kept what we asked for.

kconfiglib silently drops a value whose prompt is invisible (the STM32 crystal without
``CONFIG_LOW_LEVEL_OPTIONS=y``) and forgets unknown symbols (a typo), so a build can succeed
with the wrong crystal or address. Rendering is deterministic (same board + overrides = same
text) so that equal fragments mean equal builds. Pure Python, no pyinfra import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

from pyinfra_ratos.catalog import Board

# Symbols Kconfig computes from the MACH_* / choice symbols: setting them does nothing
DERIVED_SYMBOLS = frozenset({
    "MCU", "CLOCK_FREQ", "FLASH_APPLICATION_ADDRESS", "CLOCK_REF_FREQ",
    "USBSERIAL", "CANBUS", "USBCANBUS", "CANSERIAL", "SERIAL", "USB", "BOARD_DIRECTORY",
})

# catalog interface -> the derived bool symbols that must be y (others of the set must not be)
INTERFACE_SYMBOLS: Mapping[str, frozenset[str]] = {
    "usb": frozenset({"USBSERIAL"}),
    "can": frozenset({"CANBUS"}),
    "usbcan": frozenset({"USBCANBUS", "CANBUS"}),
    "linux": frozenset(),
}
_INTERFACE_ALL = frozenset({"USBSERIAL", "CANBUS", "USBCANBUS"})

_NAME = re.compile(r"^[A-Z0-9_]+$")
_ASSIGN = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_NOT_SET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")
_NUMBER = re.compile(r"^-?(0x[0-9a-fA-F]+|\d+)$")

OverrideValue = Union[str, int, bool]


class KconfigError(ValueError):
    """A per-host override that cannot be rendered; the message names the symbol and the fix."""


class Hex(int):
    """An int rendered as ``0x...``: a hex symbol (USB ids) given in decimal is misread by Kconfig."""


@dataclass(frozen=True)
class KconfigProblem:
    symbol: str
    requested: str | None
    resolved: str | None
    message: str

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------- rendering

def _symbol_name(key: str) -> str:
    name = key[len("CONFIG_"):] if key.startswith("CONFIG_") else key
    if not _NAME.match(name):
        raise KconfigError(f"override '{key}': a Kconfig symbol is upper-case letters, digits and '_'. "
                           f"Fix: write it like USB_SERIAL_NUMBER or CONFIG_USB_SERIAL_NUMBER")
    if name in DERIVED_SYMBOLS:
        raise KconfigError(f"override '{key}': CONFIG_{name} is derived by Kconfig and cannot be set. "
                           "Fix: set the MACH_* / choice symbol that selects it, or pick another board")
    return name


def _quote(value: str) -> str:
    # as kconfiglib writes strings: backslash and double quote escaped, whole value in quotes
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_value_line(name: str, value: OverrideValue) -> str:
    """One ``.config`` line for a symbol, the way Kconfig itself writes it."""
    if isinstance(value, bool):  # before int: bool is an int
        return f"CONFIG_{name}=y" if value else f"# CONFIG_{name} is not set"
    if isinstance(value, Hex):
        if value < 0:
            raise KconfigError(f"override '{name}': hex value {int(value)} is negative")
        return f"CONFIG_{name}={value:#x}"
    if isinstance(value, int):
        return f"CONFIG_{name}={value}"
    if isinstance(value, str):
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
            raise KconfigError(f"override '{name}': {value!r} has a control character (newline?). "
                               "Fix: a Kconfig string is one line of printable text")
        return f"CONFIG_{name}={_quote(value)}"
    raise KconfigError(f"override '{name}': {type(value).__name__} is not a Kconfig value. "
                       "Fix: use a str, an int (Hex(...) for hex symbols) or a bool")


def _line_symbol(line: str) -> str | None:
    match = _ASSIGN.match(line) or _NOT_SET.match(line)
    return match.group(1) if match else None


def render_fragment(board: Board, overrides: Mapping[str, OverrideValue] | None = None) -> str:
    """The board's catalog fragment with per-host overrides replacing or extending its lines.

    An override of a symbol the fragment sets replaces that line in place; new symbols come
    last, sorted. So the same overrides in any order, or an override repeating the catalog's
    value, give the same text (and so the same build).
    """
    rendered: dict[str, str] = {}
    for key, value in (overrides or {}).items():
        name = _symbol_name(key)
        if name in rendered:
            raise KconfigError(f"override '{key}': CONFIG_{name} is given twice. Fix: keep one of them")
        rendered[name] = render_value_line(name, value)
    lines, placed = [], set()
    for raw_line in board.kconfig.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        symbol = _line_symbol(line)
        if symbol in rendered:
            if symbol not in placed:  # a symbol written twice in the catalog collapses to one line
                lines.append(rendered[symbol])
                placed.add(symbol)
            continue
        lines.append(line)
    lines += [rendered[name] for name in sorted(rendered) if name not in placed]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- parsing

def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw.startswith('"') and raw.endswith('"'):
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw


def parse_config(text: str) -> dict[str, str]:
    """``.config`` text as ``{SYMBOL: value}`` without the ``CONFIG_`` prefix.

    ``CONFIG_X=y`` -> ``"y"``, ``# CONFIG_X is not set`` -> ``"n"``, strings unquoted,
    numbers as written. Other comment lines are ignored; a later line wins, as in Kconfig.
    """
    values: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if match := _ASSIGN.match(line):
            values[match.group(1)] = _unquote(match.group(2))
        elif match := _NOT_SET.match(line):
            values[match.group(1)] = "n"
    return values


# ---------------------------------------------------------------- verification

def _same(requested: str, resolved: str) -> bool:
    # Kconfig may rewrite a number (hex case, leading zeros); compare numbers by value
    if _NUMBER.match(requested) and _NUMBER.match(resolved):
        return int(requested, 0) == int(resolved, 0)
    return requested == resolved


def _dropped(requested: Mapping[str, str], resolved: Mapping[str, str]) -> list[KconfigProblem]:
    problems = []
    for name, wanted in requested.items():
        got = resolved.get(name)
        if wanted == "n":
            # an absent bool is n; only a forced y breaks the request
            if got not in (None, "n"):
                problems.append(KconfigProblem(name, wanted, got, (
                    f"CONFIG_{name}: requested 'not set' but resolved to '{got}' "
                    "(selected by another symbol or not user-settable here)")))
            continue
        if got is None:
            problems.append(KconfigProblem(name, wanted, None, (
                f"CONFIG_{name}: requested '{wanted}' but it is absent from the resolved config "
                "(unknown symbol: misspelled, or not in this Klipper version / architecture)")))
        elif not _same(wanted, got):
            problems.append(KconfigProblem(name, wanted, got, (
                f"CONFIG_{name}: requested '{wanted}' but resolved to '{got}' (its prompt is hidden: "
                "a missing dependency such as CONFIG_LOW_LEVEL_OPTIONS=y, or a value out of range)")))
    return problems


def derived_problems(board: Board, resolved: Mapping[str, str]) -> list[KconfigProblem]:
    """Derived values of a parsed resolved config that differ from the catalog board."""
    problems = []

    def differ(symbol: str, expected: str, got: str | None, why: str) -> None:
        problems.append(KconfigProblem(symbol, expected, got, (
            f"CONFIG_{symbol} is {got!r} but board {board.id} needs {expected!r}: {why}")))

    # Like Klipper, the Linux process MCU has no CONFIG_MCU (its firmware reports "linux")
    if board.interface != "linux" and resolved.get("MCU") != board.mcu:
        differ("MCU", board.mcu, resolved.get("MCU"), "the firmware would be built for another chip")
    address = resolved.get("FLASH_APPLICATION_ADDRESS")
    if board.interface != "linux" and (address is None or not _NUMBER.match(address)
                                       or int(address, 0) != board.app_address):
        differ("FLASH_APPLICATION_ADDRESS", f"{board.app_address:#x}", address,
               "the image would be linked for another bootloader offset (bricks the board)")
    crystal = resolved.get("CLOCK_REF_FREQ")
    # only architectures with a crystal choice have CLOCK_REF_FREQ (STM32); RP2040's is fixed
    if board.crystal is not None and crystal is not None and not _same(str(board.crystal), crystal):
        differ("CLOCK_REF_FREQ", str(board.crystal), crystal,
               "wrong crystal: USB/CAN timing fails (the 25 MHz setting was dropped?)")
    wanted = INTERFACE_SYMBOLS[board.interface]
    for symbol in sorted(_INTERFACE_ALL):
        is_set = resolved.get(symbol) == "y"
        if is_set != (symbol in wanted):
            differ(symbol, "y" if symbol in wanted else "n", resolved.get(symbol, "n"),
                   f"the catalog says the board talks over '{board.interface}'")
    return problems


def verify_resolved(board: Board, requested_fragment: str, resolved_text: str) -> list[KconfigProblem]:
    """Problems of a resolved ``.config`` against what was requested and what the catalog says.

    Empty list = safe to build. Each problem names the symbol.
    """
    requested = parse_config(requested_fragment)
    resolved = parse_config(resolved_text)
    return _dropped(requested, resolved) + derived_problems(board, resolved)
