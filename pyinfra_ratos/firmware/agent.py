"""The printer agent: every disruptive step on a Pi, as one transaction that leaves a working printer.

The operations send this module's source to the Pi and run it there as root, with the plan as JSON
(``sudo python3 -c SOURCE PLAN HOME``). Whatever disrupts a printer (stopping or restarting
Klipper, moving ``~/klipper``, flashing a board) happens here and only here, so that one gate and
one order hold for every entry point (design.md rule 7)::

    lock (the printer, then each board's USB port)  ->  re-check on the Pi: proceed only on a
    positive "idle" (judge_activity)  ->  re-check what was prepared (images and their sha256, the
    target commit present, a clean tree)  ->  stop Klipper  ->  flash each board: enter its
    bootloader, keep a read of the firmware it ran, write, read back and compare (one retry),
    leave, wait for it on the same USB port  ->  check ~/klipper out at the target commit  ->
    start Klipper  ->  verify (a new main PID or start time, klippy as ready as it was before,
    every flashed MCU on its new version)  ->  on any failure after the first disruptive step:
    back to the last working pair (the previous commit, the firmware each board ran), and say so.

Stdlib only, no other project module: it runs with the Pi's own python3 (3.7 on old images).
:func:`judge_activity` is also what the controller's ``PrinterActivity`` fact decides with, so
the plan and the re-check on the Pi can never disagree about what "idle" means.

Output: while it works, ``RATOS-PROGRESS {json}`` lines as each phase starts (``{"phase": "stop" |
"flash" | "checkout" | "start" | "verify" | "rollback", "text": str}``, a flash's also ``"mcu"``,
``"board"``, and for a write ``"done"``, ``"total"`` bytes and ``"percent"``, at most one per 10%
and per second: :class:`Throttle`); at the end one ``RATOS-RESULT {json}`` line per board (the
board's record, as before) and one ``RATOS-TXN {json}`` line for the whole printer::

    {"outcome": "done" | "pending" | "failed" | "rolled-back" | "attention" | "nothing",
     "reason": str, "todo": str,              # todo: what the operator must do ("" when nothing)
     "klipper_before": commit, "klipper_after": commit, "restarted": bool, "duration_s": float}

Exit status: 0 done (or nothing to do), 75 pending (not idle or locked: nothing was touched),
1 failed, rolled back, or attention needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

RESULT_PREFIX = "RATOS-RESULT "
SUMMARY_PREFIX = "RATOS-TXN "
PROGRESS_PREFIX = "RATOS-PROGRESS "
EXIT_DONE, EXIT_FAILED, EXIT_PENDING = 0, 1, 75
DFU_ID = ("0483", "df11")
KLIPPER_ID = ("1d50", "614e")
SYSFS_USB = "/sys/bus/usb/devices"
LOCK_DIR = "/run/pyinfra-ratos"
PRINTER_LOCK = "printer.lock"
# kept on the Pi between runs: what each board ran before its last flash (rollback images)
ROLLBACK_DIR = "/var/lib/pyinfra-ratos/rollback"

BUSY_PRINT_STATES = ("printing", "paused")
# a unit in any other state may be starting, stopping or running a job: not positively stopped
STOPPED_UNIT_STATES = ("inactive", "failed")
ACTIVITY_QUERY = "/printer/objects/query?print_stats=state&idle_timeout=state&virtual_sdcard=is_active&webhooks=state"

# dfu-util's words that mean a real failure, whatever its exit status says
DFU_FAILURES: Sequence[tuple[str, str]] = (
    ("More than one DFU capable USB device found",
     "several boards are in DFU and dfu-util was not told which: select the board by USB port (-p)"),
    ("No DFU capable USB device available",
     "no board in DFU mode on that port: the bootloader request failed or the board left DFU"),
    ("is not writeable",
     "the image reaches flash that is write-protected (wrong address or a protected bootloader)"),
    ("Wrong state after command",
     "the board's DFU reported an error while erasing/writing (flash protected or damaged)"),
)
DFU_DOWNLOADED = "File downloaded successfully"
DOWNLOAD_TIMEOUT_S = 300  # a whole-flash write of the largest supported board takes under a minute
COMMAND_TIMEOUT_S = 120
VERIFY_POLL_S = 0.2  # klippy reports a reconnected MCU within a second or two
WRITE_ATTEMPTS = 2


# ------------------------------------------------------------------------------ the one gate

def judge_activity(raw: dict[str, Any]) -> tuple[bool, str]:
    """(idle, why not) from what the Pi answered; idle only on a positive answer (design rule 1).

    ``raw``: ``{"query": {"status": int, "body": {...}}, "klipper_service": "active"|...,
    "locks": [{"pid": ..., "what": ...}]}`` (``query``: Moonraker's answer to
    :data:`ACTIVITY_QUERY`; ``klipper_service``: ``systemctl is-active klipper``, read when
    Moonraker gave no answer). Positive answers: Moonraker's 200 with readable job objects that
    show no job (or klippy itself in ``error``, where no job can run), or a klipper unit that is
    positively stopped. Everything else (503, a hang, unparsable data, a unit starting or
    stopping, klippy shut down, another run holding the printer's lock) is "not idle".
    """
    for lock in raw.get("locks") or []:
        return False, ("another pyinfra-ratos run is working on this printer ({}, pid {})"
                       .format(lock.get("what") or "flashing", lock.get("pid") or "?"))
    query = raw.get("query") if isinstance(raw.get("query"), dict) else {}
    status = job_status(raw)
    if status is not None:
        def field(obj: str, key: str) -> str:
            value = status.get(obj) if isinstance(status.get(obj), dict) else {}
            return value.get(key) if isinstance(value.get(key), str) else ""
        print_state, idle_state = field("print_stats", "state"), field("idle_timeout", "state")
        klippy = field("webhooks", "state")
        sdcard = isinstance(status.get("virtual_sdcard"), dict) and status["virtual_sdcard"].get("is_active") is True
        if print_state in BUSY_PRINT_STATES or idle_state == "Printing" or sdcard:
            return False, "printer is busy ({})".format(print_state or idle_state or "printing from SD")
        if klippy == "shutdown":
            return False, ("klippy is shut down (an emergency stop or an MCU shutdown): someone should look "
                           "at the printer before anything restarts it")
        if print_state and idle_state:
            return True, ""
        if klippy == "error":
            return True, ""  # klippy in error runs no job; the update may be what mends it
        return False, "printer state unknown (klippy {} without job state)".format(klippy or "state unreadable")
    service = raw.get("klipper_service") or ""
    if service in STOPPED_UNIT_STATES:
        return True, ""
    # the probe asks /printer/info first and queries only when klippy is connected
    code = query.get("status") or (raw.get("info") if isinstance(raw.get("info"), dict) else {}).get("status")
    answer = "Moonraker answered {}".format(code) if code else "Moonraker did not answer"
    return False, "printer state unknown ({} while klipper.service is {})".format(answer, service or "unknown")


def job_status(raw: dict[str, Any]) -> dict[str, Any] | None:
    """Moonraker's ``result.status`` of the activity query, None unless a well-formed 200."""
    query = raw.get("query") if isinstance(raw.get("query"), dict) else {}
    if query.get("status") != 200:
        return None
    body = query.get("body") if isinstance(query.get("body"), dict) else {}
    result = body.get("result") if isinstance(body.get("result"), dict) else {}
    return result.get("status") if isinstance(result.get("status"), dict) else None


def http_json(url: str, method: str = "GET", timeout: float = 3.0) -> dict[str, Any]:
    """``{"status", "body"}``; status 0 when nothing answered in time (a hang is no answer)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # Moonraker is local
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with opener.open(request, timeout=timeout) as answer:
            return {"status": answer.status, "body": json.loads(answer.read().decode("utf-8"))}
    except urllib.error.HTTPError as error:
        try:
            return {"status": error.code, "body": json.loads(error.read().decode("utf-8"))}
        except ValueError:
            return {"status": error.code, "body": None}
    except Exception:  # noqa: BLE001 - refused, timed out, not JSON: no answer
        return {"status": 0, "body": None}


def unit_state(unit: str) -> dict[str, str]:
    """``systemctl show`` of the properties that prove a (re)start happened; {} when unreadable."""
    try:
        done = subprocess.run(["systemctl", "show", unit, "-p", "ActiveState", "-p", "MainPID",
                               "-p", "ExecMainStartTimestampMonotonic"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, universal_newlines=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def held_locks(lock_dir: str = LOCK_DIR) -> list[dict[str, Any]]:
    """The pyinfra-ratos locks another process holds on this Pi (the probe reads them the same way)."""
    held = []
    for name in sorted(os.listdir(lock_dir)) if os.path.isdir(lock_dir) else []:
        path = os.path.join(lock_dir, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                continue
            except OSError:
                pass
            try:
                info = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
            except ValueError:
                info = {}
            held.append({"lock": name, "pid": info.get("pid"), "what": info.get("what")})
        finally:
            os.close(fd)
    return held


def read_activity(base: str, own_locks: Sequence[str] = ()) -> dict[str, Any]:
    raw: dict[str, Any] = {"query": http_json(base + ACTIVITY_QUERY)}
    raw["locks"] = [lock for lock in held_locks() if lock["lock"] not in own_locks]
    if raw["query"].get("status") != 200:
        try:
            raw["klipper_service"] = subprocess.run(
                ["systemctl", "is-active", "klipper"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                universal_newlines=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            raw["klipper_service"] = ""
    return raw


# ------------------------------------------------------------------------------ dfu-util's answer

def judge_dfu_result(exit_code: int, output_text: str, came_back: bool, reported_version: str | None,
                     expected_version: str) -> tuple[bool, str]:
    """(ok, reason) of a dfu-util run, from its output and what the board did after (design rule 4).

    dfu-util's exit status is not the answer: after a good download with ``:leave`` it often
    exits 74 ("Error during download get_status") or 251 ("can't detach") because the board
    reset first. Success is the download message and the board back with the expected version.
    """
    for needle, why in DFU_FAILURES:
        if needle in output_text:
            return False, f"dfu-util failed (exit {exit_code}): {why}"
    if DFU_DOWNLOADED not in output_text:
        return False, f"dfu-util did not report a complete download (exit {exit_code})"
    if not came_back:
        return False, "the download completed but the board did not come back as Klipper on its USB port"
    if reported_version != expected_version:
        return False, (f"the board came back running {reported_version or 'an unknown version'}, "
                       f"expected {expected_version}")
    note = f" (dfu-util exit {exit_code} after a complete download is a known false alarm)" if exit_code else ""
    return True, f"flashed and verified: the board runs {expected_version}{note}"

# ------------------------------------------------------------------------------ live progress

class Throttle:
    """Which of a transfer's progress reports to pass on: one per ``step`` percent at most, never
    two within ``interval`` seconds, and always the last (100%). A whole-flash write gives at most
    11 lines, a slow one at most one a second."""

    def __init__(self, step: int = 10, interval: float = 1.0, clock: Any = time.monotonic) -> None:
        self.step, self.interval, self.clock = step, interval, clock
        self.percent = 0
        self.at = clock()
        self.finished = False

    def due(self, done: int, total: int) -> int | None:
        """The percent to report for ``done`` of ``total`` bytes now, or None."""
        if total <= 0 or self.finished:
            return None
        percent = max(0, min(100, done * 100 // total))
        now = self.clock()
        if percent >= 100:
            self.finished = True
        elif percent // self.step <= self.percent // self.step or now - self.at < self.interval:
            return None
        self.percent, self.at = percent, now
        return percent


def parse_dfu_progress(text: str) -> list[tuple[str, int, int]]:
    """``(what, percent, bytes)`` of each progress report in a piece of dfu-util's output, which
    redraws its bar with a carriage return: ``\\rDownload\\t[=====    ]  45%        12345 bytes``."""
    found = []
    for part in text.replace("\r", "\n").split("\n"):
        words = part.replace("[", " [ ").replace("]", " ] ").split()
        if "]" not in words or len(words) < 4 or words[-1] != "bytes":
            continue
        after = words[words.index("]") + 1:]
        if len(after) == 3 and after[0].endswith("%") and after[0][:-1].isdigit() and after[1].isdigit():
            found.append((words[0], int(after[0][:-1]), int(after[1])))
    return found


def parse_client_progress(text: str) -> list[tuple[str, int, int]]:
    """``(what, done, total)`` of each ``progress <what> <done> <total>`` line of the pyusb client."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "progress" and words[2].isdigit() and words[3].isdigit():
            found.append((words[1], int(words[2]), int(words[3])))
    return found


def run_streaming(argv: list[str], timeout: float, on_output: Any, merge: bool = False,
                  cwd: str | None = None) -> tuple[int, str, str]:
    """Run ``argv``, handing each piece of its output to ``on_output(text)`` as it comes (for live
    progress); ``(exit status, stdout, stderr)`` at the end (``merge``: stderr into stdout).
    Raises :class:`subprocess.TimeoutExpired` (the process killed) after ``timeout`` seconds."""
    import selectors

    process = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=cwd,
                               stderr=subprocess.STDOUT if merge else subprocess.PIPE)
    deadline = time.monotonic() + timeout
    texts: dict[int, list[bytes]] = {1: [], 2: []}
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ, 1)
        if not merge:
            selector.register(process.stderr, selectors.EVENT_READ, 2)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                process.kill()
                process.wait()
                raise subprocess.TimeoutExpired(argv, timeout)
            for key, _ in selector.select(min(left, 1.0)):
                chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                texts[key.data].append(chunk)
                with contextlib.suppress(Exception):  # progress is a courtesy: it never fails a flash
                    on_output(chunk.decode("utf-8", "replace"))
    status = process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    return status, b"".join(texts[1]).decode("utf-8", "replace"), b"".join(texts[2]).decode("utf-8", "replace")


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # the step that reads it says what is wrong


