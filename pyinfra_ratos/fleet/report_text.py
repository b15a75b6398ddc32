"""The fleet report and ``ratos-fleet status`` for a terminal: tables that fit 120 columns.

One line per printer, its boards indented under it, the reason once on its own wrapped line, then
a summary and a closing "needs attention" block with the exact next command per printer. ``plan``
speaks in the future tense. Text a Pi sent is printed without its control characters.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from pyinfra_ratos.firmware.can import can_attached
from pyinfra_ratos.firmware.converged import AT_PIN, MEANING, at_pin, firmware_word
from pyinfra_ratos.data.hygiene import sanitise_text

WIDTH = 120
CELL = 44  # widest cell before it is cut with '~'

# (report word) -> (update's word, plan's word)
_WORDS = {
    "converged": ("up to date", "up to date"), "changed": ("updated", "will update"),
    "busy": ("not done", "not done"), "held": ("held", "held"), "skipped": ("not done", "not done"),
    "failed": ("FAILED", "FAILED"), "unreachable": ("unreachable", "unreachable"), "not-run": ("not run", "not run"),
    "written": ("written", "will write"), "unchanged": ("as is", "as is"), "updated": ("updated", "will update"),
    "flashed": ("flashed", "will flash"), "planned": ("not flashed", "will flash"), "refused": ("held", "held"),
}


def display_word(report: Mapping[str, Any], value: Any) -> str:
    """The operator's word for a status or action: one meaning each, the future tense in ``plan``."""
    if value is None or value == "":
        return "-"
    words = _WORDS.get(str(value))
    if words is None:
        return sanitise_text(str(value))
    return words[1] if report.get("command") == "plan" else words[0]


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}s"
    return sanitise_text(str(value))  # a Pi's strings may hold terminal escapes


def versions(before: Any, after: Any) -> str:
    before, after = _cell(before), _cell(after)
    return before if before == after or after == "-" else f"{before} -> {after}"


def _fit(line: str, width: int) -> str:
    line = line.rstrip()
    return line if len(line) <= width else line[: width - 1] + "~"


