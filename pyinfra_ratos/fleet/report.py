"""The fleet report: built during a run, written as ``report.json`` and ``report.html``, shown as a table.

Pure Python (no pyinfra). The update orchestration builds the report with four calls::

    report = new_report("update", "/abs/inventory.py", pinned_commit=commit, pinned_version=version)
    add_printer(report, "vcore-01", groups=["canary"], batch=0)          # status "not-run" until known
    set_printer(report, "vcore-01", status="changed", duration_s=12.3,
                klipper={"before": "v0.12.0-0-g097b935", "after": version, "action": "updated"},
                config={"action": "written"}, boards=[flash_record, ...])   # FlashRecord or dict
    finish(report, stopped_early={"after_batch": 2, "reason": "..."})      # summary, exit code, time
    paths = write_report(report, "reports/2026-11-21")                     # report.json, report.html
    print(render_table(report))

Shape (the contract with the orchestration)::

    {"command", "started", "finished", "inventory", "pinned_commit", "pinned_version", "exit_code",
     "stopped_early": null | {"after_batch", "reason"},
     "summary": {"printers", "converged", "changed", "skipped", "failed", "not_run", "unreachable"},
     "printers": [{"host", "groups", "batch", "status", "reason", "duration_s",
                   "klipper": {"before", "after", "action", "reason"}, "config": {"action", "reason"},
                   "boards": [FlashRecord.to_dict(), ...]}]}

``summary.failed`` counts unreachable printers too (they did not converge); ``summary.unreachable``
says how many of them were. ``exit_code``: 0 when every printer converged or changed, else 1.

The status table of ``ratos-fleet status`` (:func:`status_rows`, :func:`render_status`) lives here
too: the same fixed-width rendering, from the FleetAudit fact of each Pi.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyinfra_ratos.data.hygiene import sanitise_text
from pyinfra_ratos.run.results import FlashRecord

PRINTER_STATUSES = ("changed", "converged", "skipped", "failed", "unreachable", "not-run")
KLIPPER_ACTIONS = ("updated", "unchanged", "skipped", "failed")
CONFIG_ACTIONS = ("written", "unchanged", "skipped", "failed")
# statuses that count as a good outcome (exit code 0)
GOOD = ("changed", "converged")
_PRINTER_FIELDS = ("groups", "batch", "status", "reason", "duration_s", "klipper", "config", "boards")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_report(
    command: str, inventory: str | Path, pinned_commit: str | None = None, pinned_version: str | None = None,
    started: str | None = None,
) -> dict[str, Any]:
    """An empty report of a run that starts now (``started``: ISO 8601 UTC, default now)."""
    return {
        "command": command, "started": started or _now(), "finished": None, "inventory": str(inventory),
        "pinned_commit": pinned_commit, "pinned_version": pinned_version, "exit_code": None,
        "stopped_early": None, "summary": summarise([]), "printers": [],
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
        if key == "klipper":
            value = {"before": None, "after": None, "action": "skipped", "reason": "", **(value or {})}
            if value["action"] not in KLIPPER_ACTIONS:
                raise ValueError(f"klipper action {value['action']!r} is not one of {', '.join(KLIPPER_ACTIONS)}")
        elif key == "config":
            value = {"action": "skipped", "reason": "", **(value or {})}
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
    """Add a printer (fields: groups, batch, reason, duration_s, klipper, config, boards); returns its entry."""
    if any(entry["host"] == host for entry in report["printers"]):
        raise ValueError(f"{host!r} is already in the report: use set_printer()")
    entry = _checked({"host": host}, {"groups": [], "batch": 0, "status": status, "reason": "", "duration_s": 0.0,
                                      "klipper": None, "config": None, "boards": []})
    report["printers"].append(_checked(entry, fields))
    return entry


def set_printer(report: dict[str, Any], host: str, **fields: Any) -> dict[str, Any]:
    """Change some fields of a printer already in the report; returns its entry."""
    return _checked(_printer(report, host), fields)


def summarise(printers: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = {"printers": 0, "converged": 0, "changed": 0, "skipped": 0, "failed": 0, "not_run": 0, "unreachable": 0}
    for entry in printers:
        counts["printers"] += 1
        status = entry["status"]
        if status == "unreachable":
            counts["unreachable"] += 1
            counts["failed"] += 1
        else:
            counts[status.replace("-", "_")] += 1
    return counts


def finish(
    report: dict[str, Any], exit_code: int | None = None, stopped_early: Mapping[str, Any] | None = None,
    finished: str | None = None,
) -> dict[str, Any]:
    """Close the report: summary, ``stopped_early``, finish time and exit code (default: 0 when every
    printer converged or changed, else 1)."""
    report["summary"] = summarise(report["printers"])
    if stopped_early is not None:
        report["stopped_early"] = dict(stopped_early)
    report["finished"] = finished or _now()
    if exit_code is None:
        exit_code = 0 if all(entry["status"] in GOOD for entry in report["printers"]) else 1
    report["exit_code"] = exit_code
    return report


# --- fixed-width tables ----------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}s"
    return sanitise_text(str(value))  # a Pi's strings may hold terminal escapes


def fixed_width(header: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 48) -> str:
    """Columns padded to their widest cell (capped at ``max_width``, cut with '~'); the last
    column, usually a reason, is never cut."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in header]
    for row in cells:
        for index, text in enumerate(row[:-1]):
            widths[index] = min(max(widths[index], len(text)), max_width)

    def line(row: Sequence[str]) -> str:
        parts = [text if len(text) <= widths[i] else text[: widths[i] - 1] + "~" for i, text in enumerate(row[:-1])]
        return "  ".join(p.ljust(widths[i]) for i, p in enumerate(parts)) + "  " + row[-1]

    return "\n".join([line(list(header)), *(line(row).rstrip() for row in cells)])