def unbuffered(argv: list[str]) -> list[str]:
    """dfu-util redraws its bar without a newline or a flush: into a pipe it would arrive at the
    end, so it runs with an unbuffered stdout (coreutils' stdbuf) when the Pi has it."""
    stdbuf = shutil.which("stdbuf")
    return [stdbuf, "-o0", *argv] if stdbuf else argv


class StepFailed(Exception):
    pass


class Interrupted(Exception):
    """The agent was asked to stop (SIGTERM, SIGINT): the current step ends, the printer is mended."""


def usb_id(port: str) -> tuple[str, str] | None:
    try:
        with open(f"{SYSFS_USB}/{port}/idVendor", encoding="ascii") as vendor:
            with open(f"{SYSFS_USB}/{port}/idProduct", encoding="ascii") as product:
                return vendor.read().strip(), product.read().strip()
    except OSError:
        return None


# what a board's USB id says of it, in the report's words; methods' Pi sources add their bootloaders
USB_STATES: dict[tuple[str, str], str] = {KLIPPER_ID: "running Klipper", DFU_ID: "in DFU"}


def usb_state(port: str) -> str:
    """The board's state on ``port`` now: "running Klipper", "in DFU", ..., "not on USB"."""
    found = usb_id(port)
    if found is None:
        return "not on USB"
    return USB_STATES.get(found, ":".join(found) + " there")


