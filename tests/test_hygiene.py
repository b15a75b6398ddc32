"""Strings from a Pi never drive the operator's terminal: stripped in tables, escaped in JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.fleet.hostdata import parse_boards
from pyinfra_ratos.data.hygiene import sanitise_text
from pyinfra_ratos.fleet.report import (
    add_printer, finish, new_report, render_status, render_table, status_rows, write_report,
)

from test_report import audit, fact  # pytest puts tests/ on sys.path

# a version string as a hostile (or broken) Pi could report it: colour, title change, bell, CR
HOSTILE = "v0.13.0\x1b[31m-evil\x1b]0;pwned\x07\r\x9b2J\u202e"
CONTROL = [chr(c) for c in (*range(0x00, 0x09), *range(0x0B, 0x0D), *range(0x0E, 0x20), *range(0x7F, 0xA0))]


@pytest.mark.parametrize("char", CONTROL + ["\u202e", "\u2066", "\u200f"])
def test_every_control_character_is_dropped(char: str) -> None:
    assert sanitise_text(f"a{char}b") == "ab"


def test_line_breaks_and_tabs_become_spaces_unless_lines_are_kept() -> None:
    assert sanitise_text("a\tb\r\nc") == "a b  c"
    assert sanitise_text("host a: x\x1b[2J\nhost b: y", keep_newlines=True) == "host a: x[2J\nhost b: y"


def test_printable_text_is_kept_as_it_is() -> None:
    text = "v0.13.0-3-gb846a96 é ü 日本 <b> & 'q' \"d\""
    assert sanitise_text(text) == text


def _raw_controls(text: str) -> list[str]:
    return [char for char in text if char in CONTROL or char == "\u202e"]


def test_an_escape_in_an_mcu_version_is_stripped_from_the_status_table() -> None:
    boards, _ = parse_boards([{"board": "btt-octopus-pro-h723-11", "port": "1-1.1"}], load_catalog())
    mcu = {"version": HOSTILE, "connected": True, "matches_host": False}
    status = status_rows(boards, fact(audit({"mcu": mcu})))
    table = render_status({"p1": status, "p2": status_rows(boards, fact(None, "failed", f"boom {HOSTILE}"))})
    assert _raw_controls(table.replace("\n", "")) == []
    assert "v0.13.0[31m-evil]0;pwned 2J" in table


def test_an_escape_in_an_mcu_version_is_escaped_in_report_json_and_stripped_from_the_update_table(
    tmp_path: Path,
) -> None:
    report = new_report("update", "/abs/inventory.py")
    add_printer(report, "p1", status="failed", reason=f"klippy said {HOSTILE}",
                klipper={"before": HOSTILE, "after": HOSTILE, "action": "unchanged"},
                boards=[{"mcu_name": "mcu", "board": "btt-octopus-pro-h723-11", "port": "1-1.1",
                         "before_version": HOSTILE, "after_version": None, "action": "failed", "reason": HOSTILE}])
    finish(report)
    assert _raw_controls(render_table(report).replace("\n", "")) == []
    written = write_report(report, tmp_path)["json"].read_text(encoding="utf-8")
    assert "\x1b" not in written and "\x07" not in written and "\\u001b[31m" in written
    assert json.loads(written)["printers"][0]["klipper"]["before"] == HOSTILE  # escaped, not lost
