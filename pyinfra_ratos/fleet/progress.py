"""Live progress of a fleet run: a line per printer per phase as it happens, on the terminal.

pyinfra calls :class:`Progress` (a state callback handler) as each operation starts and ends on
each host; each becomes one plain line (``[vcore-01] start  Klipper at the fleet's commit``),
fit for a log file or CI. The printer agent's own phases on the Pi (stop, flash with bytes and
percent, checkout, start, verify) arrive as it works (:mod:`pyinfra_ratos.run.stream`) and become
lines too; the fleet run adds a line per finished printer with the window's state (``-- [7/20]
prod-05: failed in 3.1 s (13 left, 2/10 in flight, 1 failed so far)``). On a terminal a one-line
bar (printers finished / printers, printers in flight / window, and the latest transfer's percent,
which a log gets as lines instead) is redrawn on stderr under them: a few lines of our own
rather than a new dependency (rich, tqdm) for one line. pyinfra's own warnings (a printer left as it is and why, at default verbosity) are printed
through :func:`log_handler`, wrapped to the same width. Imported after ``fleet_api`` (it imports
pyinfra, whose CLI package patches the standard library for gevent).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
import sys
import textwrap
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from pyinfra.api.state import BaseStateCallback

from pyinfra_ratos.data.hygiene import sanitise_text

WIDTH = 120
# the operations whose start is the moment the printer is disrupted (boards enter DFU)
DISRUPTIVE = ("Update Klipper and flash the boards", "Update the printer", "Flash the mainboard")


# long phases get a line when they start too (the others: when they end)
LONG = ("flash", "Build", "Bring the fleet's Klipper commit", "Restore")


def _names(state: Any, op_hash: str) -> str:
    meta = state.op_meta.get(op_hash) if hasattr(state, "op_meta") else None
    names = sorted(meta.names) if meta is not None else []
    # the deploy's name prefixes each operation's ("Update printer | ..."): the phase is the last part
    return sanitise_text((names[0] if names else str(op_hash)).split(" | ")[-1])


def _runs_on(state: Any, host: Any, op_hash: str) -> bool:
    # pyinfra announces every operation to every host; a host that has none of it says nothing
    return op_hash in state.ops.get(host, {})


class Progress(BaseStateCallback):
    """Prints each operation's start and end per host; counts printers done for the bar."""

    def __init__(self, out: TextIO, total: int, tty: bool | None = None, width: int = WIDTH) -> None:
        self.out, self.total, self.width = out, total, width
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.done = 0
        self.window = 0     # printers at most in flight (the run sets it)
        self.in_flight = 0  # printers in flight now (the run keeps it)
        self.started: dict[tuple[str, str], float] = {}
        self.attended: dict[str, list[str]] = {}  # host -> held boards this run flashes (named at DFU time)
        self.activity = ""  # the latest transfer in flight, shown in the bar on a terminal

    def line(self, text: str) -> None:
        self._clear_bar()
        for part in textwrap.wrap(sanitise_text(text), self.width, subsequent_indent="    ",
                                  break_on_hyphens=False) or [""]:
            print(part, file=self.out, flush=True)
        self._bar()

    def printers_done(self, count: int) -> None:
        self.done += count
        self._bar()

    def batch_done(self, printers: list[Mapping[str, Any]]) -> None:
        """Each board these printers (one, as it finishes in the window) flashed or failed to, as
        verified (the agent says so once it ends)."""
        for entry in printers:
            for board in entry.get("boards") or []:
                if board.get("action") not in ("flashed", "failed"):
                    continue
                checks = ", ".join(word for word, done in (("read back", board.get("read_back")),
                                                           ("verified", board.get("verified"))) if done)
                self.line(f"[{entry['host']}] {board.get('mcu_name')}: {board.get('action')} "
                          f"{board.get('before_version') or '-'} -> {board.get('after_version') or '-'}"
                          f"{f' ({checks})' if checks else ''}")
        self.printers_done(len(printers))

    def agent_progress(self, host: str, record: Mapping[str, Any]) -> None:
        """A phase of a printer's transaction on the Pi, as it happens (a :mod:`pyinfra_ratos.run.stream`
        listener); on a terminal a transfer's percent goes to the bar, not to a line of its own."""
        text = agent_line(host, record)
        if self.tty and isinstance(record.get("percent"), int) and record["percent"] < 100:
            self.activity = text
            self._bar()
            return
        self.activity = ""
        self.line(text)

    def _bar(self) -> None:
        if not self.tty or not self.total:
            return
        filled = int(30 * self.done / self.total)
        bar = f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} printers"
        if self.window:
            bar += f", {self.in_flight}/{self.window} in flight"
        if self.activity:
            bar += "  " + self.activity
        sys.stderr.write("\r" + bar[: self.width - 1].ljust(self.width - 1))
        sys.stderr.flush()

    def _clear_bar(self) -> None:
        if self.tty and self.total:
            sys.stderr.write("\r" + " " * (self.width - 1) + "\r")
            sys.stderr.flush()

    def finish(self) -> None:
        self._clear_bar()

    # pyinfra's BaseStateCallback interface: the others (connect, operation_start...) say nothing
    def operation_host_start(self, state: Any, host: Any, op_hash: str) -> None:
        if not _runs_on(state, host, op_hash):
            return
        name = _names(state, op_hash)
        self.started[(host.name, op_hash)] = time.monotonic()
        held = self.attended.get(host.name)
        if held and name in DISRUPTIVE:
            self.line(f"[{host.name}] ENTERING DFU NOW (attended flash): {', '.join(held)}: watch the heaters")
        if any(word in name for word in LONG):
            self.line(f"[{host.name}] {name}: started")

    def operation_host_success(self, state: Any, host: Any, op_hash: str, retry_count: int = 0) -> None:
        if not _runs_on(state, host, op_hash):
            return
        seconds = time.monotonic() - self.started.pop((host.name, op_hash), time.monotonic())
        self.line(f"[{host.name}] {_names(state, op_hash)}: done in {seconds:.1f} s")

    def operation_host_error(self, state: Any, host: Any, op_hash: str, retry_count: int = 0,
                             max_retries: int = 0) -> None:
        seconds = time.monotonic() - self.started.pop((host.name, op_hash), time.monotonic())
        self.line(f"[{host.name}] {_names(state, op_hash)}: FAILED after {seconds:.1f} s")