def tty_of(port: str) -> str | None:
    """The tty of the Klipper board on ``port`` now (its name changes on every re-enumeration)."""
    base = f"{SYSFS_USB}/{port}"
    for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        ttys = os.path.join(base, entry, "tty")
        if entry.startswith(port + ":") and os.path.isdir(ttys) and os.listdir(ttys):
            return "/dev/" + sorted(os.listdir(ttys))[0]
    return None


def client_answer(stdout: str) -> dict[str, Any]:
    """The pyusb client's JSON result: its last stdout line; {} when there is none."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        return answer if isinstance(answer, dict) else {}
    return {}


def trimmed(data: bytes) -> bytes:
    """A flash read without its erased tail (kept 8-byte aligned): what must be written back."""
    end = len(data.rstrip(b"\xff"))
    return data[:end + (-end % 8)]


# ------------------------------------------------------------------------------ flash methods

class DfuBackend:
    """Writing a DfuSe board in ROM DFU; every write is read back and compared before leaving."""

    name = ""

    def __init__(self, agent: Agent, step: dict[str, Any]) -> None:
        self.agent, self.step = agent, step
        self.exit: int | None = None
        self.output = ""

    def read(self, length: int, dest: str) -> None:
        raise NotImplementedError

    def write_verified(self, image: str) -> bool:
        """Write ``image`` at the step's address, read it back: True when it matches (then left DFU)."""
        raise NotImplementedError


