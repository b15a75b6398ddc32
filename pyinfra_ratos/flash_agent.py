"""The flash agent: carries out one board's flash plan on the Pi, and restarts Klipper whatever happens.

The flash operation sends this module's source to the Pi and runs it there as root, with the plan
as JSON (``sudo python3 -c SOURCE PLAN``): a flash is a sequence with waits, output to read and a
``finally`` that must restart Klipper, which a chain of shell commands would get wrong on some exit
path. Stdlib only, no other project module: it runs with the Pi's own python3.

It prints one line ``RATOS-RESULT {json}`` (the per-board result) and exits 0 when the board runs
the expected version afterwards (or when nothing was touched because the printer became busy),
1 when the flash failed. The plan (made by :mod:`pyinfra_ratos.flash_plan`)::

    {"board": "btt-octopus-pro-h723-11", "mcu_name": "mcu", "method": "dfu-util", "port": "1-1.3",
     "expected_version": "v0.13.0-3-g...", "before_version": "v0.12.0-0-g...",
     "moonraker": "http://127.0.0.1:7125",
     "steps": [{"step": "EnsureIdle"}, {"step": "StopKlipper"}, ...],
     "finally_steps": [{"step": "StartKlipper"}], "verify_steps": [{"step": "Verify", ...}]}

The result record::

    {"board", "mcu_name", "port", "method", "before_version", "after_version",
     "action": "flashed" | "failed" | "skipped", "reason", "verified": bool,
     "backend": "dfu-util" | "pyusb" | "linux" | null,   # what wrote the firmware; null: nothing did
     "read_back": true | false | null,   # the flash read back and compared (pyusb); null: not read back
     "dfu_exit": int | null,             # exit status of the DFU tool that ran
     "klipper_restarted": bool, "duration_s": float}
"""

from __future__ import annotations

import fcntl
import json
import os
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
DFU_ID = ("0483", "df11")
KLIPPER_ID = ("1d50", "614e")
SYSFS_USB = "/sys/bus/usb/devices"

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


class StepFailed(Exception):
    pass


class BecameBusy(Exception):
    pass


def usb_id(port: str) -> tuple[str, str] | None:
    try:
        with open(f"{SYSFS_USB}/{port}/idVendor", encoding="ascii") as vendor:
            with open(f"{SYSFS_USB}/{port}/idProduct", encoding="ascii") as product:
                return vendor.read().strip(), product.read().strip()
    except OSError:
        return None


def moonraker(base: str, path: str, method: str = "GET", timeout: float = 3.0) -> dict[str, Any]:
    request = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        try:
            return json.loads(error.read())
        except ValueError:
            return {"error": {"code": error.code, "message": str(error)}}
    except (OSError, ValueError):
        return {}


