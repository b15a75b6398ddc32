"""The fleet report: built by the orchestration, written as JSON and one self-contained HTML page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.fleet.hostdata import parse_boards
from pyinfra_ratos.fleet.report import (
    add_printer, finish, new_report, render_html, render_status, render_table, set_printer, status_rows,
    write_report,
)
from pyinfra_ratos.run.results import FlashRecord

OLD, NEW = "v0.12.0-0-g097b935", "v0.13.0-3-gb846a96"
COMMIT = "b846a96b558d6af7d6635658cfd38aadb2c88f31"


def flash(host: str, action: str = "flashed", reason: str = "", before: str = OLD, after: str | None = NEW) -> FlashRecord:
    return FlashRecord(host=host, board="btt-octopus-pro-h723-11", port="1-1.1", mcu_name="mcu",
                       before_version=before, after_version=after, action=action,
                       method="dfu-util" if action == "flashed" else None, duration_s=3.14,
                       verified=action == "flashed", read_back=None, reason=reason)


def fleet() -> dict[str, Any]:
    report = new_report("update", "/abs/inventory.py", pinned_commit=COMMIT, pinned_version=NEW,
                        started="2026-11-21T12:00:00Z")
    for host in ("vcore-01", "vcore-02", "vcore-03", "vcore-04", "vcore-05", "vcore-06"):
        add_printer(report, host, groups=["canary"] if host == "vcore-01" else ["production"],
                    batch=1 if host == "vcore-01" else 2)
    set_printer(report, "vcore-01", status="changed", duration_s=12.34, klippy_state="ready",
                klipper={"before": OLD, "after": NEW, "action": "updated"}, config={"action": "written"},
                boards=[flash("vcore-01"), {**flash("vcore-01").to_dict(), "mcu_name": "toolboard_t0",
                                            "board": "btt-ebb42-12", "port": "1-1.2"}])
    set_printer(report, "vcore-02", status="converged", klipper={"before": NEW, "after": NEW, "action": "unchanged"},
                config={"action": "unchanged"}, boards=[flash("vcore-02", "skipped", "already runs v0.13", NEW, NEW)])
    set_printer(report, "vcore-03", status="busy", reason="printing benchy.gcode: never stopped",
                boards=[flash("vcore-03", "refused", "the printer is printing", OLD, None)])
    set_printer(report, "vcore-04", status="failed", klipper={"before": OLD, "after": NEW, "action": "updated"},
                todo="put the board in DFU by hand and rerun",
                boards=[flash("vcore-04", "failed", "dfu-util exited 74 & the board <stayed> in DFU", OLD, None)])
    set_printer(report, "vcore-05", status="unreachable", reason="Could not connect (timed out)")
    set_printer(report, "vcore-06", status="held", reason="not updating Klipper: btt-octopus-pro-h723: never "
                "flashed unattended", boards=[flash("vcore-06", "refused", "never flashed unattended", OLD, None)])
    return finish(report, stopped_early={"after_batch": 2, "reason": "1 of 5 printers failed (20% > 10% allowed)"},
                  finished="2026-11-21T12:05:00Z")


def test_the_summary_counts_every_status_and_unreachable_is_a_failure() -> None:
    report = fleet()
    assert report["summary"] == {"printers": 6, "converged": 1, "changed": 1, "busy": 1, "held": 1, "skipped": 0,
                                 "failed": 2, "not_run": 0, "unreachable": 1}
    assert report["exit_code"] == 1 and report["finished"] == "2026-11-21T12:05:00Z"


def test_exit_codes_converged_changes_failed_and_busy_counted_apart() -> None:
    report = new_report("update", "inv.py")
    add_printer(report, "a", status="converged")
    assert finish(report)["exit_code"] == 0
    add_printer(report, "b", status="changed")
    assert finish(report)["exit_code"] == 3
    add_printer(report, "c", status="busy")
    add_printer(report, "d", status="held")
    assert finish(report)["exit_code"] == 3  # a farm that always prints one printer still runs clean
    assert finish(report, fail_on_busy=True)["exit_code"] == 1
    add_printer(report, "e")
    assert finish(report)["exit_code"] == 1 and report["summary"]["not_run"] == 1
    assert finish(report, interrupted={"signal": "SIGINT", "after_batch": 1})["exit_code"] == 130


def test_typos_in_statuses_and_actions_are_refused() -> None:
    report = new_report("update", "inv.py")
    with pytest.raises(ValueError, match="status 'done'"):
        add_printer(report, "a", status="done")
    add_printer(report, "a")
    with pytest.raises(ValueError, match="klipper action"):
        set_printer(report, "a", klipper={"action": "upgraded"})
    with pytest.raises(ValueError, match="unknown printer fields"):
        set_printer(report, "a", duration=1)
    with pytest.raises(KeyError):
        set_printer(report, "b", status="failed")
    with pytest.raises(ValueError, match="already"):
        add_printer(report, "a")


def test_the_report_entries_have_the_contract_shape() -> None:
    report = fleet()
    entry = report["printers"][0]
    assert set(entry) == {"host", "groups", "batch", "status", "reason", "todo", "next", "duration_s",
                          "klippy_state", "klipper", "config", "boards"}
    assert entry["klipper"] == {"before": OLD, "after": NEW, "action": "updated", "reason": ""}
    assert entry["config"] == {"action": "written", "reason": ""}
    assert entry["boards"][0] == flash("vcore-01").to_dict()
    assert report["printers"][4]["klipper"] is None and report["printers"][4]["boards"] == []


def test_every_printer_not_done_has_its_exact_next_command() -> None:
    report = fleet()
    steps = {item["host"]: item["next"] for item in report["attention"]}
    assert list(steps) == ["vcore-03", "vcore-04", "vcore-05", "vcore-06"]
    assert steps["vcore-03"] == "when the printer is idle: ratos-fleet update /abs/inventory.py --limit vcore-03"
    assert steps["vcore-04"].startswith("put the board in DFU by hand and rerun; then: ratos-fleet update")
    assert steps["vcore-06"].endswith("--limit vcore-06 --attended-flash")


def test_the_terminal_table_fits_120_columns_with_reasons_once_on_their_own_line() -> None:
    text = render_table(fleet())
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert lines[1].split() == ["BATCH", "PRINTER", "STATUS", "KLIPPY", "KLIPPER", "CONFIG", "TIME"]
    assert lines[2].split() == ["MCU", "BOARD", "PORT", "FIRMWARE", "ACTION", "VERIFIED"]
    first = lines[3].split()
    assert first[:7] == ["1", "vcore-01", "updated", "ready", OLD, "->", NEW]
    assert lines[4].split()[:3] == ["mcu", "btt-octopus-pro-h723-11", "1-1.1"] and "flashed" in lines[4]
    assert text.count("printing benchy.gcode: never stopped") == 2  # the table's reason line, the attention block
    assert "      printing benchy.gcode: never stopped; the printer is printing" in lines
    words = {line.split()[1]: line.split()[2] for line in lines if line[:1].isdigit() and "vcore" in line}
    assert words == {"vcore-01": "updated", "vcore-02": "up", "vcore-03": "not", "vcore-04": "FAILED",
                     "vcore-05": "unreachable", "vcore-06": "held"}
    assert "6 printers: 1 up to date, 1 updated, 1 busy (not done), 1 held for --attended-flash, 2 failed" in text
    assert "STOPPED EARLY after batch 2: 1 of 5 printers failed" in text
    assert "NEEDS ATTENTION: 4 printers" in text
    assert "\x1b[" not in text  # words, not colours


def test_plan_speaks_in_the_future_tense() -> None:
    report = new_report("plan", "/abs/inventory.py", pinned_commit=COMMIT, pinned_version=NEW)
    add_printer(report, "p", status="changed", klipper={"before": OLD, "after": NEW, "action": "updated"},
                config={"action": "written"}, boards=[flash("p", "planned", "", OLD, NEW)])
    text = render_table(finish(report))
    assert "will update" in text and "will write" in text and "will flash" in text
    assert f"{OLD} -> {NEW}" in text and "updated" not in text.replace("will update", "")
    assert finish(report)["exit_code"] == 3


def test_the_html_page_is_self_contained_and_escapes_what_it_shows() -> None:
    page = render_html(fleet())
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "default-src 'none'" in page
    assert not re.search(r"<script|<link|\bsrc=|url\(|https?://", page)
    assert "dfu-util exited 74 &amp; the board &lt;stayed&gt; in DFU" in page
    assert "<stayed>" not in page
    assert page.index('id="attention"') < page.index("<table")
    assert '<span class="s s-ok">up to date</span>' in page and '<span class="s s-wait">held</span>' in page
    assert '<span class="s s-bad">FAILED</span>' in page
    assert "Stopped early" in page and f"<code>{OLD} -&gt; {NEW}</code>" in page
    assert '<td data-label="Klippy">ready</td>' in page


def test_write_report_writes_json_and_html(tmp_path: Path) -> None:
    report = fleet()
    paths = write_report(report, tmp_path / "reports" / "run-1")
    assert sorted(p.name for p in paths.values()) == ["report.html", "report.json"]
    assert json.loads(paths["json"].read_text()) == report
    assert paths["html"].read_text() == render_html(report)


def fact(value: Any, status: str = "ok", error: str = "") -> SimpleNamespace:
    return SimpleNamespace(value=value, status=status, error=error, ok=status == "ok")


def audit(mcus: dict[str, Any], mode: str = "klipper", busy: bool = False, online: bool = True) -> dict[str, Any]:
    return {
        "boards": {"1-1.1": {"port": "1-1.1", "mode": mode}},
        "klipper": {"version": NEW},
        "mcu_firmware": {"source": "moonraker", "host_version": NEW, "klippy_state": "ready", "mcus": mcus},
        "activity": {"busy": busy, "klippy_state": "ready"},
        "network": {"default_route": online},
    }


def test_status_rows_compare_each_mcu_and_the_host_with_the_pin() -> None:
    boards, _ = parse_boards([{"board": "btt-octopus-pro-h723-11", "port": "1-1.1"}, {"board": "btt-ebb42-12"}],
                             load_catalog())
    up = {"version": NEW, "connected": True, "matches_host": True}
    behind = {"version": OLD, "connected": True, "matches_host": False}
    stopped = {"version": NEW, "connected": False, "matches_host": None}  # read from klippy.log
    good = status_rows(boards, fact(audit({"mcu": up, "toolboard_t0": stopped})), COMMIT, None, config=UP_TO_DATE)
    assert good["converged"] and [b["firmware"] for b in good["boards"]] == ["at pin", "at pin"]
    late = status_rows(boards, fact(audit({"mcu": behind}, busy=True, online=False)), COMMIT, NEW,
                       config=WILL_WRITE)
    assert [b["firmware"] for b in late["boards"]] == ["behind", "unknown"]
    assert (late["converged"], late["busy"], late["network"], late["boards"][1]["mode"]) == (False, True, "offline", "absent")
    old_host = audit({"mcu": behind, "toolboard_t0": behind})
    old_host["mcu_firmware"]["host_version"] = old_host["klipper"]["version"] = OLD
    matched = status_rows(boards, fact(old_host), COMMIT, NEW, config=UP_TO_DATE)  # MCUs match their host, behind
    assert (matched["klipper"], matched["converged"]) == ("behind", False)
    gone = status_rows(boards, fact(None, "unreachable", "Could not connect"), COMMIT)
    assert (gone["reachable"], gone["converged"], gone["busy"]) == (False, False, None)
    table = render_status({"p1": good, "p2": late, "p3": gone, "p4": matched}, pin=NEW)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert lines[0] == f"fleet pinned to Klipper {NEW}"
    assert lines[1].split() == ["PRINTER", "NETWORK", "KLIPPY", "BUSY", "KLIPPER", "AT", "PIN", "CONFIG"]
    assert lines[3].split() == ["p1", "online", "ready", "no", NEW, "at", "pin", "up", "to", "date"]
    assert lines[4].split()[:3] == ["mcu", "btt-octopus-pro-h723-11", "1-1.1"] and lines[4].endswith("at pin")
    assert "4 printers: 1 converged, 2 behind the pin, 1 with configuration to write, 1 unreachable or unread, " \
           "1 busy" in table
    assert "behind the pin: p2, p4" in table
    assert "configuration not as update writes it: p2 (will write)" in table
    assert "      update would write printer.cfg (adopted)" in table  # the reason, under its printer


UP_TO_DATE = {"state": "up to date", "converged": True, "files": [], "reason": ""}
WILL_WRITE = {"state": "will write", "converged": False, "files": ["printer.cfg"],
              "reason": "update would write printer.cfg (adopted)"}


def test_a_printer_at_the_pin_whose_configuration_would_be_rewritten_is_not_converged() -> None:
    boards, _ = parse_boards([{"board": "btt-octopus-pro-h723-11", "port": "1-1.1"}], load_catalog())
    up = {"mcu": {"version": NEW, "connected": True, "matches_host": True}}
    pinned = status_rows(boards, fact(audit(up)), COMMIT, NEW, config=WILL_WRITE)
    assert (pinned["at_pin"], pinned["converged"]) == (True, False)
    unread = status_rows(boards, fact(audit(up)), COMMIT, NEW)  # the configuration not read: never "converged"
    assert (unread["at_pin"], unread["converged"], unread["config"]["state"]) == (True, False, "unknown")
    assert status_rows(boards, fact(audit(up)), COMMIT, NEW, config=UP_TO_DATE)["converged"] is True