class DfuUtil(DfuBackend):
    name = "dfu-util"

    def dfu(self, *args: str, timeout: float = DOWNLOAD_TIMEOUT_S, total: int = 0) -> str:
        """Run dfu-util on the step's port; ``total``: the bytes a download writes (its progress
        is passed on as it comes, :meth:`Agent.transfer`)."""
        argv = ["dfu-util", "-p", self.step["port"], "-a", str(self.step.get("alt", 0)), *args]
        pending = [""]  # dfu-util's last report, until the next carriage return completes it

        def seen(text: str) -> None:
            whole, cut = pending[0] + text, max((pending[0] + text).rfind("\r"), (pending[0] + text).rfind("\n"))
            pending[0] = whole[cut + 1:] if cut >= 0 else whole
            for what, percent, count in parse_dfu_progress(whole[:cut + 1] if cut >= 0 else ""):
                if what == "Download" and total:
                    self.agent.transfer("write", count, total)

        try:
            code, out, _ = run_streaming(unbuffered(argv) if total else argv, timeout, seen, merge=True)
        except FileNotFoundError:
            raise StepFailed("dfu-util is not installed on the Pi (apt install dfu-util)") from None
        except subprocess.TimeoutExpired:
            raise StepFailed(f"dfu-util did not finish within {timeout:g} s; the board is probably left in DFU") \
                from None
        self.exit, self.output = code, out
        for needle, why in DFU_FAILURES:
            if needle in out:
                raise StepFailed(f"dfu-util failed (exit {code}): {why}")
        return out

    def read(self, length: int, dest: str) -> None:
        if os.path.exists(dest):
            os.unlink(dest)  # dfu-util never overwrites an upload file: it would leave the old one
        self.dfu("-s", f"{self.step['address']:#010x}:{length}", "-U", dest)
        if not os.path.exists(dest) or os.path.getsize(dest) != length:
            raise StepFailed(f"dfu-util read {os.path.getsize(dest) if os.path.exists(dest) else 0} of "
                             f"{length} bytes of the old firmware")

    def write_verified(self, image: str) -> bool:
        address = f"{self.step['address']:#010x}"
        size = file_size(image)
        self.agent.transfer("write", 0, size, start=True)
        out = self.dfu("-s", address, "-D", image, total=size)
        if DFU_DOWNLOADED not in out:
            last = (out.strip().splitlines() or ["no output"])[-1]
            raise StepFailed(f"dfu-util did not report a complete download (exit {self.exit}): {last}")
        with open(image, "rb") as handle:
            wanted = handle.read()
        back = self.agent.scratch("read-back.bin")
        self.agent.note_phase("read back and compare")
        self.read(len(wanted), back)
        with open(back, "rb") as handle:
            same = handle.read() == wanted
        os.unlink(back)
        self.agent.read_back = same
        if not same:
            return False
        # zero-length leave request: jump to the application (exit 74/251 here are known false alarms)
        self.dfu("-s", address + ":leave", timeout=COMMAND_TIMEOUT_S)
        return True


class Pyusb(DfuBackend):
    """A client of the pyusb venv on the Pi (``python -m <module>``): one JSON answer line."""

    name = "pyusb"
    module, label, mode = "pyinfra_ratos.firmware.dfu", "pyusb DFU client", "DFU"
    read_args: tuple[str, ...] = ()

    def client(self, *args: str) -> dict[str, Any]:
        python = os.path.join(self.agent.path(self.step.get("venv", "")), "bin", "python")
        if not os.access(python, os.X_OK):
            raise StepFailed(f"the {self.label} is not installed on the Pi ({python} is missing): "
                             "the firmware deploy installs it (operation firmware.dfu_client)")
        # -I: neither the working directory nor PYTHON* variables can shadow the client
        argv = [python, "-I", "-m", self.module, *args, "--port", self.step["port"],
                "--address", f"{self.step['address']:#010x}", "--name", self.agent.board_label]
        pending = [""]  # the client's last stderr line, until its newline arrives

        def seen(text: str) -> None:
            whole = pending[0] + text
            complete, _, pending[0] = whole.rpartition("\n")
            for what, count, total in parse_client_progress(complete):
                if what == "download":
                    self.agent.transfer("write", count, total)
                elif what == "verify" and count == 0:
                    self.agent.note_phase("read back and compare")

        try:
            code, out, err = run_streaming(argv, DOWNLOAD_TIMEOUT_S, seen, cwd="/")
        except subprocess.TimeoutExpired:
            raise StepFailed(f"the {self.label} did not finish within {DOWNLOAD_TIMEOUT_S} s; the board "
                             f"is probably left in {self.mode}") from None
        self.exit, self.output = code, out + err
        answer = client_answer(out)
        answer.setdefault("stderr", (err.strip().splitlines() or ["no output"])[-1])
        return answer

    def read(self, length: int, dest: str) -> None:
        if os.path.exists(dest):
            os.unlink(dest)  # never judge a read by a file a former run left
        answer = self.client("read", "--length", str(length), "--out", dest, *self.read_args)
        if self.exit != 0 or answer.get("ok") is not True:
            raise StepFailed(f"{self.label} could not read the old firmware (exit {self.exit}): "
                             f"{answer.get('error') or answer['stderr']}")

    def write_args(self) -> tuple[str, ...]:
        return ("--protect-below", f"{self.step.get('protect_below', self.step['address']):#010x}")

    def write_verified(self, image: str) -> bool:
        self.agent.transfer("write", 0, file_size(image), start=True)
        answer = self.client("flash", "--image", image, *self.write_args())
        self.agent.read_back = answer.get("read_back_ok")
        if answer.get("failure") == "verify":
            return False
        if self.exit != 0 or answer.get("ok") is not True:
            raise StepFailed(f"{self.label} failed ({answer.get('failure') or 'no JSON result'}, exit "
                             f"{self.exit}): {answer.get('error') or answer['stderr']}")
        return True


BACKENDS = {"DfuDownload": DfuUtil, "PyusbDownload": Pyusb}


# ------------------------------------------------------------------------------ method runners

class Runner:
    """The Pi side of a flash method (``pyinfra_ratos.firmware.methods``): how the agent writes one
    board from its plan's steps, and how it puts back what the board ran. Keyed in :data:`RUNNERS`
    by the plan's ``method``; a method whose runner is not built in ships it in its ``pi_source``,
    appended to this file, which registers it there."""

    def flash(self, agent: Agent, board: dict[str, Any], record: dict[str, Any]) -> None:
        raise NotImplementedError

    def restore(self, agent: Agent, board: dict[str, Any], record: dict[str, Any]) -> str | None:
        raise NotImplementedError


