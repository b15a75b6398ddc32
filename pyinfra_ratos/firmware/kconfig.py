"""Kconfig fragments for a board, and the check that ``make olddefconfig`` kept what we asked for.

kconfiglib silently drops a value whose prompt is invisible (the STM32 crystal without
``CONFIG_LOW_LEVEL_OPTIONS=y``), writes no option at all of a choice whose prompt is hidden, leaves
out a choice option the chip does not offer, and forgets unknown symbols (a typo), so a build can
succeed with the wrong crystal or address. Given the checkout's Kconfig files
(:func:`load_kconfig_symbols`) the check names which of these happened. Rendering is
deterministic (same board + overrides = same text) so that equal fragments mean equal builds.
Pure Python, no pyinfra import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from pyinfra_ratos.firmware.catalog import Board

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

_NAME = re.compile(r"^[A-Z0-9_]+\Z")
_ASSIGN = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)\Z")
_NOT_SET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set\Z")
_NUMBER = re.compile(r"^-?(0x[0-9a-fA-F]+|\d+)\Z")

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
    # "unknown", "hidden-choice", "not-offered", "dependency", "absent" (no Kconfig to tell),
    # "forced", "changed", "derived"
    cause: str = ""

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


# ---------------------------------------------------------------- the checkout's Kconfig files

@dataclass(frozen=True)
class KconfigChoice:
    prompt: str
    condition: str | None            # the prompt's ``if`` / ``depends on``: hidden when false
    members: tuple[str, ...]


@dataclass(frozen=True)
class KconfigSymbols:
    """What a Klipper checkout's Kconfig files define: enough to say why a symbol vanished."""

    defined: frozenset[str]
    choice_of: Mapping[str, KconfigChoice] = field(default_factory=dict)   # member -> its choice
    conditions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # prompt ifs, depends on


_KCONFIG_SYMBOL = re.compile(r"^(?:menu)?config\s+([A-Za-z0-9_]+)\s*\Z")
_KCONFIG_PROMPT = re.compile(r'^(?:bool|tristate|int|hex|string|prompt)\s+"[^"]*"(?:\s+if\s+(.+))?$')
_KCONFIG_CHOICE_PROMPT = re.compile(r'^prompt\s+"([^"]*)"(?:\s+if\s+(.+))?$')


def scan_kconfig(texts: Iterable[str]) -> KconfigSymbols:
    """Symbols, choices and prompt conditions of Kconfig files (Klipper's subset of the syntax)."""
    defined: set[str] = set()
    choice_of: dict[str, KconfigChoice] = {}
    conditions: dict[str, list[str]] = {}
    for text in texts:
        choice: dict | None = None
        current: str | None = None
        help_indent: int | None = None
        blocks: list[list[str]] = []  # enclosing menu / if blocks and their conditions
        for raw in text.splitlines():
            indent = len(raw) - len(raw.lstrip())
            line = raw.strip()
            if help_indent is not None:
                if not line or indent > help_indent:
                    continue
                help_indent = None
            if not line or line.startswith("#"):
                continue
            if line in ("help", "---help---"):
                help_indent = indent
            elif line == "choice":
                choice, current = {"prompt": "", "condition": None, "members": []}, None
            elif line == "endchoice" and choice is not None:
                made = KconfigChoice(choice["prompt"], choice["condition"], tuple(choice["members"]))
                choice_of.update({member: made for member in made.members})
                choice, current = None, None
            elif match := _KCONFIG_SYMBOL.match(line):
                current = match.group(1)
                defined.add(current)
                conditions.setdefault(current, []).extend(c for block in blocks for c in block)
                if choice is not None:
                    choice["members"].append(current)
            elif choice is not None and current is None and (match := _KCONFIG_CHOICE_PROMPT.match(line)):
                choice["prompt"], choice["condition"] = match.group(1), match.group(2)
            elif choice is not None and current is None and line.startswith("depends on "):
                choice["condition"] = line[len("depends on "):]
            elif current == "" and line.startswith("depends on ") and blocks:
                blocks[-1].append(line[len("depends on "):].strip())
            elif current and (match := _KCONFIG_PROMPT.match(line)) and match.group(1):
                conditions[current].append(match.group(1).strip())
            elif current and line.startswith("depends on "):
                conditions[current].append(line[len("depends on "):].strip())
            elif line.startswith(("menu ", "if ")):
                blocks.append([line[3:].strip()] if line.startswith("if ") else [])
                current = "" if line.startswith("menu ") else None  # a menu's own "depends on"
            elif line in ("endmenu", "endif"):
                blocks = blocks[:-1]
                current = None
            elif line.startswith(("source ", "mainmenu ", "comment ")):
                current = None
    return KconfigSymbols(frozenset(defined), choice_of,
                          {name: tuple(dict.fromkeys(found)) for name, found in conditions.items()})


def load_kconfig_symbols(tree: str | Path) -> KconfigSymbols:
    """:func:`scan_kconfig` of every Kconfig file under a Klipper checkout's ``src/``."""
    paths = sorted(Path(tree, "src").rglob("Kconfig"))
    return scan_kconfig(path.read_text(encoding="utf-8", errors="replace") for path in paths)


def _fix_for(condition: str | None) -> str:
    # a plain symbol as the condition (LOW_LEVEL_OPTIONS) has a one-line fix
    if condition and _NAME.match(condition.strip()):
        return f" Fix: add CONFIG_{condition.strip()}=y to the fragment"
    return ""


def _all_of(conditions: Iterable[str]) -> str:
    return " && ".join(c if _NAME.match(c) else f"({c})" for c in conditions)