def _version_change(before: Any, after: Any) -> str:
    before, after = _cell(before), _cell(after)
    return before if before == after else f"{before} -> {after}"


REPORT_HEADER = ("HOST", "BATCH", "STATUS", "KLIPPER", "UPDATE", "CONFIG", "MCU", "BOARD", "PORT", "FIRMWARE",
                 "ACTION", "METHOD", "VERIFIED", "TIME", "REASON")


def report_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """One row per board (a printer without boards: one row), printer fields repeated on each."""
    rows = []
    for entry in report["printers"]:
        klipper, config = entry.get("klipper") or {}, entry.get("config") or {}
        head = [entry["host"], entry.get("batch"), entry["status"],
                _version_change(klipper.get("before"), klipper.get("after")), klipper.get("action"),
                config.get("action")]
        printer_reason = entry.get("reason") or klipper.get("reason") or config.get("reason") or ""
        boards = entry.get("boards") or []
        if not boards:
            rows.append(head + [None] * 7 + [entry.get("duration_s"), printer_reason])
        for board in boards:
            reason = _reasons(printer_reason, board.get("reason"))
            rows.append(head + [board.get("mcu_name"), board.get("board"), board.get("port"),
                                _version_change(board.get("before_version"), board.get("after_version")),
                                board.get("action"), board.get("method"), board.get("verified"),
                                board.get("duration_s"), reason])
    return rows


def _reasons(*texts: Any) -> str:
    """The printer's reason and the board's, each once."""
    return "; ".join(dict.fromkeys(str(t) for t in texts if t))


def _summary_line(report: Mapping[str, Any]) -> str:
    summary = report.get("summary") or summarise(report["printers"])
    parts = [f"{summary[key]} {key.replace('_', '-')}" for key in
             ("converged", "changed", "skipped", "failed", "not_run") if summary.get(key)]
    text = f"{summary['printers']} printers: " + (", ".join(parts) or "none")
    if summary.get("unreachable"):
        text += f" ({summary['unreachable']} unreachable)"
    return text


def render_table(report: Mapping[str, Any]) -> str:
    """The report for a terminal: one line per board, status words (no colour needed), a summary."""
    lines = [fixed_width(REPORT_HEADER, report_rows(report)), "", _summary_line(report)]
    stopped = report.get("stopped_early")
    if stopped:
        lines.append(f"STOPPED EARLY after batch {stopped.get('after_batch')}: {stopped.get('reason')}")
    if report.get("exit_code") is not None:
        lines.append(f"exit code {report['exit_code']}")
    return "\n".join(lines) + "\n"