class DfuRunner(Runner):
    """DfuSe (dfu-util or the pyusb client): request the bootloader, keep a read of the old
    firmware, write with read-back (one retry), leave, wait for Klipper on the same port."""

    def flash(self, agent: Agent, board: dict[str, Any], record: dict[str, Any]) -> None:
        steps = {step["step"]: step for step in board["steps"]}
        port = board.get("port")
        write = next(steps[k] for k in BACKENDS if k in steps)
        agent.enter_mode(port, DFU_ID, "DFU", float(steps.get("WaitDfu", {"timeout": 10})["timeout"]),
                         (steps.get("RequestBootloader") or {}).get("tty"))
        backend = BACKENDS[write["step"]](agent, write)
        record["backend"] = backend.name
        agent.keep_firmware(backend, port, int(write.get("capture_length") or 0), record)
        record["written"] = True
        agent.write_with_retry(backend, agent.path(write["image"]), record)
        agent.note_phase(f"waiting for Klipper on USB port {port}")
        agent.wait_klipper(port, float(steps.get("WaitKlipper", {"timeout": 30})["timeout"]))

    def restore(self, agent: Agent, board: dict[str, Any], record: dict[str, Any]) -> str | None:
        port = board.get("port")
        if not record.get("capture"):
            return (f"no copy of the firmware {board['board']} ran could be read: flash it by hand on USB port "
                    f"{port}, or fix the fault and rerun")
        write = next(step for step in board["steps"] if step["step"] in BACKENDS)
        try:
            agent.enter_mode(port, DFU_ID, "DFU", 10.0)
            agent.write_with_retry(BACKENDS[write["step"]](agent, write), record["capture"], {"notes": []})
            agent.wait_klipper(port, 30.0)
        except (StepFailed, Interrupted) as failed:
            return (f"{board['board']} on USB port {port} is {usb_state(port)} and could not be given back its "
                    f"old firmware ({failed}): power-cycle the printer's board, then rerun the update")
        return None


class LinuxRunner(Runner):
    """The Linux host MCU: keep the installed binary, install the new one, restart its unit."""

    def flash(self, agent: Agent, board: dict[str, Any], record: dict[str, Any]) -> None:
        steps = {step["step"]: step for step in board["steps"]}
        install = steps["InstallBinary"]
        record["backend"] = "linux"
        if os.path.exists(install["dest"]):
            keep = agent.scratch("klipper_mcu")
            shutil.copy2(install["dest"], keep)
            record["capture"] = keep
        record["written"] = True
        size = file_size(agent.path(install["source"]))
        agent.transfer("write", 0, size, start=True)
        agent.run(["install", "-m", "0755", agent.path(install["source"]), install["dest"]])
        agent.transfer("write", size, size)
        if "RestartService" in steps:
            agent.run(["systemctl", "restart", steps["RestartService"]["name"]])

    def restore(self, agent: Agent, board: dict[str, Any], record: dict[str, Any]) -> str | None:
        steps = {step["step"]: step for step in board["steps"]}
        if not record.get("capture"):
            return "reinstall the previous klipper_mcu by hand"
        agent.run(["install", "-m", "0755", record["capture"], steps["InstallBinary"]["dest"]])
        if "RestartService" in steps:
            agent.run(["systemctl", "restart", steps["RestartService"]["name"]])
        return None


RUNNERS: dict[str, Runner] = {"dfu-util": DfuRunner(), "pyusb": DfuRunner(), "linux": LinuxRunner()}


def runner(board: dict[str, Any]) -> Runner:
    found = RUNNERS.get(board.get("method") or "")
    if found is None:
        raise StepFailed(f"{board['board']}: this agent has no runner for flash method {board.get('method')!r}")
    return found


# ------------------------------------------------------------------------------ the agent

