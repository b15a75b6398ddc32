"""How a fact runs the on-Pi probe (``remote.py``) and reads its one line of JSON back.

Every fact command has the shape::

    python3 -I -S -c '<remote.py, compressed>' <probe> '<json args>' || echo '{}'

so it exits 0 even without python3, user values travel as one quoted JSON argument (never as
code), and the output is machine-readable. Parsing helpers here are pure and never raise.

The script travels zlib-compressed and base64-encoded (:data:`SHIPPED`, ~21 KB instead of ~53 KB
of source, whose quotes the shell quoting also multiplies): every fact command of every printer
carries it, and the controller's SSH work grows with the bytes it sends (paramiko packs and
encrypts in Python). Unpacking costs ~0.6 ms (measured here); zlib and binascii are in every CPython.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pyinfra.api import QuoteString, StringCommand

from pyinfra_ratos.firmware import canbus


def _load_source() -> str:
    # Comment-only lines are dropped: the script travels in every SSH command. The script has no
    # multi-line string whose lines start with "#", so this never changes what it does.
    # the CAN code (pyinfra_ratos/firmware/canbus.py, stdlib) goes first: probe_can uses it
    text = Path(canbus.__file__).read_text(encoding="utf-8") + "\n" + (Path(__file__).with_name("remote.py")).read_text(encoding="utf-8")
    return "\n".join(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")) + "\n"


def shipped(source: str) -> str:
    """``source`` as the ``-c`` program that runs it: compressed, encoded, unpacked on the Pi."""
    blob = base64.b64encode(zlib.compress(source.encode("utf-8"), 9)).decode("ascii")
    return f"import zlib,binascii;exec(zlib.decompress(binascii.a2b_base64('{blob}')))"


SOURCE = _load_source()
SHIPPED = shipped(SOURCE)
INTERPRETER_FLAGS = ("-I", "-S")
# How fixtures write the script: the recorded commands stay readable and survive script edits
# (the script itself is tested on its own and on the virtual farm).
SOURCE_PLACEHOLDER = "$PROBE"


def probe_command(probe: str, args: Mapping[str, Any] | None = None) -> StringCommand:
    # -I: no PYTHON* variables, no user site, and the working directory (the user's home) not on
    # sys.path, so no stray json.py shadows the standard library; -S: no site import (3 ms a Pi)
    bits: list[Any] = ["python3", *INTERPRETER_FLAGS, "-c", QuoteString(SHIPPED), probe]
    if args is not None:
        bits.append(QuoteString(json.dumps(dict(args), sort_keys=True)))
    return StringCommand(*bits, "||", "echo", "'{}'")


def json_document(lines: Iterable[str]) -> dict[str, Any]:
    """The last output line that is a JSON object (a crash mid-way leaves ``{}`` after it)."""
    for line in reversed(list(lines)):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return {}


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def as_int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def expand_hosts(hosts: str | Iterable[str] | None) -> list[str]:
    """``hosts`` from Python (a list) or from the CLI (``hosts=a.com,b.com:9418``)."""
    if not hosts:
        return []
    if isinstance(hosts, str):
        hosts = hosts.split(",")
    return [h.strip() for h in hosts if h and h.strip()]