def _absent(name: str, wanted: str, resolved: Mapping[str, str], known: KconfigSymbols | None) -> KconfigProblem:
    """Why a requested symbol is not in the resolved config at all, as precisely as known."""
    head = f"CONFIG_{name}: requested '{wanted}' but"
    if known is None:
        return KconfigProblem(name, wanted, None, (
            f"{head} it is absent from the resolved config: an option of a choice whose prompt is hidden "
            "(kconfiglib writes none of its options, e.g. the crystal without CONFIG_LOW_LEVEL_OPTIONS=y), an "
            "option this chip does not offer, or a symbol this Klipper does not define"), "absent")
    if name not in known.defined:
        return KconfigProblem(name, wanted, None, (
            f"{head} no Kconfig file of this Klipper checkout defines it (misspelled, or from another "
            "Klipper version)"), "unknown")
    choice = known.choice_of.get(name)
    if choice is not None:
        chosen = sorted(member for member in choice.members if resolved.get(member) == "y")
        offered = [member for member in choice.members if member in resolved]
        if not offered:
            why = f" (shown only if {choice.condition})" if choice.condition else ""
            return KconfigProblem(name, wanted, None, (
                f"{head} its choice \"{choice.prompt}\" is hidden{why}: kconfiglib leaves every option of a "
                "hidden choice out of .config and the build takes the choice's default."
                + _fix_for(choice.condition)), "hidden-choice")
        needs = _all_of(known.conditions.get(name, ())) or "a condition that does not hold"
        instead = f"; the choice resolved to CONFIG_{chosen[0]} instead" if chosen else ""
        return KconfigProblem(name, wanted, None, (
            f"{head} this chip does not offer it: its option in the choice \"{choice.prompt}\" needs "
            f"{needs}{instead}"), "not-offered")
    needs = _all_of(known.conditions.get(name, ())) or "unknown conditions"
    return KconfigProblem(name, wanted, None, (
        f"{head} kconfiglib left it out of the resolved config: its prompt or dependencies are not met "
        f"({needs})" + _fix_for(needs)), "dependency")


def _dropped(requested: Mapping[str, str], resolved: Mapping[str, str],
             known: KconfigSymbols | None = None) -> list[KconfigProblem]:
    problems = []
    for name, wanted in requested.items():
        got = resolved.get(name)
        if wanted == "n":
            # an absent bool is n; only a forced y breaks the request
            if got not in (None, "n"):
                problems.append(KconfigProblem(name, wanted, got, (
                    f"CONFIG_{name}: requested 'not set' but resolved to '{got}' "
                    "(selected by another symbol or not user-settable here)"), "forced"))
            continue
        if got is None:
            problems.append(_absent(name, wanted, resolved, known))
        elif not _same(wanted, got):
            problems.append(KconfigProblem(name, wanted, got, (
                f"CONFIG_{name}: requested '{wanted}' but resolved to '{got}' (its prompt is hidden: "
                "a missing dependency such as CONFIG_LOW_LEVEL_OPTIONS=y, or a value out of range)"), "changed"))
    return problems


def application_address(resolved: Mapping[str, str]) -> int | None:
    """Where a build is linked, from its parsed resolved config; None for a Linux or AVR build.

    ``CONFIG_FLASH_APPLICATION_ADDRESS`` as Kconfig wrote it, else derived as Klipper's
    ``src/stm32/Kconfig`` does: flash base 0x08000000 plus the ``STM32_FLASH_START_xxxx`` offset.
    """
    address = resolved.get("FLASH_APPLICATION_ADDRESS")
    if address is not None and _NUMBER.match(address):
        return int(address, 0)
    if resolved.get("MACH_STM32") == "y":
        offsets = [name for name, value in resolved.items()
                   if value == "y" and name.startswith("STM32_FLASH_START_")]
        if len(offsets) == 1:
            return 0x08000000 + int(offsets[0][len("STM32_FLASH_START_"):], 16)
    return None


def derived_problems(board: Board, resolved: Mapping[str, str]) -> list[KconfigProblem]:
    """Derived values of a parsed resolved config that differ from the catalog board."""
    problems = []

    def differ(symbol: str, expected: str, got: str | None, why: str) -> None:
        problems.append(KconfigProblem(symbol, expected, got, (
            f"CONFIG_{symbol} is {got!r} but board {board.id} needs {expected!r}: {why}"), "derived"))

    # Like Klipper, the Linux process MCU has no CONFIG_MCU (its firmware reports "linux")
    if board.interface != "linux" and resolved.get("MCU") != board.mcu:
        differ("MCU", board.mcu, resolved.get("MCU"), "the firmware would be built for another chip")
    address = application_address(resolved)
    if board.interface != "linux" and address != board.app_address:
        differ("FLASH_APPLICATION_ADDRESS", f"{board.app_address:#x}", None if address is None else f"{address:#x}",
               "the image is linked for another bootloader offset (flashed here it never starts, or "
               "overwrites the bootloader)")
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


def verify_resolved(board: Board, requested_fragment: str, resolved_text: str,
                    known: KconfigSymbols | None = None) -> list[KconfigProblem]:
    """Problems of a resolved ``.config`` against what was requested and what the catalog says.

    Empty list = safe to build. Each problem names the symbol; with ``known`` (the checkout's
    :func:`load_kconfig_symbols`) a vanished symbol's problem names the real cause too.
    """
    requested = parse_config(requested_fragment)
    resolved = parse_config(resolved_text)
    return _dropped(requested, resolved, known) + derived_problems(board, resolved)