def fixed_width(header: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = CELL,
                width: int = WIDTH, indent: str = "") -> str:
    """Columns padded to their widest cell (capped at ``max_width``, cut with '~'); each line cut
    to ``width``."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in header]
    for row in cells:
        for index, text in enumerate(row):
            widths[index] = min(max(widths[index], len(text)), max_width)

    def line(row: Sequence[str]) -> str:
        parts = [text if len(text) <= widths[i] else text[: widths[i] - 1] + "~" for i, text in enumerate(row)]
        return _fit(indent + "  ".join(p.ljust(widths[i]) for i, p in enumerate(parts)), width)

    return "\n".join([line(list(header)), *(line(row) for row in cells)])


def once(texts: Sequence[Any]) -> list[str]:
    """Each reason once: one already said inside another (a board's, in its printer's) is dropped."""
    found = list(dict.fromkeys(sanitise_text(str(t)) for t in texts if t))
    return [t for t in found if not any(t != other and t in other for other in found)]


def _widths(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    widths = [len(h) for h in header]
    for row in rows:
        for index, text in enumerate(row):
            widths[index] = min(max(widths[index], len(text)), CELL)
    return widths


def nested_table(head: Sequence[str], sub: Sequence[str],
                 groups: Sequence[tuple[Sequence[Any], Sequence[Sequence[Any]], Sequence[str]]],
                 width: int = WIDTH) -> str:
    """A printer line, its board lines indented under it, its reasons wrapped below them."""
    heads = [[_cell(v) for v in g[0]] for g in groups]
    subs = [[[_cell(v) for v in row] for row in g[1]] for g in groups]
    head_w = _widths(head, heads)
    sub_w = _widths(sub, [row for rows in subs for row in rows])

    def line(row: Sequence[str], widths: Sequence[int], indent: str = "") -> str:
        parts = [t if len(t) <= widths[i] else t[: widths[i] - 1] + "~" for i, t in enumerate(row)]
        return _fit(indent + "  ".join(p.ljust(widths[i]) for i, p in enumerate(parts)), width)

    out = [line(head, head_w), line(sub, sub_w, "    ")]
    for index, group in enumerate(groups):
        out.append(line(heads[index], head_w))
        out += [line(row, sub_w, "    ") for row in subs[index]]
        reasons = "; ".join(once(group[2]))
        out += textwrap.wrap(reasons, width, initial_indent="      ", subsequent_indent="        ",
                             break_long_words=True, break_on_hyphens=False)
    return "\n".join(out)


# --- the fleet report ------------------------------------------------------------------------

REPORT_HEAD = ("BATCH", "PRINTER", "STATUS", "KLIPPY", "KLIPPER", "CONFIG", "TIME")
REPORT_SUB = ("MCU", "BOARD", "PORT", "FIRMWARE", "ACTION", "VERIFIED")


def report_rows(report: Mapping[str, Any]) -> list[tuple[list[Any], list[list[Any]], list[str]]]:
    """Per printer: its line, its board lines, its reasons (printer's first, each once)."""
    groups = []
    for entry in report["printers"]:
        klipper, config = entry.get("klipper") or {}, entry.get("config") or {}
        head = [entry.get("batch"), entry["host"], display_word(report, entry["status"]),
                entry.get("klippy_state"), versions(klipper.get("before"), klipper.get("after")),
                display_word(report, config.get("action")), entry.get("duration_s")]
        reasons = [entry.get("reason") or klipper.get("reason") or config.get("reason") or ""]
        boards = []
        for board in entry.get("boards") or []:
            boards.append([board.get("mcu_name"), board.get("board"), board.get("port"),
                           versions(board.get("before_version"), board.get("after_version")),
                           display_word(report, _board_action(board)),
                           None if board.get("action") in ("planned", "refused") else board.get("verified")])
            reasons.append(board.get("reason") or "")
        groups.append((head, boards, reasons))
    return groups


def _board_action(board: Mapping[str, Any]) -> str:
    # a board left alone because it already runs its target is up to date, not "skipped"
    return "converged" if board.get("action") == "skipped" and board.get("verified") else board.get("action") or ""


def _summary_line(report: Mapping[str, Any]) -> str:
    summary = report.get("summary") or {}
    plan = report.get("command") == "plan"
    names = {"converged": "up to date", "changed": "to update" if plan else "updated", "busy": "busy (not done)",
             "held": "held for --attended-flash", "skipped": "not done", "failed": "failed", "not_run": "not run"}
    parts = [f"{summary[key]} {word}" for key, word in names.items() if summary.get(key)]
    text = f"{summary.get('printers', 0)} printers: " + (", ".join(parts) or "none")
    if summary.get("unreachable"):
        text += f" ({summary['unreachable']} unreachable)"
    return text


def attention_block(report: Mapping[str, Any], width: int = WIDTH) -> list[str]:
    items = report.get("attention") or []
    if not items:
        return []
    title = "NEXT STEPS (plan)" if report.get("command") == "plan" else "NEEDS ATTENTION"
    lines = ["", f"{title}: {len(items)} printer{'s' if len(items) != 1 else ''}"]
    for item in items:
        lines += textwrap.wrap(f"{item['host']} ({display_word(report, item['status'])}): "
                               f"{sanitise_text(item.get('reason') or '-')}", width, initial_indent="  ",
                               subsequent_indent="      ", break_on_hyphens=False)
        lines += textwrap.wrap(f"next: {sanitise_text(item['next'])}", width, initial_indent="    ",
                               subsequent_indent="      ", break_on_hyphens=False)
    return lines


def render_table(report: Mapping[str, Any], width: int = WIDTH) -> str:
    """The report for a terminal: printers and their boards, reasons once, summary, next steps."""
    pin = report.get("pinned_version") or (report.get("pinned_commit") or "")[:12] or "-"
    lines = [_fit(f"{report.get('command', '')}: fleet pinned to Klipper {pin}", width),
             nested_table(REPORT_HEAD, REPORT_SUB, report_rows(report), width), "", _summary_line(report)]
    stopped = report.get("stopped_early")
    if stopped:
        lines += textwrap.wrap(f"STOPPED EARLY after batch {stopped.get('after_batch')}: {stopped.get('reason')}", width)
    interrupted = report.get("interrupted")
    if interrupted:
        lines += textwrap.wrap(f"INTERRUPTED ({interrupted.get('signal')}) during batch {interrupted.get('after_batch')}: "
                               "work in flight finished, the printers not started are 'not run'", width)
    lines += attention_block(report, width)
    if report.get("exit_code") is not None:
        lines.append(f"exit code {report['exit_code']}: {report.get('exit_meaning', '')}")
    return "\n".join(lines) + "\n"


# --- ratos-fleet status ----------------------------------------------------------------------


def _attached_for(board: Any, attached: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The USB device of an inventory board: by its port, else by its catalog id, else the only candidate."""
    if board.port:
        return attached.get(board.port)
    exact = [(port, info) for port, info in attached.items()
             if info.get("board_id") == board.board.id or info.get("ratos_link") == f"/dev/RatOS/{board.board.id}"]
    if len(exact) == 1:
        return {"port": exact[0][0], **exact[0][1]}
    candidates = [(port, info) for port, info in attached.items()
                  if board.board.id in (info.get("board_candidates") or [])]
    return {"port": candidates[0][0], **candidates[0][1]} if len(candidates) == 1 else None


def status_rows(boards: Sequence[Any], fact: Any, pin_commit: str | None = None,
                pin_version: str | None = None, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One Pi's status from its inventory boards (:class:`pyinfra_ratos.fleet.hostdata.BoardSpec`), its
    gathered FleetAudit (:class:`pyinfra_ratos.fleet.api.HostFact`) and the fleet's pin::

        {"reachable": bool, "error": str, "busy": bool | None, "klippy_state": str,
         "network": "online" | "offline" | "unknown", "host_version": str, "klipper": "at pin" | ...,
         "at_pin": bool, "config": {...}, "converged": bool,
         "boards": [{"mcu_name", "board", "port", "mode", "version", "firmware"}]}

    ``firmware`` and ``klipper`` are :func:`pyinfra_ratos.firmware.converged.firmware_word` against the pin
    (without a pin: against the host's own version); ``at_pin``: Klipper and every board at the pin.
    ``config``: :func:`pyinfra_ratos.run.config_status.judge_config`'s answer (None: not read).
    ``converged`` is both: at the pin, and a configuration ``update`` would not rewrite.
    """
    audit = fact.value if fact.value is not None else {}
    reachable = fact.status != "unreachable"
    mcu_firmware = audit.get("mcu_firmware") or {}
    mcus = mcu_firmware.get("mcus") or {}
    attached = audit.get("boards") or {}
    nodes = can_attached(audit.get("can") or {})
    activity = audit.get("activity") or {}
    network = audit.get("network") or {}
    host_version = mcu_firmware.get("host_version") or (audit.get("klipper") or {}).get("version") or ""
    if not (pin_commit or pin_version):
        pin_version = host_version or None

    def word(version: str) -> str:
        return firmware_word(version, pin_commit, pin_version)

    rows = []
    for board in boards:
        mcu = mcus.get(board.mcu_name)
        port = board.port
        if board.board.interface in ("linux", "can"):
            mode = board.board.interface
            if board.board.interface == "can" and board.canbus_uuid:  # where its node is, and what the bus said
                node = nodes.get(f"can0/{board.canbus_uuid}") or {}
                port, mode = port or f"can0/{board.canbus_uuid}", node.get("mode") or mode
        else:
            device = _attached_for(board, attached)
            mode = device.get("mode", "unknown") if device else "absent"
            port = port or (device or {}).get("port")
        version = (mcu or {}).get("version") or ""
        rows.append({"mcu_name": board.mcu_name, "board": board.board.id, "port": port, "mode": mode,
                     "version": version, "firmware": word(version)})
    listed = {board.mcu_name for board in boards}
    for name, mcu in mcus.items():  # MCUs klippy knows that the inventory does not list
        if name not in listed:
            version = mcu.get("version") or ""
            rows.append({"mcu_name": name, "board": None, "port": None, "mode": None, "version": version,
                         "firmware": word(version)})
    online = network.get("default_route")
    klipper = word(host_version)
    pinned = bool(fact.ok and klipper == AT_PIN and all(row["firmware"] == AT_PIN for row in rows))
    config = dict(config) if config is not None else {"state": "unknown", "converged": None, "files": [],
                                                       "reason": "not read"}
    return {
        "reachable": reachable,
        "status": fact.status,
        "error": fact.error,
        "busy": activity.get("busy") if fact.ok else None,
        "klippy_state": activity.get("klippy_state") or mcu_firmware.get("klippy_state") or "",
        "network": "unknown" if online is None else "online" if online else "offline",
        "host_version": host_version,
        "klipper": klipper,
        "at_pin": pinned,
        "config": config,
        "converged": pinned and config.get("converged") is True,
        "boards": rows,
    }


STATUS_HEAD = ("PRINTER", "NETWORK", "KLIPPY", "BUSY", "KLIPPER", "AT PIN", "CONFIG")
STATUS_SUB = ("MCU", "BOARD", "PORT", "MODE", "MCU VERSION", "FIRMWARE")


def render_status(statuses: Mapping[str, Mapping[str, Any]], pin: str | None = None, width: int = WIDTH) -> str:
    """``ratos-fleet status``'s table: a line per printer, its boards under it, a summary, who is behind."""
    groups = []
    for host, status in statuses.items():
        if not status["reachable"] or status["status"] == "failed":
            groups.append(([host, "-", "-", "-", "-", "unknown", "unknown"], [],
                           [f"{status['status']}: {status['error']}"]))
            continue
        config = status.get("config") or {}
        head = [host, status["network"], status["klippy_state"], status["busy"], status["host_version"],
                status.get("klipper", "unknown"), config.get("state", "unknown")]
        groups.append((head, [[b.get("mcu_name"), b.get("board"), b.get("port"), b.get("mode"), b.get("version"),
                               b.get("firmware", "unknown")] for b in status["boards"]],
                       [config["reason"]] if config.get("converged") is False and config.get("reason") else []))
    total = len(statuses)
    converged = [h for h, s in statuses.items() if s["converged"]]
    unreachable = [h for h, s in statuses.items() if not s["reachable"] or s["status"] == "failed"]
    read = [h for h in statuses if h not in unreachable]
    behind = [h for h in read if not statuses[h].get("at_pin", statuses[h]["converged"])]
    config = [h for h in read if (statuses[h].get("config") or {}).get("converged") is not True]
    busy = sum(1 for s in statuses.values() if s["busy"])
    lines = [_fit(f"fleet pinned to Klipper {pin or '-'}", width), nested_table(STATUS_HEAD, STATUS_SUB, groups, width),
             "", f"{total} printers: {len(converged)} converged, {len(behind)} behind the pin, {len(config)} with "
             f"configuration to write, {len(unreachable)} unreachable or unread, {busy} busy"]
    if behind:
        lines += textwrap.wrap("behind the pin: " + ", ".join(behind), width, subsequent_indent="  ")
    if config:
        lines += textwrap.wrap("configuration not as update writes it: " + ", ".join(
            f"{h} ({(statuses[h].get('config') or {}).get('state', 'unknown')})" for h in config), width,
            subsequent_indent="  ")
    if unreachable:
        lines += textwrap.wrap("not read: " + ", ".join(unreachable), width, subsequent_indent="  ")
    lines += textwrap.wrap(f"({MEANING}; status reads all three, as `ratos-fleet plan` decides them)", width)
    return "\n".join(lines) + "\n"


__all__ = ["WIDTH", "attention_block", "display_word", "fixed_width", "nested_table", "render_status", "render_table",
           "report_rows", "status_rows", "versions", "at_pin"]
