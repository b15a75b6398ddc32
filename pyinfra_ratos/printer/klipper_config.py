"""Klipper configuration text: validate it, split and merge its SAVE_CONFIG block, adopt a user file.

Pure text functions, no pyinfra. The rules follow klippy's own reader (``klippy/configfile.py``):
a section header is a ``[...]`` line at column 0, ``#`` and ``;`` start comments, indented lines
continue the previous option's value, ``[include <path>]`` is resolved relative to the including
file, and everything from the exact SAVE_CONFIG marker line to the end of ``printer.cfg`` is the
calibration Klipper writes itself (every line of it starts with ``#*#``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SAVE_CONFIG_MARKER = "#*# <---------------------- SAVE_CONFIG ---------------------->"
AUTOSAVE_PREFIX = "#*#"

# klippy drops everything after '#' before it looks for a header, and configparser wants the
# whole remaining line to be "[...]"; we are stricter: no brackets inside, no padding.
_HEADER = re.compile(r"^\[(?P<name>[^\[\]#;]*)\]\s*(?:[#;].*)?\Z")
_OPTION = re.compile(r"^(?P<key>[A-Za-z0-9_.\-]+)\s*[:=]")
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Problem:
    """One defect of a config text; ``line`` is 1-based."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Section:
    name: str  # the header without brackets, e.g. "mcu toolboard_t0" or "include RatOS.cfg"
    line: int  # 1-based line of the header

    @property
    def include(self) -> str | None:
        """The include target (``RatOS/boards/x/config.cfg``), or None for a plain section."""
        if self.name.startswith("include "):
            return self.name[len("include "):].strip()
        return None


def _strip_comment(line: str) -> str:
    for index, char in enumerate(line):
        if char in "#;":
            return line[:index]
    return line


def sections(text: str) -> list[Section]:
    """Every well-formed section header of a text, in order (the SAVE_CONFIG block excluded)."""
    body, _ = split_save_config(text)
    found = []
    for number, line in enumerate(body.splitlines(), start=1):
        match = _HEADER.match(line)
        if match:
            found.append(Section(match.group("name").strip(), number))
    return found


def include_targets(text: str) -> list[str]:
    """The ``[include]`` targets of a text, in order, without duplicates."""
    targets: list[str] = []
    for section in sections(text):
        if section.include is not None and section.include not in targets:
            targets.append(section.include)
    return targets


def is_glob(target: str) -> bool:
    """klippy expands wildcard includes and accepts zero matches; plain targets must exist."""
    return bool(_GLOB.search(target))


def validate(text: str, *, allow_save_config: bool = False) -> list[Problem]:
    """Structural problems of a Klipper config text; ``[]`` means klippy's reader will accept it.

    ``allow_save_config``: the text is a ``printer.cfg`` that may end with a SAVE_CONFIG block.
    A generated file must never hold ``#*#`` lines: there they can only come from injected data,
    and klippy would read them as calibration.
    """
    problems: list[Problem] = []
    body, block = split_save_config(text) if allow_save_config else (text, "")
    seen: dict[str, int] = {}
    in_section = False
    last_was_option = False
    lines = body.splitlines()
    for number, line in enumerate(lines, start=1):
        if line.startswith(AUTOSAVE_PREFIX):
            problems.append(Problem(number, "a '#*#' line outside a SAVE_CONFIG block (only Klipper writes those)"))
            continue
        stripped = _strip_comment(line)
        if not stripped.strip():
            continue  # blank or comment: a blank line inside a value is fine for configparser
        if line[0] in " \t":
            if not last_was_option:
                problems.append(Problem(number, "an indented line that continues no option"))
            continue
        if line.startswith("["):
            match = _HEADER.match(line)
            name = match.group("name") if match else ""
            if not match or not name.strip() or name != name.strip() or "  " in name:
                problems.append(Problem(number, f"malformed section header {line.strip()!r}: write [name] or [name argument]"))
                in_section, last_was_option = False, False
                continue
            if name in seen:
                problems.append(Problem(number, f"duplicate section [{name}] (first at line {seen[name]})"))
            seen.setdefault(name, number)
            if name.startswith("include") and not name.startswith("include "):
                problems.append(Problem(number, f"[{name}] names no file: write [include path/to/file.cfg]"))
            in_section, last_was_option = not name.startswith("include "), False
            continue
        if not in_section:
            problems.append(Problem(number, f"{line.strip()!r} is outside any section"))
            continue
        if not _OPTION.match(line):
            problems.append(Problem(number, f"{line.strip()!r} is neither an option (key: value) nor a section"))
            last_was_option = False
            continue
        last_was_option = True
    offset = len(lines)
    for number, line in enumerate(block.splitlines(), start=offset + 1):
        if not line.startswith(AUTOSAVE_PREFIX):
            problems.append(Problem(number, "a line without '#*#' inside the SAVE_CONFIG block"))
    return problems


def missing_includes(text: str, present: Callable[[str], bool]) -> list[Problem]:
    """Include targets (not wildcards) for which ``present(target)`` is false."""
    problems = []
    for section in sections(text):
        target = section.include
        if target is not None and not is_glob(target) and not present(target):
            problems.append(Problem(section.line, f"[include {target}]: no such file on the Pi"))
    return problems


# --- SAVE_CONFIG ---------------------------------------------------------------------------