class Agent:
    """One printer's transaction (see the module docstring); :meth:`run` returns the exit status."""

    def __init__(self, plan: dict[str, Any], home: str) -> None:
        self.plan = plan
        self.home = home  # the SSH user's: artifact paths in the plan are relative to it
        self.base = plan.get("moonraker", "http://127.0.0.1:7125")
        self.boards: list[dict[str, Any]] = plan.get("boards") or []
        self.klipper = plan.get("klipper") or None  # {"path", "user", "from", "to"}
        self.locks: dict[str, int] = {}
        self.klipper_stopped = False
        self.moved = False
        self.board_label = ""
        self.read_back: bool | None = None
        self.records: list[dict[str, Any]] = []
        self.log: list[str] = []
        self.board_now: dict[str, Any] = {}  # the board being flashed, named in its progress lines
        self.throttle = Throttle()
        self.quiet = False  # the SSH connection is gone: nobody reads progress any more

        # the USB id a board's application enumerates as, when not Klipper's USB serial (a bridge: 1d50:606f)
        self.app_ids: dict[str, tuple[str, str]] = {}

    # --- live progress -----------------------------------------------------------------------

    def progress(self, phase: str, text: str, **fields: Any) -> None:
        """One ``RATOS-PROGRESS`` line, now (the controller shows it as it arrives)."""
        if self.quiet:
            return
        try:
            print(PROGRESS_PREFIX + json.dumps({"phase": phase, "text": text, **fields}, sort_keys=True), flush=True)
        except OSError:
            self.quiet = True

    def note_phase(self, text: str) -> None:
        """A step of the board being flashed."""
        self.progress("flash", text, **self.board_now)

    def transfer(self, what: str, done: int, total: int, start: bool = False) -> None:
        """A transfer's bytes so far; passed on when :class:`Throttle` says so (``start``: a new one)."""
        if start:
            self.throttle = Throttle()
            self.note_phase(f"{what} {total} bytes")
            return
        percent = self.throttle.due(done, total)
        if percent is not None:
            self.progress("flash", f"{what} {percent}% ({done} of {total} bytes)", done=done, total=total,
                          percent=percent, **self.board_now)

    # --- helpers -----------------------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.home, name)  # an absolute name stays as it is

    def scratch(self, name: str) -> str:
        os.makedirs(ROLLBACK_DIR, mode=0o700, exist_ok=True)
        return os.path.join(ROLLBACK_DIR, name)

    def run(self, argv: list[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
        try:
            done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
        except OSError as error:
            raise StepFailed(f"{' '.join(argv)} could not run: {error.strerror}") from None
        if done.returncode != 0:
            raise StepFailed(f"{' '.join(argv)} failed (exit {done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()[-300:]}")
        return done.stdout

    def as_owner(self, *argv: str) -> str:
        user = self.klipper["user"]
        home = os.path.expanduser("~" + user)
        return self.run(["runuser", "-u", user, "--", "env", f"HOME={home}", *argv])

    def lock(self, name: str, what: str) -> bool:
        """Take ``name`` under :data:`LOCK_DIR`, waiting up to the plan's ``lock_wait_s``."""
        os.makedirs(LOCK_DIR, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(LOCK_DIR, name), os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + float(self.plan.get("lock_wait_s", 0))
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "what": what, "since": time.time()}).encode())
        self.locks[name] = fd
        return True

    def unlock_all(self) -> None:
        for name, fd in list(self.locks.items()):
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
            del self.locks[name]

    def wait_usb(self, port: str, wanted: tuple[str, str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if usb_id(port) == wanted:
                return True
            time.sleep(0.1)
        return usb_id(port) == wanted

    def klippy(self) -> dict[str, Any]:
        """klippy's state and every MCU's version, through Moonraker."""
        names = [b["mcu_name"] for b in self.boards]
        objects = ["webhooks"] + ["mcu" if n == "mcu" else "mcu%20" + n for n in names]
        body = http_json(self.base + "/printer/objects/query?" + "&".join(objects)).get("body") or {}
        status = (body.get("result") or {}).get("status") if isinstance(body, dict) else None
        status = status if isinstance(status, dict) else {}
        versions = {n: (status.get("mcu" if n == "mcu" else "mcu " + n) or {}).get("mcu_version") for n in names}
        return {"state": (status.get("webhooks") or {}).get("state") or "", "versions": versions}

    # --- board steps -------------------------------------------------------------------------

    def request_bootloader(self, port: str, tty: str | None) -> None:
        # Klipper's scripts/flash_usb.py: DTR up, 1200 baud, DTR down; the firmware reboots into
        # its bootloader. O_NOCTTY: the board's hang-up when it re-enumerates must not kill us;
        # O_NONBLOCK: never wait for a carrier. The tty is looked up by port: it changes name.
        tty = tty_of(port) or tty
        if not tty:
            raise StepFailed(f"no tty for the board on USB port {port}: cannot send the bootloader request")
        try:
            fd = os.open(tty, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as error:
            raise StepFailed(f"bootloader request on {tty} failed: {error}") from None
        try:
            fcntl.ioctl(fd, termios.TIOCMBIS, struct.pack("I", termios.TIOCM_DTR))
            attrs = termios.tcgetattr(fd)
            attrs[4] = attrs[5] = termios.B1200
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            fcntl.ioctl(fd, termios.TIOCMBIC, struct.pack("I", termios.TIOCM_DTR))
        except OSError as error:
            raise StepFailed(f"bootloader request on {tty} failed: {error}") from None
        finally:
            os.close(fd)
        self.log.append(f"bootloader request sent on {tty}")

    def enter_mode(self, port: str, wanted: tuple[str, str], what: str, timeout: float,
                   tty: str | None = None) -> None:
        """Send a board running Klipper to its bootloader (``wanted``, called ``what``) and wait for it."""
        self.note_phase(f"entering {what} on USB port {port}")
        if usb_id(port) == KLIPPER_ID:
            self.request_bootloader(port, tty)
        if not self.wait_usb(port, wanted, timeout):
            now = usb_state(port)
            if now == "running Klipper":
                now = "it still runs Klipper: the bootloader request was ignored"
            raise StepFailed(f"the board did not enter {what} on USB port {port} within {timeout:g} s ({now})")

    def wait_klipper(self, port: str, timeout: float) -> None:
        app = self.app_ids.get(port, KLIPPER_ID)
        if not self.wait_usb(port, app, timeout):
            now = usb_state(port)
            now = "still " + now if now.startswith("in ") else now
            what = "Klipper" if app == KLIPPER_ID else "Klipper (" + ":".join(app) + ")"
            raise StepFailed(f"the board did not come back as {what} on its USB port {port} within "
                             f"{timeout:g} s ({now})")

    def keep_firmware(self, backend: DfuBackend, port: str, length: int, record: dict[str, Any]) -> None:
        """Read up to ``length`` bytes of what the board runs and keep them (``record["capture"]``),
        without the erased tail; nothing is kept of a blank board."""
        if not length:
            return
        dest = self.scratch(f"{port}.bin")
        self.note_phase(f"reading the firmware it ran (up to {length} bytes, kept for a rollback)")
        backend.read(length, dest)
        with open(dest, "rb") as handle:
            kept = trimmed(handle.read())
        if kept:
            with open(dest, "wb") as handle:
                handle.write(kept)
            record["capture"] = dest
        else:
            os.unlink(dest)  # a blank board: nothing worth restoring

    def flash_board(self, board: dict[str, Any], record: dict[str, Any]) -> None:
        """One board, by the runner of its plan's method; keeps what it ran (``record["capture"]``)."""
        self.board_label = board["board"]
        self.board_now = {"board": board["board"], "mcu": board.get("mcu_name") or ""}
        runner(board).flash(self, board, record)

    def write_with_retry(self, backend: DfuBackend, image: str, record: dict[str, Any]) -> None:
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            if backend.write_verified(image):
                record["read_back"] = True
                if attempt > 1:
                    record["notes"].append(f"the first write read back wrong; attempt {attempt} read back right")
                return
            record["read_back"] = False
        raise StepFailed(f"the flash read back wrong {WRITE_ATTEMPTS} times ({backend.name}); the board is left "
                         "in DFU")

    def restore_board(self, board: dict[str, Any], record: dict[str, Any]) -> str | None:
        """Put back what the board ran; None when done, else what the operator must do."""
        return runner(board).restore(self, board, record)

    # --- the transaction ---------------------------------------------------------------------

    def mark_pending(self, pending: bool) -> None:
        """A restart owed to the printer (the next deploy that finds it idle does it)."""
        marker = self.plan.get("pending_marker")
        if not marker:
            return
        path = self.path(marker)
        try:
            if pending:
                open(path, "a").close()
                owner = os.stat(os.path.dirname(path))
                os.chown(path, owner.st_uid, owner.st_gid)
            elif os.path.exists(path):
                os.unlink(path)
        except OSError:
            pass

    def prepared(self) -> None:
        """What was prepared is still there: images with their sha256, the target commit, a clean tree."""
        for board in self.boards:
            for step in board["steps"]:
                image = step.get("image") or step.get("source")
                if image and board.get("sha256"):
                    try:
                        with open(self.path(image), "rb") as handle:
                            digest = hashlib.sha256(handle.read()).hexdigest()
                    except OSError as error:
                        raise StepFailed(f"{board['board']}: the image {image} is not on the Pi ({error.strerror})") \
                            from None
                    if digest != board["sha256"]:
                        raise StepFailed(f"{board['board']}: {image} does not have the sha256 it was shipped with")
        if self.klipper:
            p, to = self.klipper["path"], self.klipper["to"]
            try:
                self.as_owner("git", "-C", p, "cat-file", "-e", to + "^{commit}")
            except StepFailed:
                raise StepFailed(f"commit {to[:12]} is not in {p}: the fetch did not bring it") from None
            if self.as_owner("git", "-C", p, "status", "--porcelain", "--untracked-files=no").strip():
                raise StepFailed(f"{p} has local changes since it was read: not overwriting them")
            if self.klipper.get("from"):  # a checkout just created by the fetch has no HEAD yet
                head = self.as_owner("git", "-C", p, "rev-parse", "HEAD").strip()
                if head != self.klipper["from"]:
                    raise StepFailed(f"{p} moved to {head[:12]} since it was read; rerun")

    def checkout(self, commit: str) -> None:
        p = self.klipper["path"]
        self.as_owner("git", "-C", p, "checkout", "-q", "--detach", commit)
        head = self.as_owner("git", "-C", p, "rev-parse", "HEAD").strip()
        if head != commit:
            raise StepFailed(f"{p} is at {head[:12]}, not {commit[:12]}, after the checkout")

    def started(self, unit: str, before: dict[str, str]) -> bool:
        after = unit_state(unit)
        if after.get("ActiveState") != "active":
            return False
        if before.get("ActiveState") != "active":
            return True
        return (after.get("MainPID"), after.get("ExecMainStartTimestampMonotonic")) != \
            (before.get("MainPID"), before.get("ExecMainStartTimestampMonotonic"))

    def verify(self, klippy_before: str, expect: dict[str, str]) -> str | None:
        """None when klippy is as ready as before and every MCU in ``expect`` runs its version."""
        deadline = time.monotonic() + float(self.plan.get("verify_timeout", 30))
        seen: dict[str, Any] = {}
        while True:
            seen = self.klippy()
            ready = seen["state"] == "ready" or klippy_before != "ready"
            wrong = {n: v for n, v in expect.items() if seen["versions"].get(n) != v}
            if ready and not wrong:
                return None
            if time.monotonic() >= deadline:
                break
            time.sleep(VERIFY_POLL_S)
        if wrong:
            name = sorted(wrong)[0]
            return f"{name} reports {seen['versions'].get(name) or 'nothing'}, expected {wrong[name]}"
        return f"klippy is {seen['state'] or 'not answering'} after the restart (it was ready before)"

    def run_transaction(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"outcome": "nothing", "reason": "", "todo": "", "restarted": False,
                                   "klipper_before": (self.klipper or {}).get("from"),
                                   "klipper_after": (self.klipper or {}).get("from")}
        what = "updating" if self.klipper else "flashing" if self.boards else "restarting Klipper"
        if not self.lock(PRINTER_LOCK, what):
            other = held_locks() or [{}]
            summary.update(outcome="pending", reason=f"another pyinfra-ratos run is working on this printer "
                                                     f"(pid {other[0].get('pid', '?')}): nothing was touched")
            return summary
        for board in self.boards:
            if board.get("port") and not self.lock("port-" + board["port"].replace("/", "_") + ".lock",
                                                   f"flashing {board['board']}"):
                summary.update(outcome="pending", reason=f"USB port {board['port']} is being flashed by another "
                                                         "run: nothing was touched")
                return summary
        raw = read_activity(self.base, own_locks=list(self.locks))
        idle, why = judge_activity(raw)
        if not idle:
            summary.update(outcome="pending", reason=f"{why}: nothing was touched")
            self.mark_pending(True)
            return summary
        webhooks = (job_status(raw) or {}).get("webhooks")
        klippy_before = (webhooks.get("state") if isinstance(webhooks, dict) else "") or ""
        try:
            self.prepared()
        except StepFailed as failed:
            summary.update(outcome="failed", reason=f"{failed}: nothing was touched")
            return summary
        # a plan with nothing to flash or move restarts its service (klipper, moonraker) alone
        service = "klipper" if self.boards or self.klipper else self.plan.get("restart") or "klipper"
        before = unit_state(service)
        records = [{"board": b["board"], "mcu_name": b.get("mcu_name"), "port": b.get("port"), "notes": [],
                    "written": False, "capture": None, "backend": None, "read_back": None} for b in self.boards]
        failure: str | None = None
        step = "stopping Klipper"
        try:
            if self.boards or self.klipper:
                self.progress("stop", "printer idle: stopping Klipper")
                self.klipper_stopped = True  # a stop that reports failure may still have stopped it
                self.run(["systemctl", "stop", "klipper"])
            for board, record in zip(self.boards, records):
                step = f"flashing {board['board']}"
                self.progress("flash", f"flashing {board['board']} ({board.get('method')})", board=board["board"],
                              mcu=board.get("mcu_name") or "")
                self.flash_board(board, record)
                record["flashed"] = True
            if self.klipper and self.klipper["to"] != self.klipper.get("from"):
                step = "checking out Klipper"
                self.progress("checkout", f"{self.klipper['path']} to {self.klipper['to'][:12]}")
                self.checkout(self.klipper["to"])
                self.moved = True
                summary["klipper_after"] = self.klipper["to"]
            step = f"starting {service}"
            self.progress("start", f"{'starting' if self.klipper_stopped else 'restarting'} {service}")
            self.run(["systemctl", "start" if self.klipper_stopped else "restart", service])
            self.klipper_stopped = False
            if not self.started(service, before):
                raise StepFailed(f"{service}.service did not start anew (same main PID and start time, or not "
                                 "active)")
            summary["restarted"] = True
            step = "verifying"
            self.progress("verify", "klippy as ready as before" + (", every flashed MCU on its new version"
                                                                    if self.boards else ""))
            expect = {b["mcu_name"]: b["expected_version"] for b in self.boards if b.get("expected_version")}
            problem = self.verify(klippy_before, expect)
            if problem:
                raise StepFailed(problem)
        except (StepFailed, Interrupted) as failed:
            failure = f"{step}: {failed}"
        except Exception as error:  # noqa: BLE001 - whatever broke, the printer is mended below
            failure = f"{step}: unexpected error {error!r}"
        if failure is None:
            summary.update(outcome="done", reason="")
            self.mark_pending(False)
        else:
            summary.update(self.roll_back(failure, records, before, klippy_before))
        self.records = records
        return summary

    def roll_back(self, failure: str, records: list[dict[str, Any]], before: dict[str, str],
                  klippy_before: str) -> dict[str, Any]:
        """Back to the last working pair: the previous commit and the firmware each board ran."""
        self.progress("rollback", f"rolling back: {failure}")
        todo: list[str] = []
        try:
            self.run(["systemctl", "stop", "klipper"])
            self.klipper_stopped = True
        except StepFailed as failed:
            todo.append(f"stop Klipper: {failed}")
        for board, record in reversed(list(zip(self.boards, records))):
            if record["written"]:
                left = self.restore_board(board, record)
                if left:
                    todo.append(left)
                else:
                    record["restored"] = True
        after = self.klipper.get("from") if self.klipper else None
        if self.moved and after:
            try:
                self.checkout(after)
                self.moved = False
            except StepFailed as failed:
                todo.append(f"check {self.klipper['path']} out at {after[:12]} by hand ({failed})")
        try:
            self.run(["systemctl", "start", "klipper"])
            self.klipper_stopped = False
        except StepFailed as failed:
            todo.append(f"start Klipper: {failed}")
        restored = {b["mcu_name"]: b["before_version"] for b, r in zip(self.boards, records)
                    if r.get("restored") and b.get("before_version")}
        problem = None if todo else self.verify(klippy_before, restored)
        if problem:
            todo.append(f"after the rollback {problem}: look at the printer")
        result = {"klipper_after": after if not self.moved else self.klipper["to"], "restarted": True}
        if todo:
            return {**result, "outcome": "attention", "reason": failure, "todo": "; ".join(todo)}
        touched = any(r["written"] for r in records) or self.moved
        return {**result, "outcome": "rolled-back" if touched else "failed", "reason": failure,
                "todo": "" if touched else "nothing was flashed or moved"}

    def execute(self) -> tuple[dict[str, Any], int]:
        started = time.monotonic()
        try:
            summary = self.run_transaction()
        finally:
            if self.klipper_stopped:  # design rule 4: Klipper runs again on every exit path
                try:
                    self.run(["systemctl", "start", "klipper"])
                except StepFailed:
                    pass
            self.unlock_all()
        summary["duration_s"] = round(time.monotonic() - started, 2)
        return summary, {"done": EXIT_DONE, "nothing": EXIT_DONE, "pending": EXIT_PENDING}.get(
            summary["outcome"], EXIT_FAILED)

    def board_results(self, summary: dict[str, Any]) -> list[dict[str, Any]]:
        """One record per board, in the shape the fleet report reads (``action``, ``verified``...)."""
        out = []
        records = self.records or [{"written": False, "notes": []} for _ in self.boards]
        for board, record in zip(self.boards, records):
            done = summary["outcome"] == "done"
            if done:
                action, after = "flashed", board.get("expected_version")
                reason = f"{board['board']}: runs {after}" + (", read back and compared" if record.get("read_back")
                                                               else ", version only (not read back)")
            elif summary["outcome"] == "pending":
                action, after, reason = "skipped", board.get("before_version"), f"{board['board']}: {summary['reason']}"
            else:
                action = "failed"
                after = board.get("before_version") if record.get("restored") or not record.get("written") else None
                reason = f"{board['board']}: {summary['reason']}"
            reason += "".join(f"; {note}" for note in record.get("notes", []))
            out.append({"board": board["board"], "mcu_name": board.get("mcu_name"), "port": board.get("port"),
                        "method": board.get("method"), "before_version": board.get("before_version"),
                        "after_version": after, "action": action, "verified": done, "reason": reason,
                        "backend": record.get("backend"), "read_back": record.get("read_back"),
                        "rolled_back": bool(record.get("restored")), "klipper_restarted": summary["restarted"],
                        "duration_s": summary.get("duration_s", 0.0)})
        return out


def _interrupt(signum: int, frame: Any) -> None:
    for name in ("SIGTERM", "SIGINT"):  # the mending that follows must not be cut short in turn
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


def guard_signals() -> None:
    """A lost SSH connection (SIGHUP) must not cut a flash short: the agent finishes, mends and
    restarts Klipper anyway (its lock tells a new run to keep off), only its result goes unread. A
    stop request (SIGTERM, SIGINT) ends the current step, then the printer is mended."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def main(argv: list[str]) -> int:
    guard_signals()
    plan = json.loads(argv[1])
    agent = Agent(plan, argv[2] if len(argv) > 2 else os.path.expanduser("~"))
    summary, status = agent.execute()
    try:
        for record in agent.board_results(summary):
            print(RESULT_PREFIX + json.dumps(record, sort_keys=True), flush=True)
        print(SUMMARY_PREFIX + json.dumps(summary, sort_keys=True), flush=True)
        if status != EXIT_DONE:
            sys.stderr.write(f"pyinfra-ratos: {summary['outcome']}: {summary['reason']}"
                             + (f"; to do: {summary['todo']}" if summary.get("todo") else "") + "\n")
    except OSError:
        pass  # the SSH connection is gone: nobody reads the result any more
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
