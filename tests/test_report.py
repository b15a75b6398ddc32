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
    for host in ("vcore-01", "vcore-02", "vcore-03", "vcore-04", "vcore-05"):
        add_printer(report, host, groups=["canary"] if host == "vcore-01" else ["production"],
                    batch=0 if host == "vcore-01" else 1)
    set_printer(report, "vcore-01", status="changed", duration_s=12.34,
                klipper={"before": OLD, "after": NEW, "action": "updated"}, config={"action": "written"},
                boards=[flash("vcore-01"), {**flash("vcore-01").to_dict(), "mcu_name": "toolboard_t0",
                                            "board": "btt-ebb42-12", "port": "1-1.2"}])
    set_printer(report, "vcore-02", status="converged", klipper={"before": NEW, "after": NEW, "action": "unchanged"},
                config={"action": "unchanged"}, boards=[flash("vcore-02", "skipped", "already runs v0.13", NEW, NEW)])
    set_printer(report, "vcore-03", status="skipped", reason="printing benchy.gcode: never stopped",
                boards=[flash("vcore-03", "refused", "the printer is printing", OLD, None)])
    set_printer(report, "vcore-04", status="failed", klipper={"before": OLD, "after": NEW, "action": "updated"},
                boards=[flash("vcore-04", "failed", "dfu-util exited 74 & the board <stayed> in DFU", OLD, None)])
    set_printer(report, "vcore-05", status="unreachable", reason="Could not connect (timed out)")
    return finish(report, stopped_early={"after_batch": 1, "reason": "1 of 4 printers failed (25% > 20% allowed)"},
                  finished="2026-11-21T12:05:00Z")


def test_the_summary_counts_every_status_and_unreachable_is_a_failure() -> None:
    report = fleet()
    assert report["summary"] == {"printers": 5, "converged": 1, "changed": 1, "skipped": 1, "failed": 2,
                                 "not_run": 0, "unreachable": 1}
    assert report["exit_code"] == 1 and report["finished"] == "2026-11-21T12:05:00Z"


def test_a_fleet_that_converged_or_changed_exits_0_and_not_run_printers_exit_1() -> None:
    report = new_report("update", "inv.py")
    add_printer(report, "a", status="converged")
    add_printer(report, "b", status="changed")
    assert finish(report)["exit_code"] == 0
    add_printer(report, "c")
    assert finish(report)["exit_code"] == 1 and report["summary"]["not_run"] == 1


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
    entry = fleet()["printers"][0]
    assert set(entry) == {"host", "groups", "batch", "status", "reason", "duration_s", "klipper", "config", "boards"}
    assert entry["klipper"] == {"before": OLD, "after": NEW, "action": "updated", "reason": ""}
    assert entry["config"] == {"action": "written", "reason": ""}
    assert entry["boards"][0] == flash("vcore-01").to_dict()
    untouched = fleet()["printers"][4]
    assert untouched["klipper"]["action"] == "skipped" and untouched["boards"] == []


def test_the_terminal_table_has_one_line_per_board_with_status_words() -> None:
    text = render_table(fleet())
    lines = text.splitlines()
    assert lines[0].split() == ["HOST", "BATCH", "STATUS", "KLIPPER", "UPDATE", "CONFIG", "MCU", "BOARD", "PORT", "FIRMWARE",
                                "ACTION", "METHOD", "VERIFIED", "TIME", "REASON"]
    rows = [line for line in lines[1:] if line.startswith("vcore-")]
    assert [row.split()[0] for row in rows] == ["vcore-01", "vcore-01", "vcore-02", "vcore-03", "vcore-04", "vcore-05"]
    first = rows[0].split()
    assert first[:8] == ["vcore-01", "0", "changed", OLD, "->", NEW, "updated", "written"]
    assert "flashed" in first and "dfu-util" in first
    assert "toolboard_t0" in rows[1] and "btt-ebb42-12" in rows[1]
    assert rows[3].split()[2] == "skipped" and "refused" in rows[3] and rows[3].endswith("printing benchy.gcode: never stopped; the printer is printing")
    assert rows[5].split()[2] == "unreachable" and rows[5].endswith("Could not connect (timed out)")
    # fixed-width: every column starts at the same offset on every line
    offset = lines[0].index("ACTION")
    assert {row[offset:].split()[0] for row in rows[:5]} == {"flashed", "skipped", "refused", "failed"}
    assert "5 printers: 1 converged, 1 changed, 1 skipped, 2 failed (1 unreachable)" in text
    assert "STOPPED EARLY after batch 1: 1 of 4 printers failed" in text
    assert "\x1b[" not in text  # words, not colours


def test_the_html_page_is_self_contained_and_escapes_what_it_shows() -> None:
    page = render_html(fleet())
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"<script|<link|\bsrc=|url\(|https?://", page)
    assert "dfu-util exited 74 &amp; the board &lt;stayed&gt; in DFU" in page
    assert "<stayed>" not in page
    assert 'rowspan="2"' in page  # vcore-01's two boards share its printer cells
    for word in ("changed", "converged", "skipped", "refused", "failed", "unreachable", "flashed"):
        assert f'class="s s-{word}">{word}</span>' in page
    assert "Stopped early" in page and f"<code>{OLD}</code> -&gt; <code>{NEW}</code>" in page


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


def test_status_rows_compare_each_mcu_with_the_host() -> None:
    boards, _ = parse_boards([{"board": "btt-octopus-pro-h723-11", "port": "1-1.1"}, {"board": "btt-ebb42-12"}],
                             load_catalog())
    up = {"version": NEW, "connected": True, "matches_host": True}
    behind = {"version": OLD, "connected": True, "matches_host": False}
    good = status_rows(boards, fact(audit({"mcu": up, "toolboard_t0": up})))
    assert good["converged"] and [b["firmware"] for b in good["boards"]] == ["up to date", "up to date"]
    late = status_rows(boards, fact(audit({"mcu": behind}, busy=True, online=False)))
    assert [b["firmware"] for b in late["boards"]] == ["behind", "unknown"]
    assert (late["converged"], late["busy"], late["network"], late["boards"][1]["mode"]) == (False, True, "offline", "absent")
    gone = status_rows(boards, fact(None, "unreachable", "Could not connect"))
    assert (gone["reachable"], gone["converged"], gone["busy"]) == (False, False, None)
    table = render_status({"p1": good, "p2": late, "p3": gone})
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["HOST", "REACHABLE", "NETWORK", "KLIPPY", "BUSY"]
    assert lines[1].split()[:6] == ["p1", "yes", "online", "ready", "no", "mcu"] and lines[1].endswith("up to date")
    assert lines[3].split()[:5] == ["p2", "yes", "offline", "ready", "yes"] and lines[3].endswith("behind")
    assert lines[5].startswith("p3") and lines[5].endswith("unreachable: Could not connect")
    assert "3 printers: 1 converged, 1 not converged, 1 unreachable, 1 busy" in table