def split_save_config(text: str) -> tuple[str, str]:
    """``(body, block)`` with ``body + block == text``; the block starts at the marker line.

    No marker: the block is ``""``. Stray ``#*#`` lines without a marker stay in the body, where
    :func:`validate` reports them (klippy ignores such a block, so do we, loudly).
    """
    start = 0
    while True:
        index = text.find(SAVE_CONFIG_MARKER, start)
        if index < 0:
            return text, ""
        if index == 0 or text[index - 1] == "\n":
            return text[:index], text[index:]
        start = index + 1


def orphan_autosave_lines(text: str) -> list[int]:
    """Lines starting with ``#*#`` in the body: calibration klippy cannot read (no marker)."""
    body, _ = split_save_config(text)
    return [n for n, line in enumerate(body.splitlines(), start=1) if line.startswith(AUTOSAVE_PREFIX)]


def merge_save_config(body: str, block: str) -> str:
    """A new body followed by an existing block, byte for byte, laid out as klippy's SAVE_CONFIG
    does: the body right-stripped, one blank line, the block."""
    if not block:
        return body
    return body.rstrip() + "\n\n" + block


# --- adopting an existing user file --------------------------------------------------------

ADOPT_NOTE = "# pyinfra-ratos: now set in {generated}; uncomment to override it here again:"


def includes_file(text: str, target: str) -> bool:
    return any(section.include == target for section in sections(text))


def superseded_by(generated_text: str) -> Callable[[str], bool]:
    """Which user sections a generated file takes over: the same ``[mcu ...]`` sections, and
    includes from the same ``RatOS/<kind>/`` folders (another printer model, another board)."""
    generated = sections(generated_text)
    mcus = {s.name for s in generated if s.name == "mcu" or s.name.startswith("mcu ")}
    folders = {_include_folder(s.include) for s in generated if s.include is not None}

    def check(name: str) -> bool:
        if name in mcus:
            return True
        if name.startswith("include "):
            return _include_folder(name[len("include "):].strip()) in folders
        return False

    return check


def _include_folder(target: str) -> str:
    parts = target.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else target


def adopt_user_config(text: str, generated: str, superseded: Callable[[str], bool]) -> str:
    """Make an existing ``printer.cfg`` read the generated file first, keeping every byte the
    user owns: ``[include <generated>]`` goes before the first section, and the sections the
    generated file now sets are commented out (header and its option lines, under a note), so
    they no longer override it. User sections, comments and the SAVE_CONFIG block are untouched.
    """
    body, block = split_save_config(text)
    lines = body.splitlines(keepends=True)
    out: list[str] = []
    inserted = False
    commenting = False
    for line in lines:
        match = _HEADER.match(line.rstrip("\r\n"))
        if match and not inserted:
            out.append(f"[include {generated}]\n\n")
            inserted = True
        if match:
            follows_commented = commenting
            commenting = superseded(match.group("name").strip())
            if commenting and not follows_commented:
                out.append(ADOPT_NOTE.format(generated=generated) + "\n")
        elif commenting and (not line.strip() or line.lstrip().startswith(("#", ";")) and line[0] not in " \t"):
            commenting = False  # a blank line or a column-0 comment ends the section's own lines
        out.append("#" + line if commenting else line)
    if not inserted:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append(f"[include {generated}]\n")
    new_body = "".join(out)
    return new_body + block if not block or new_body.endswith("\n") else new_body + "\n" + block


def check_values(values: Iterable[tuple[str, str]]) -> list[str]:
    """Injection check of ``(field, value)`` pairs bound for a config line: no line breaks, no
    ``[`` (a new section), no ``#*#`` (fake calibration). Returns one message per bad field."""
    errors = []
    for field_name, value in values:
        problem = value_problem(value)
        if problem:
            errors.append(f"{field_name}: {problem}")
    return errors


def value_problem(value: str) -> str | None:
    if "\n" in value or "\r" in value:
        return f"{value!r} contains a line break, which would start a new config line"
    if "[" in value or "]" in value:
        return f"{value!r} contains a bracket, which could open a new section"
    if AUTOSAVE_PREFIX in value:
        return f"{value!r} contains '#*#', which klippy reads as SAVE_CONFIG data"
    return None


# --- one option in an INI file (moonraker.conf) --------------------------------------------


def set_option(text: str, section: str, option: str, value: str) -> str | None:
    """``text`` with ``option: value`` in ``[section]``, every other byte kept; None when the
    section is absent. An existing option line (and its indented continuation) is replaced in
    place, a new one goes after the section's last line."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines)
                  if (m := _HEADER.match(line.rstrip("\r\n"))) and m.group("name").strip() == section), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i].rstrip("\r\n"))), len(lines))
    new_line = f"{option}: {value}\n"
    for i in range(start + 1, end):
        match = _OPTION.match(lines[i])
        if match and match.group("key") == option:
            stop = i + 1
            while stop < end and lines[stop][:1] in (" ", "\t") and lines[stop].strip():
                stop += 1
            return "".join(lines[:i] + [new_line] + lines[stop:])
    last = start
    for i in range(start + 1, end):
        if lines[i].strip():
            last = i
    if not lines[last].endswith("\n"):
        lines[last] += "\n"
    return "".join(lines[: last + 1] + [new_line] + lines[last + 1:])