# --- report.json and report.html -------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#1d1d1f;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em}
.meta{color:#555;margin:0 0 1em}.meta code{background:#f2f2f2;padding:0 .3em;border-radius:3px}
.cards{display:flex;gap:.6em;flex-wrap:wrap;margin:0 0 1em}
.card{border:1px solid #ddd;border-radius:6px;padding:.4em .9em;min-width:6em}
.card b{display:block;font-size:1.5em}
.stopped{border:2px solid #b3261e;background:#fdecea;padding:.6em 1em;border-radius:6px;margin:0 0 1em}
table{border-collapse:collapse;width:100%}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f6;position:sticky;top:0}
td.num{text-align:right;white-space:nowrap}
td.nw,td b{white-space:nowrap}
tbody.printer{border-top:3px solid #999}
.s{font-weight:600;padding:0 .4em;border-radius:3px;white-space:nowrap}
.s-converged,.s-unchanged{background:#e6f4ea;color:#1e6b34}
.s-changed,.s-updated,.s-written,.s-flashed{background:#e3effd;color:#174ea6}
.s-skipped,.s-not-run,.s-planned{background:#fff4e0;color:#8a5300}
.s-failed,.s-unreachable,.s-refused{background:#fdecea;color:#b3261e}
.reason{color:#444;min-width:16em;max-width:40em}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em;white-space:nowrap}
"""


def _e(value: Any) -> str:
    return html.escape(_cell(value))


def _versions(before: Any, after: Any) -> str:
    """before -> after, each version kept on one line (the arrow is where a narrow cell wraps)."""
    before, after = _cell(before), _cell(after)
    if before == after:
        return f"<code>{html.escape(before)}</code>"
    return f"<code>{html.escape(before)}</code> -&gt; <code>{html.escape(after)}</code>"


def _status(word: Any) -> str:
    text = _cell(word)
    return f'<span class="s s-{html.escape(text)}">{html.escape(text)}</span>'


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page: inline CSS, no script, no external resource."""
    summary = report.get("summary") or summarise(report["printers"])
    cards = "".join(f'<div class="card"><b>{summary.get(key, 0)}</b>{key.replace("_", "-")}</div>'
                    for key in ("printers", "converged", "changed", "skipped", "failed", "not_run", "unreachable"))
    stopped = report.get("stopped_early")
    banner = (f'<p class="stopped"><b>Stopped early</b> after batch {_e(stopped.get("after_batch"))}: '
              f'{_e(stopped.get("reason"))}</p>') if stopped else ""
    bodies = []
    for entry in report["printers"]:
        klipper, config = entry.get("klipper") or {}, entry.get("config") or {}
        boards = entry.get("boards") or [{}]
        span = f' rowspan="{len(boards)}"' if len(boards) > 1 else ""
        reason = entry.get("reason") or klipper.get("reason") or config.get("reason") or ""
        printer_cells = (
            f"<td{span}><b>{_e(entry['host'])}</b><br><small>{_e(', '.join(entry.get('groups') or []))}</small></td>"
            f'<td{span} class="num">{_e(entry.get("batch"))}</td>'
            f"<td{span}>{_status(entry['status'])}</td>"
            f"<td{span}>{_versions(klipper.get('before'), klipper.get('after'))} "
            f"{_status(klipper.get('action'))}</td>"
            f"<td{span}>{_status(config.get('action'))}</td>"
            f'<td{span} class="num">{_e(entry.get("duration_s"))}</td>'
        )
        rows = []
        for index, board in enumerate(boards):
            board_cells = (
                f"<td class=\"nw\">{_e(board.get('mcu_name'))}</td><td class=\"nw\"><code>{_e(board.get('board'))}</code></td>"
                f"<td class=\"nw\"><code>{_e(board.get('port'))}</code></td>"
                f"<td>{_versions(board.get('before_version'), board.get('after_version'))}</td>"
                f"<td>{_status(board.get('action')) if board else '-'}</td><td>{_e(board.get('method'))}</td>"
                f"<td>{_e(board.get('verified'))}</td><td class=\"num\">{_e(board.get('duration_s'))}</td>"
                f'<td class="reason">{_e(_reasons(reason if index == 0 else "", board.get("reason")))}</td>'
            )
            rows.append(f"<tr>{printer_cells if index == 0 else ''}{board_cells}</tr>")
        bodies.append(f'<tbody class="printer">{"".join(rows)}</tbody>')
    header = "".join(f"<th>{h}</th>" for h in (
        "Printer", "Batch", "Status", "Klipper", "Config", "Printer time", "MCU", "Board", "Port",
        "Firmware", "Action", "Method", "Verified", "Board time", "Reason"))
    title = f"ratos-fleet {report.get('command', '')} report"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="meta">Inventory <code>{_e(report.get("inventory"))}</code> &middot; Klipper
<code>{_e(report.get("pinned_version"))}</code> (<code>{_e((report.get("pinned_commit") or "")[:12])}</code>)
&middot; {_e(report.get("started"))} &rarr; {_e(report.get("finished"))} &middot; exit code {_e(report.get("exit_code"))}</p>
<div class="cards">{cards}</div>
{banner}
<table><thead><tr>{header}</tr></thead>
{"".join(bodies)}
</table>
</body></html>
"""


def write_report(report: Mapping[str, Any], directory: str | Path) -> dict[str, Path]:
    """``report.json`` and ``report.html`` in ``directory`` (created); returns ``{"json": path, "html": path}``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "html": folder / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return paths


# --- ratos-fleet status ----------------------------------------------------------------------

FIRMWARE_WORDS = ("up to date", "behind", "unknown")


def _attached_for(board: Any, attached: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The USB device of an inventory board: by its port, else by its catalog id, else the only candidate."""
    if board.port:
        return attached.get(board.port)
    exact = [info for info in attached.values()
             if info.get("board_id") == board.board.id or info.get("ratos_link") == f"/dev/RatOS/{board.board.id}"]
    if len(exact) == 1:
        return exact[0]
    candidates = [info for info in attached.values() if board.board.id in (info.get("board_candidates") or [])]
    return candidates[0] if len(candidates) == 1 else None


def _firmware_word(mcu: Mapping[str, Any] | None) -> str:
    if not mcu or not mcu.get("connected") or mcu.get("matches_host") is None:
        return "unknown"
    return "up to date" if mcu["matches_host"] else "behind"


def status_rows(boards: Sequence[Any], fact: Any) -> dict[str, Any]:
    """One Pi's status from its inventory boards (:class:`pyinfra_ratos.fleet.hostdata.BoardSpec`) and its
    gathered FleetAudit (:class:`pyinfra_ratos.fleet.api.HostFact`)::

        {"reachable": bool, "error": str, "busy": bool | None, "klippy_state": str,
         "network": "online" | "offline" | "unknown", "host_version": str, "converged": bool,
         "boards": [{"mcu_name", "board", "port", "mode", "version", "firmware": "up to date" | ...}]}
    """
    audit = fact.value if fact.value is not None else {}
    reachable = fact.status != "unreachable"
    mcu_firmware = audit.get("mcu_firmware") or {}
    mcus = mcu_firmware.get("mcus") or {}
    attached = audit.get("boards") or {}
    activity = audit.get("activity") or {}
    network = audit.get("network") or {}
    rows = []
    for board in boards:
        mcu = mcus.get(board.mcu_name)
        if board.board.interface == "linux":
            mode = "linux"
        elif board.board.interface == "can":
            mode = "can"
        else:
            device = _attached_for(board, attached)
            mode = device.get("mode", "unknown") if device else "absent"
        rows.append({"mcu_name": board.mcu_name, "board": board.board.id, "port": board.port, "mode": mode,
                     "version": (mcu or {}).get("version") or "", "firmware": _firmware_word(mcu)})
    listed = {board.mcu_name for board in boards}
    for name, mcu in mcus.items():  # MCUs klippy knows that the inventory does not list
        if name not in listed:
            rows.append({"mcu_name": name, "board": None, "port": None, "mode": None,
                         "version": mcu.get("version") or "", "firmware": _firmware_word(mcu)})
    online = network.get("default_route")
    return {
        "reachable": reachable,
        "status": fact.status,
        "error": fact.error,
        "busy": activity.get("busy") if fact.ok else None,
        "klippy_state": activity.get("klippy_state") or mcu_firmware.get("klippy_state") or "",
        "network": "unknown" if online is None else "online" if online else "offline",
        "host_version": mcu_firmware.get("host_version") or (audit.get("klipper") or {}).get("version") or "",
        "converged": fact.ok and bool(rows) and all(row["firmware"] == "up to date" for row in rows),
        "boards": rows,
    }


STATUS_HEADER = ("HOST", "REACHABLE", "NETWORK", "KLIPPY", "BUSY", "MCU", "BOARD", "PORT", "MODE",
                 "MCU VERSION", "HOST VERSION", "FIRMWARE")


def render_status(statuses: Mapping[str, Mapping[str, Any]]) -> str:
    """``ratos-fleet status``'s table: one line per board, then a summary line."""
    rows = []
    for host, status in statuses.items():
        head = [host, status["reachable"], status["network"], status["klippy_state"], status["busy"]]
        if not status["reachable"] or status["status"] == "failed":
            rows.append(head + [None] * 6 + [f"{status['status']}: {status['error']}"])
            continue
        for board in status["boards"] or [{}]:
            rows.append(head + [board.get("mcu_name"), board.get("board"), board.get("port"), board.get("mode"),
                                board.get("version"), status["host_version"], board.get("firmware", "unknown")])
    total = len(statuses)
    converged = sum(1 for s in statuses.values() if s["converged"])
    unreachable = sum(1 for s in statuses.values() if not s["reachable"])
    busy = sum(1 for s in statuses.values() if s["busy"])
    summary = f"{total} printers: {converged} converged, {total - converged - unreachable} not converged, " \
              f"{unreachable} unreachable, {busy} busy"
    return fixed_width(STATUS_HEADER, rows) + "\n\n" + summary + "\n"
