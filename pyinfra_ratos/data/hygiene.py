"""Text that came from a Pi or an inventory, made safe to print on the operator's terminal.

A Pi reports strings the controller prints back (MCU versions, klippy states, error lines): an
ESC or BEL in them would drive the operator's terminal (colours, cursor moves, the window title,
on some terminals more). :func:`sanitise_text` removes every C0 and C1 control character, DEL,
and the Unicode controls that reorder text on screen (bidi overrides). JSON (``json.dumps``
escapes them as ``\\u001b``) and HTML (``html.escape``) need no help. Pure Python.
"""

from __future__ import annotations

import re

# C0 (but tab, line feed, carriage return: spaces in a cell), DEL, C1, and the bidi controls
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_BREAK = re.compile("[\t\n\r]")


def sanitise_text(text: str, keep_newlines: bool = False) -> str:
    """``text`` without control characters: tab, CR and LF become a space (``keep_newlines``: LF
    stays, for a multi-line message), every other one is dropped."""
    if keep_newlines:
        return "\n".join(sanitise_text(line) for line in text.split("\n"))
    return _CONTROL.sub("", _BREAK.sub(" ", text))


def has_control(text: str) -> bool:
    """Whether :func:`sanitise_text` would change ``text`` beyond spaces (tab, CR, LF count too)."""
    return bool(_CONTROL.search(text) or _BREAK.search(text))
