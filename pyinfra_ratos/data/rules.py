"""Rules for single inventory values, shared by every validator, and how an error shows a value.

A validator declares its keys as a table ``{key: Rule(problem, fix)}`` and :func:`problems`
checks the keys a host sets: one ``(key, "<problem>. Fix: <fix>")`` per bad value. Patterns are
matched whole (``fullmatch``: ``"$"`` would let a trailing newline through). An error never shows
more than 60 characters of a value, nor the password of a URL, and nothing of the value of a key
that may hold a secret (:func:`is_secret`: password, secret, token, credential, private, key).

Paths on the controller (:data:`CONTROLLER_PATH`) are expanded with ``~`` as the controller user's
home by :func:`controller_path`; paths on the Pi keep their ``~/`` (the Pi's home, resolved there).
Pure Python.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from pyinfra_ratos.data.hygiene import has_control

MAX_SHOWN = 60
MAX_PATH = 4096  # PATH_MAX on Linux
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")
_SHELL_CHARS = "$ ` \\ \" ' ; & | < >"
_SHELL = re.compile(r"[$`\\\"';&|<>]")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SECRET = re.compile(r"pass|secret|token|credential|private|apikey|(^|_)key($|_)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")  # https://user:<token>@host/...

Problem = Callable[[Any, str], Union[str, None]]  # (value, value as shown) -> what is wrong, or None


@dataclass(frozen=True)
class Rule:
    """One data key: ``problem(value, shown)`` says what is wrong (None: nothing); ``fix``: how to
    write it; ``optional``: None means unset (a host can so undo its group's value)."""

    problem: Problem
    fix: str
    optional: bool = False


def is_secret(field: str) -> bool:
    """Whether a key's value may be a secret, never to be printed (``ssh_password``, ``api_token`` ...)."""
    return bool(_SECRET.search(field))


def a_type(value: Any) -> str:
    """``value``'s type with its article: "an int", "a list"."""
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiouAEIOU' else 'a'} {name}"


def shown(value: Any, field: str = "") -> str:
    """``value`` as an error shows it: its repr cut to 60 characters, a URL's password masked; a
    secret field's not at all."""
    if is_secret(field):
        return "its value (not shown: the field may hold a secret)"
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(r"\1***@", value)
    if isinstance(value, str) and len(repr(value[:MAX_SHOWN])) > MAX_SHOWN:  # its start, quoted, and its length
        start = value[:MAX_SHOWN // 2]
        while len(repr(start)) > MAX_SHOWN - 20:  # an escaped character takes up to 10
            start = start[:-1]
        return f"{start!r}... ({len(value)} characters)"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - an inventory is user Python: even repr may fail
        text = f"<a {type(value).__name__}>"
    if len(text) > MAX_SHOWN:
        text = f"{text[:MAX_SHOWN - 24]}... ({len(text)} characters)"
    return text


def field_name(key: Any) -> str:
    """A key as part of a field name in an error: itself when plain, else as :func:`shown` shows it."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return key
    return shown(key)


def problems(rules: Mapping[str, Rule], data: Mapping[str, Any], keys: Collection[str] | None = None
             ) -> list[tuple[str, str]]:
    """``(key, "<problem>. Fix: <fix>")`` for each key of ``rules`` (or of ``keys``) that ``data`` sets badly."""
    found = []
    for key, rule in rules.items():
        if key in data and (keys is None or key in keys) and not (rule.optional and data[key] is None):
            # a rule is pure: asked first without the value's picture (dear to draw, on every key of
            # every host), then again with it for the message when there is a problem
            problem = rule.problem(data[key], "") and rule.problem(data[key], shown(data[key], key))
            if problem:
                found.append((key, f"{problem}. Fix: {rule.fix}"))
    return found


def did_you_mean(key: Any, known: Iterable[str], otherwise: str = "remove it") -> str:
    """The closest of ``known`` as a fix, else ``otherwise`` (long or non-string keys are not
    compared: difflib's time grows with the square of the length)."""
    comparable = isinstance(key, str) and len(key) < 100
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6) if comparable else []
    return f"did you mean {close[0]!r}?" if close else otherwise


# --- problems --------------------------------------------------------------------------------


def text(pattern: str, what: str, max_length: int = 255) -> Problem:
    """A string matching ``pattern`` as a whole, at most ``max_length`` characters."""
    compiled = re.compile(pattern)

    def problem(value: Any, shown_value: str) -> str | None:
        if isinstance(value, str) and len(value) <= max_length and compiled.fullmatch(value):
            return None
        return f"{shown_value} is not {what}"

    return problem


def one_of(choices: Collection[str] | Callable[[], Collection[str]], what: str) -> Problem:
    """One of ``choices`` (or of what the callable returns: constants of a module imported late)."""

    def problem(value: Any, shown_value: str) -> str | None:
        known = choices() if callable(choices) else choices
        if isinstance(value, str) and value in known:
            return None
        return f"{shown_value} is not {what} ({', '.join(known)})"

    return problem


def count(low: int, high: int) -> Problem:
    def problem(value: Any, shown_value: str) -> str | None:
        if not isinstance(value, bool) and isinstance(value, int) and low <= value <= high:
            return None
        return f"{shown_value} is not a whole number from {low} to {high}"

    return problem


def as_flag(value: Any) -> bool | None:
    """A yes/no value as given in data or on the command line; None when it is neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    return None


def flag(value: Any, shown_value: str) -> str | None:
    return None if as_flag(value) is not None else f"{shown_value} is not true or false"


def path(value: Any, shown_value: str) -> str | None:
    """A file system path: a non-empty string of printable characters but the shell's quoting and
    expansion ones (every path is quoted anyway: this is a second fence); ``~`` only as ``~/``."""
    if not isinstance(value, str):
        return f"{shown_value} is {a_type(value)}, not a path"
    if not value:
        return "'' is an empty path"
    if len(value) > MAX_PATH:
        return f"{shown_value} is longer than {MAX_PATH} characters"
    if "\0" in value:
        return f"{shown_value} contains a NUL byte"
    if has_control(value):
        return f"{shown_value} contains a control character (a line break?)"
    if _SHELL.search(value):
        return f"{shown_value} contains one of {_SHELL_CHARS}, which no printer's folder needs"
    if value.startswith("~") and value != "~" and not value.startswith("~/"):
        return f"{shown_value} starts with '~name', which is not expanded"
    return None


def controller_path(value: str) -> str:
    """A path on the controller, ``~`` expanded (its checks passed: see :func:`path`)."""
    return os.path.expanduser(value)


def names(pattern: str, what: str) -> Problem:
    """A list (or tuple) of strings, each matching ``pattern`` whole."""
    item = text(pattern, what)

    def problem(value: Any, shown_value: str) -> str | None:
        if not isinstance(value, (list, tuple)):
            return f"{shown_value} is not a list of {what}s"
        for entry in value:
            if item(entry, ""):
                return f"{shown(entry)} is not {what}"
        return None

    return problem


COMMIT = Rule(text(r"[0-9a-f]{40}", "a full commit hash"),
              "use the 40 lower-case hex digits of `git rev-parse HEAD` in the fleet's Klipper checkout",
              optional=True)
SOURCE = Rule(path, "write the path of a Klipper git checkout on this controller, e.g. \"~/klipper-fleet\"",
              optional=True)
_NAME_MAX = 255  # bytes of a file name (Linux, macOS)


def host_name_problem(name: Any) -> str | None:
    """Why an inventory host name cannot name its backup folder (``<config_backups>/<name>/``), or None."""
    shown_name = shown(name)
    if not isinstance(name, str) or not name:
        return f"{shown_name} cannot name a folder"
    if name in (".", "..") or "/" in name or "\\" in name:
        return f"{shown_name} is not a folder name: its backups would land outside config_backups"
    if not name.isprintable() or name != name.strip() or name.startswith("-"):
        return f"{shown_name} has unprintable characters, surrounding spaces or a leading '-'"
    if len(name.encode("utf-8", "surrogatepass")) > _NAME_MAX:
        return f"{shown_name} is longer than a folder name may be ({_NAME_MAX} bytes)"
    return None


HOST_NAME_FIX = "name the host with letters, digits, '.', '-' or '_' (its address goes in ssh_hostname)"
