"""The fleet report: built during a run, written as ``report.json`` and ``report.html``, shown as a table.

Pure Python (no pyinfra). The update orchestration builds the report with four calls::

    report = new_report("update", "/abs/inventory.py", pinned_commit=commit, pinned_version=version)
    add_printer(report, "vcore-01", groups=["canary"], batch=1)          # status "not-run" until known
    set_printer(report, "vcore-01", status="changed", duration_s=12.3, klippy_state="ready",
                klipper={"before": "v0.12.0-0-g097b935", "after": version, "action": "updated"},
                config={"action": "written"}, boards=[flash_record, ...])   # FlashRecord or dict
    finish(report, stopped_early={"after_batch": 2, "reason": "..."})      # summary, exit code, time
    paths = write_report(report, "reports/2026-11-21")                     # report.json, report.html
    print(render_table(report))

Shape (the contract with the orchestration)::

    {"command", "started", "finished", "inventory", "pinned_commit", "pinned_version", "exit_code",
     "exit_meaning", "converged_means", "stopped_early": null | {"after_batch", "reason"},
     "interrupted": null | {"signal", "after_batch"},
     "summary": {"printers", "converged", "changed", "busy", "held", "skipped", "failed", "not_run",
                 "unreachable"},
     "attention": [{"host", "status", "reason", "next"}],
     "printers": [{"host", "groups", "batch", "status", "reason", "next", "duration_s", "klippy_state",
                   "klipper": {"before", "after", "action", "reason"}, "config": {"action", "reason"},
                   "boards": [FlashRecord.to_dict(), ...]}]}

Printer statuses, one meaning each: ``converged`` (was already at the pin), ``changed`` (``update``:
brought to it; ``plan``: would be), ``busy`` (printing, paused or state unknown: not done, pending),
``held`` (a board that is never flashed unattended: pending until ``--attended-flash``), ``skipped``
(left as it was for another reason), ``failed``, ``unreachable``, ``not-run`` (never started: the
failure threshold or an interrupt). Batches are numbered from 1, the canary batch first.
``summary.failed`` counts unreachable printers too; ``summary.unreachable`` says how many were.
Exit codes: :mod:`pyinfra_ratos.fleet.exit_codes`.

The terminal tables live in :mod:`pyinfra_ratos.fleet.report_text` (re-exported here).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyinfra_ratos.fleet import exit_codes
from pyinfra_ratos.firmware.converged import MEANING
from pyinfra_ratos.run.results import FlashRecord

PRINTER_STATUSES = ("changed", "converged", "busy", "held", "skipped", "failed", "unreachable", "not-run")
KLIPPER_ACTIONS = ("updated", "unchanged", "skipped", "failed")
CONFIG_ACTIONS = ("written", "unchanged", "skipped", "failed")
GOOD = ("changed", "converged")          # a good outcome
PENDING = ("busy", "held")               # not done, counted apart (fatal with --fail-on-busy)
_PRINTER_FIELDS = ("groups", "batch", "status", "reason", "todo", "next", "duration_s", "klippy_state",
                   "klipper", "config", "boards")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_report(
    command: str, inventory: str | Path, pinned_commit: str | None = None, pinned_version: str | None = None,
    started: str | None = None,
) -> dict[str, Any]:
    """An empty report of a run that starts now (``started``: ISO 8601 UTC, default now)."""
    return {
        "command": command, "started": started or _now(), "finished": None, "inventory": str(inventory),
        "pinned_commit": pinned_commit, "pinned_version": pinned_version, "exit_code": None, "exit_meaning": "",
        "converged_means": MEANING, "stopped_early": None, "interrupted": None, "summary": summarise([]),
        "attention": [], "printers": [],
    }


def _printer(report: Mapping[str, Any], host: str) -> dict[str, Any]:
    for entry in report["printers"]:
        if entry["host"] == host:
            return entry
    raise KeyError(f"{host!r} is not in the report: add_printer() it first")


def _checked(entry: dict[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(_PRINTER_FIELDS))
    if unknown:
        raise ValueError(f"unknown printer fields {unknown}: use {', '.join(_PRINTER_FIELDS)}")
    for key, value in fields.items():
        if key == "klipper" and value is not None:
            value = {"before": None, "after": None, "action": "skipped", "reason": "", **value}
            if value["action"] not in KLIPPER_ACTIONS:
                raise ValueError(f"klipper action {value['action']!r} is not one of {', '.join(KLIPPER_ACTIONS)}")
        elif key == "config" and value is not None:
            value = {"action": "skipped", "reason": "", **value}
            if value["action"] not in CONFIG_ACTIONS:
                raise ValueError(f"config action {value['action']!r} is not one of {', '.join(CONFIG_ACTIONS)}")
        elif key == "boards":
            value = [board.to_dict() if isinstance(board, FlashRecord) else dict(board) for board in value]
        elif key == "groups":
            value = list(value)
        elif key == "status" and value not in PRINTER_STATUSES:
            # a typo would silently vanish from the summary counts
            raise ValueError(f"status {value!r} is not one of {', '.join(PRINTER_STATUSES)}")
        elif key == "duration_s":
            value = round(float(value), 3)
        entry[key] = value
    return entry


def add_printer(report: dict[str, Any], host: str, status: str = "not-run", **fields: Any) -> dict[str, Any]:
    """Add a printer (fields: groups, batch, reason, duration_s, klippy_state, klipper, config, boards)."""
    if any(entry["host"] == host for entry in report["printers"]):
        raise ValueError(f"{host!r} is already in the report: use set_printer()")
    entry = _checked({"host": host}, {"groups": [], "batch": 1, "status": status, "reason": "", "todo": "", "next": "",
                                      "duration_s": 0.0, "klippy_state": "", "klipper": None, "config": None,
                                      "boards": []})
    report["printers"].append(_checked(entry, fields))
    return entry


def set_printer(report: dict[str, Any], host: str, **fields: Any) -> dict[str, Any]:
    """Change some fields of a printer already in the report; returns its entry."""
    return _checked(_printer(report, host), fields)


def summarise(printers: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(("printers", "converged", "changed", "busy", "held", "skipped", "failed", "not_run",
                            "unreachable"), 0)
    for entry in printers:
        counts["printers"] += 1
        status = entry["status"]
        if status == "unreachable":
            counts["unreachable"] += 1
            counts["failed"] += 1
        else:
            counts[status.replace("-", "_")] += 1
    return counts


def next_command(report: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """The exact command (or step, then command) that takes this printer further; "" when none."""
    rerun = f"ratos-fleet update {shlex.quote(str(report.get('inventory') or 'INVENTORY'))} " \
            f"--limit {shlex.quote(entry['host'])}"
    status = entry["status"]
    todo = entry.get("todo") or ""
    if status in GOOD:  # done, or (plan) what update does anyway: not the operator's business
        return ""
    if status == "held":
        return f"with someone watching the printer: {rerun} --attended-flash"
    if status == "busy":
        return f"when the printer is idle: {rerun}"
    if status == "unreachable":
        return f"check the Pi is on and reachable over SSH, then: {rerun}"
    if todo:
        return f"{todo}; then: {rerun}"
    return rerun


def finish(
    report: dict[str, Any], exit_code: int | None = None, stopped_early: Mapping[str, Any] | None = None,
    finished: str | None = None, fail_on_busy: bool = False, interrupted: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Close the report: summary, attention list, finish time and exit code (default: from the
    statuses, :mod:`pyinfra_ratos.fleet.exit_codes`)."""
    report["summary"] = summarise(report["printers"])
    if stopped_early is not None:
        report["stopped_early"] = dict(stopped_early)
    if interrupted is not None:
        report["interrupted"] = dict(interrupted)
    report["finished"] = finished or _now()
    for entry in report["printers"]:
        entry["next"] = next_command(report, entry)
    report["attention"] = [{"host": e["host"], "status": e["status"], "reason": e.get("reason") or "",
                            "next": e["next"]} for e in report["printers"] if e["next"]]
    if exit_code is None:
        exit_code = outcome_code(report["printers"], fail_on_busy, interrupted=report["interrupted"] is not None)
    report["exit_code"] = exit_code
    report["exit_meaning"] = _MEANINGS.get(exit_code, "")
    return report