class Agent:
    def __init__(self, plan: dict[str, Any], home: str) -> None:
        self.plan = plan
        self.home = home  # the SSH user's: artifact paths in the plan are relative to it
        self.base = plan.get("moonraker", "http://127.0.0.1:7125")
        self.dfu_exit: int | None = None
        self.dfu_output = ""
        self.came_back = False
        self.klipper_stopped = False
        self.backend: str | None = None  # what wrote the firmware, once a write started
        self.read_back: bool | None = None
        self.reported: str | None = None
        self.log: list[str] = []

    # --- steps -------------------------------------------------------------------------------

    def EnsureIdle(self) -> None:
        answer = moonraker(self.base, "/printer/objects/query?print_stats&idle_timeout")
        status = answer.get("result", {}).get("status")
        if status is None:
            if self.service_active("klipper"):
                raise BecameBusy("Moonraker does not answer while Klipper runs: the printer state is unknown")
            return  # Klipper is stopped: nothing can be printing
        print_state = status.get("print_stats", {}).get("state", "")
        idle_state = status.get("idle_timeout", {}).get("state", "")
        if print_state in ("printing", "paused") or idle_state == "Printing":
            raise BecameBusy(f"the printer started a job ({print_state or idle_state}) before the flash")

    def StopKlipper(self) -> None:
        # set before the call: a stop that reports failure (a job timeout) may still have
        # stopped it, and starting a running Klipper is harmless (design rule 4)
        self.klipper_stopped = True
        self.systemctl("stop", "klipper")

    def StartKlipper(self) -> None:
        self.systemctl("start", "klipper")

    def RequestBootloader(self, tty: str, port: str) -> None:
        # Klipper's scripts/flash_usb.py: DTR up, 1200 baud, DTR down; the firmware reboots
        # into its bootloader (Katapult if present, else the ROM DFU)
        # O_NOCTTY: a session leader opening a tty without it would make the board's tty its
        # controlling terminal, and the hang-up when the board re-enumerates would kill it
        # before Klipper is restarted; O_NONBLOCK: never wait for a carrier
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

    def WaitDfu(self, port: str, timeout: float) -> None:
        if not self.wait_usb(port, DFU_ID, timeout):
            found = usb_id(port)
            if found == KLIPPER_ID:
                now = "it still runs Klipper: the bootloader request was ignored"
            else:
                now = (":".join(found) if found else "nothing") + " there"
            raise StepFailed(f"the board did not enter DFU on USB port {port} within {timeout:g} s ({now})")

    def DfuDownload(self, port: str, address: int, image: str, alt: int = 0, leave: bool = True) -> None:
        target = f"{address:#010x}" + (":leave" if leave else "")
        argv = ["dfu-util", "-p", port, "-R", "-a", str(alt), "-s", target, "-D", self.path(image)]
        self.backend = "dfu-util"
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except FileNotFoundError:
            raise StepFailed("dfu-util is not installed on the Pi (apt install dfu-util)") from None
        except subprocess.TimeoutExpired:
            raise StepFailed(f"dfu-util did not finish within {DOWNLOAD_TIMEOUT_S} s; the board is "
                             "probably left in DFU") from None
        self.dfu_exit, self.dfu_output = done.returncode, done.stdout + done.stderr
        self.log.append(f"dfu-util exit {done.returncode}")
        for needle, why in DFU_FAILURES:
            if needle in self.dfu_output:
                raise StepFailed(f"dfu-util failed (exit {done.returncode}): {why}")
        if DFU_DOWNLOADED not in self.dfu_output:
            last = (self.dfu_output.strip().splitlines() or ["no output"])[-1]
            raise StepFailed(f"dfu-util did not report a complete download (exit {done.returncode}): {last}")

    def PyusbDownload(self, port: str, address: int, image: str, protect_below: int, venv: str) -> None:
        """The pyinfra_ratos.dfu client: erase, write, read back and compare, then leave DFU."""
        python = os.path.join(self.path(venv), "bin", "python")
        if not os.access(python, os.X_OK):
            raise StepFailed(f"the pyusb DFU client is not installed on the Pi ({python} is missing): "
                             "the firmware deploy installs it (operation firmware.dfu_client)")
        # -I: neither the working directory nor PYTHON* variables can shadow the client
        argv = [python, "-I", "-m", "pyinfra_ratos.dfu", "flash", "--port", port,
                "--address", f"{address:#010x}", "--protect-below", f"{protect_below:#010x}",
                "--image", self.path(image), "--name", self.plan["board"]]
        self.backend = "pyusb"
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, cwd="/")
        except subprocess.TimeoutExpired:
            raise StepFailed(f"the pyusb DFU client did not finish within {DOWNLOAD_TIMEOUT_S} s; the board "
                             "is probably left in DFU") from None
        self.dfu_exit, self.dfu_output = done.returncode, done.stdout + done.stderr
        self.log.append(f"pyusb client exit {done.returncode}")
        answer = client_answer(done.stdout)
        self.read_back = answer.get("read_back_ok")
        if done.returncode != 0 or answer.get("ok") is not True:
            error = answer.get("error") or (done.stderr.strip().splitlines() or ["no output"])[-1]
            failure = answer.get("failure") or "no JSON result"
            raise StepFailed(f"pyusb DFU client failed ({failure}, exit {done.returncode}): {error}")

    def WaitKlipper(self, port: str, timeout: float) -> None:
        self.came_back = self.wait_usb(port, KLIPPER_ID, timeout)
        if not self.came_back:
            found = usb_id(port)
            now = "still in DFU" if found == DFU_ID else (":".join(found) + " there" if found else "nothing there")
            raise StepFailed(f"the download completed but the board did not come back as Klipper on its USB "
                             f"port {port} within {timeout:g} s ({now})")

    def InstallBinary(self, source: str, dest: str) -> None:
        self.backend = "linux"
        self.run(["install", "-m", "0755", self.path(source), dest])

    def RestartService(self, name: str) -> None:
        self.systemctl("restart", name)

    def Verify(self, mcu_name: str, version: str) -> None:
        key = "mcu" if mcu_name == "mcu" else f"mcu {mcu_name}"
        query = "mcu" if mcu_name == "mcu" else "mcu%20" + mcu_name
        reported = None
        deadline = time.monotonic() + float(self.plan.get("verify_timeout", 30))
        while time.monotonic() < deadline:
            status = moonraker(self.base, f"/printer/objects/query?{query}").get("result", {}).get("status", {})
            reported = status.get(key, {}).get("mcu_version")
            if reported == version:
                break
            time.sleep(VERIFY_POLL_S)
        if self.backend == "dfu-util":
            ok, reason = judge_dfu_result(self.dfu_exit or 0, self.dfu_output, self.came_back, reported, version)
        else:
            ok = reported == version
            reason = f"{mcu_name} runs {version}" if ok else f"{mcu_name} reports {reported or 'nothing'}, expected {version}"
        self.reported = reported
        if not ok:
            raise StepFailed(reason)
        self.log.append(reason)

    # --- helpers -----------------------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.home, name)  # an absolute name stays as it is

    def wait_usb(self, port: str, wanted: tuple[str, str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if usb_id(port) == wanted:
                return True
            time.sleep(0.1)
        return False

    def run(self, argv: list[str]) -> None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{' '.join(argv)} did not finish within {COMMAND_TIMEOUT_S} s") from None
        except OSError as error:
            raise StepFailed(f"{' '.join(argv)} could not run: {error.strerror}") from None
        if done.returncode != 0:
            raise StepFailed(f"{' '.join(argv)} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}")

    def systemctl(self, verb: str, unit: str) -> None:
        self.run(["systemctl", verb, unit])

    def service_active(self, unit: str) -> bool:
        try:
            return subprocess.run(["systemctl", "is-active", "--quiet", unit], timeout=COMMAND_TIMEOUT_S).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return True  # unknown counts as running: the printer may be busy

    def call(self, step: dict[str, Any]) -> None:
        args = {key: value for key, value in step.items() if key != "step"}
        getattr(self, step["step"])(**args)

    # --- the plan ----------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        started = time.monotonic()
        result: dict[str, Any] = {
            "board": self.plan["board"], "mcu_name": self.plan.get("mcu_name"), "port": self.plan.get("port"),
            "method": self.plan.get("method"), "before_version": self.plan.get("before_version"),
            "after_version": None, "verified": False,
        }
        failure: str | None = None
        try:
            for step in self.plan["steps"]:
                self.call(step)
        except BecameBusy as busy:
            result.update(action="skipped", reason=f"{self.plan['board']}: {busy}")
        except (StepFailed, Interrupted) as failed:
            failure = str(failed)
        except Exception as error:  # noqa: BLE001 - whatever broke, Klipper must come back below
            failure = f"unexpected error: {error!r}"
        finally:
            if self.klipper_stopped:  # design rule 4: restart Klipper on every exit path
                for step in self.plan.get("finally_steps", []):
                    try:
                        self.call(step)
                    except Exception as error:  # noqa: BLE001
                        failure = (failure + "; " if failure else "") + f"restarting Klipper failed: {error}"
        if "action" not in result:
            if failure is None:
                try:
                    for step in self.plan.get("verify_steps", []):
                        self.call(step)
                    result.update(action="flashed", verified=True, reason=f"{self.plan['board']}: {self.log[-1]}")
                except StepFailed as failed:
                    failure = str(failed)
                except Exception as error:  # noqa: BLE001 - always end with a result line
                    failure = f"unexpected error while verifying: {error!r}"
            if failure is not None:
                result.update(action="failed", reason=f"{self.plan['board']}: {failure}")
        # a board left alone still runs what it ran; otherwise only what Klipper reported counts
        result["after_version"] = self.plan.get("before_version") if result["action"] == "skipped" else self.reported
        result["klipper_restarted"] = self.klipper_stopped
        result["backend"] = self.backend
        result["read_back"] = self.read_back
        result["dfu_exit"] = self.dfu_exit
        result["duration_s"] = round(time.monotonic() - started, 2)
        return result


def client_answer(stdout: str) -> dict[str, Any]:
    """The pyusb client's JSON result: its last stdout line; {} when there is none."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        return answer if isinstance(answer, dict) else {}
    return {}


class Interrupted(Exception):
    """The agent was asked to stop (SIGTERM, SIGINT): the current step ends, Klipper restarts."""


def _interrupt(signum: int, frame: Any) -> None:
    for name in ("SIGTERM", "SIGINT"):  # the restart that follows must not be cut short in turn
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise Interrupted(f"interrupted by {signal.Signals(signum).name} before the flash finished")


def guard_signals() -> None:
    """A lost SSH connection (SIGHUP) must not cut a flash short: the agent finishes it and
    restarts Klipper anyway, only its result line goes unread. A stop request (SIGTERM, SIGINT)
    ends the current step, then Klipper is restarted."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def main(argv: list[str]) -> int:
    guard_signals()
    plan = json.loads(argv[1])
    agent = Agent(plan, argv[2] if len(argv) > 2 else os.path.expanduser("~"))
    result = agent.execute()
    try:
        if agent.dfu_output and result["action"] == "failed":
            sys.stderr.write(agent.dfu_output)  # the operator's evidence, under the result
        print(RESULT_PREFIX + json.dumps(result, sort_keys=True), flush=True)
    except OSError:
        pass  # the SSH connection is gone: nobody reads the result any more
    return 1 if result["action"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