def live(progress: Progress | None) -> AbstractContextManager[None]:
    """Within: the printer agents' progress lines reach ``progress`` as they happen (none: nothing)."""
    from pyinfra_ratos.run.stream import listening

    return listening(progress.agent_progress) if progress is not None else nullcontext()


def agent_line(host: str, record: Mapping[str, Any]) -> str:
    """``[vcore-01] flash mcu (btt-octopus-pro-h723-11): write 45% (12288 of 27304 bytes)``: one line
    of the printer agent's progress (``RATOS-PROGRESS``), its text sanitised (it came from a Pi)."""
    phase, text = str(record.get("phase") or "?"), str(record.get("text") or "")
    if record.get("mcu") or record.get("board"):
        phase += f" {record.get('mcu') or '?'}" + (f" ({record['board']})" if record.get("board") else "")
    return sanitise_text(f"[{host}] {phase}: {text}")


def _is_diff(record: logging.LogRecord) -> bool:
    # operations.printer.show_diffs: its header through host.log, its lines through logger.info
    message = record.getMessage()
    return record.funcName == "show_diffs" or "] Will modify " in message or "] Will create " in message


class _Wrapped(logging.Handler):
    def __init__(self, out: TextIO, width: int, verbose: bool, diff: bool) -> None:
        super().__init__(logging.DEBUG)
        self.out, self.width, self.verbose, self.diff = out, width, verbose, diff

    def emit(self, record: logging.LogRecord) -> None:
        diff = _is_diff(record)
        if diff and not self.diff:
            return
        if not diff and record.levelno < (logging.INFO if self.verbose else logging.WARNING):
            return
        text = sanitise_text(record.getMessage())
        if diff:  # a diff line is kept whole (cut, never folded)
            print(text if len(text) <= self.width or not text.strip() else text, file=self.out, flush=True)
            return
        for part in textwrap.wrap(text, self.width, subsequent_indent="    ", break_on_hyphens=False):
            print(part, file=self.out, flush=True)


def log_handler(out: TextIO, width: int = WIDTH, verbose: bool = False, diff: bool = False) -> logging.Handler:
    """pyinfra's warnings (a printer left as it is, and why) wrapped to ``width``; with ``verbose``
    its info lines too (each operation's noop reason); with ``diff`` the unified diffs of the
    configuration files a run would write."""
    return _Wrapped(out, width, verbose, diff)


def held_boards(noted: Mapping[str, Any], catalog: Mapping[str, Any]) -> list[str]:
    """The boards of one host's planned run that are never flashed unattended, named for the operator."""
    found = []
    for board in (noted.get("boards") or {}).values():
        spec = catalog.get(board.get("board"))
        if board.get("action") == "planned" and spec is not None and not spec.unattended_flash:
            found.append(f"{board.get('mcu_name')} ({board.get('board')}, port {board.get('port') or '?'})")
    return found


def confirm(lines: Iterable[str], assume_yes: bool, stream_in: TextIO = sys.stdin, out: TextIO = sys.stderr) -> bool:
    """Name what is about to enter DFU and ask on a terminal; ``--yes`` (or no terminal) goes on."""
    items = list(lines)
    if not items:
        return True
    print("Attended flash: these boards enter DFU (heaters may switch on): someone must watch them:", file=out)
    for item in items:
        print(f"  {item}", file=out)
    if assume_yes or not stream_in.isatty():
        return True
    print("Type yes to flash them now: ", end="", file=out, flush=True)
    return stream_in.readline().strip().lower() in ("y", "yes")