_MEANINGS = {
    exit_codes.CONVERGED: "every printer converged",
    exit_codes.FAILED: "some printers failed, were unreachable or not run",
    exit_codes.BAD_INPUT: "bad input",
    exit_codes.CHANGES: "no failure; changes pending or made",
    exit_codes.INTERRUPTED: "interrupted: the printers not started are not-run",
}


def outcome_code(printers: Iterable[Mapping[str, Any]], fail_on_busy: bool = False, interrupted: bool = False) -> int:
    statuses = {entry["status"] for entry in printers}
    if interrupted:
        return exit_codes.INTERRUPTED
    if statuses - set(GOOD) - set(PENDING) or (fail_on_busy and statuses & set(PENDING)):
        return exit_codes.FAILED
    if statuses & {"changed", *PENDING}:
        return exit_codes.CHANGES
    return exit_codes.CONVERGED


# --- report.json and report.html -------------------------------------------------------------

TEMPLATES = Path(__file__).parent / "report_templates"


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page from ``report_templates/report.html.j2`` (autoescaped; inline CSS,
    no script, a Content-Security-Policy that forbids every fetch)."""
    import jinja2

    from pyinfra_ratos.fleet.report_text import display_word, once, versions

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["word"] = lambda value: display_word(report, value)
    env.filters["versions"] = lambda pair: versions(*pair)
    env.filters["once"] = once
    return env.get_template("report.html.j2").render(report=report, summary=report.get("summary") or {},
                                                     plan=report.get("command") == "plan")


def write_report(report: Mapping[str, Any], directory: str | Path) -> dict[str, Path]:
    """``report.json`` and ``report.html`` in ``directory`` (created); returns ``{"json": path, "html": path}``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "html": folder / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return paths


from pyinfra_ratos.fleet.report_text import (  # noqa: E402 - re-exported: the tables read the model above
    fixed_width, render_status, render_table, report_rows, status_rows,
)

__all__ = ["add_printer", "finish", "fixed_width", "new_report", "next_command", "outcome_code", "render_html",
           "render_status", "render_table", "report_rows", "set_printer", "status_rows", "summarise",
           "write_report"]
