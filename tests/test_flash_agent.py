"""The flash agent off the farm: its exit paths, time limits and the pyusb client's answers.

The agent runs steps on a Pi as root; here the commands it would run are replaced by fakes
(a recording ``run``, a stand-in client script), so each exit path is checked on its own.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import termios
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos import flash_agent
from pyinfra_ratos.flash_agent import Agent, StepFailed
from pyinfra_ratos.flash_plan import DFU_CLIENT_VENV

VERSION = "v0.13.0-3-gb846a96"


def agent_for(steps: list[dict[str, Any]], home: str = "/home/pi", verify: bool = False,
              finally_steps: list[dict[str, Any]] | None = None) -> Agent:
    plan = {"board": "btt-octopus-pro-h723-11", "mcu_name": "mcu", "method": "pyusb", "port": "1-1.3",
            "expected_version": VERSION, "before_version": "v0.12.0-0-g097b935", "steps": steps,
            "finally_steps": [{"step": "StartKlipper"}] if finally_steps is None else finally_steps,
            "verify_steps": [{"step": "Verify", "mcu_name": "mcu", "version": VERSION}] if verify else [],
            "verify_timeout": 0.5}
    return Agent(plan, home)


def fake_client(home: Path, answer: dict[str, Any], status: int) -> Path:
    """A stand-in ``<venv>/bin/python`` printing the client's JSON line; it records its argv."""
    python = home / DFU_CLIENT_VENV / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\necho \"$@\" > {home}/argv\necho 'erase 0x08020000' >&2\n"
                      f"echo '{json.dumps(answer)}'\nexit {status}\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return python


def client_answer(**changes: Any) -> dict[str, Any]:
    answer = {"ok": True, "port": "1-1.3", "address": "0x08020000", "read_back_ok": True, "left": True,
              "error": None, "failure": None, "exit_code": 0}
    answer.update(changes)
    return answer


PYUSB_STEP = {"step": "PyusbDownload", "port": "1-1.3", "address": 0x08020000,
              "image": "printer_data/firmware/x/klipper.bin", "protect_below": 0x08020000, "venv": DFU_CLIENT_VENV}


# ---------------------------------------------------------------- Klipper is always restarted

def test_klipper_is_restarted_even_when_stopping_it_reported_a_failure(monkeypatch) -> None:
    ran: list[list[str]] = []

    def run(self: Agent, argv: list[str]) -> None:
        ran.append(argv)
        if argv[1] == "stop":  # e.g. "Job for klipper.service canceled" after it did stop
            raise StepFailed("systemctl stop klipper failed (exit 1): Job canceled")

    monkeypatch.setattr(Agent, "run", run)
    result = agent_for([{"step": "StopKlipper"}, {"step": "WaitDfu", "port": "1-1.3", "timeout": 0}]).execute()
    assert ran == [["systemctl", "stop", "klipper"], ["systemctl", "start", "klipper"]]
    assert result["action"] == "failed" and result["klipper_restarted"] is True
    assert "Job canceled" in result["reason"]


def test_nothing_is_written_and_klipper_is_left_alone_when_the_printer_became_busy(monkeypatch) -> None:
    monkeypatch.setattr(flash_agent, "moonraker", lambda *a, **k: {"result": {"status": {
        "print_stats": {"state": "printing"}, "idle_timeout": {"state": "Printing"}}}})
    monkeypatch.setattr(Agent, "run", lambda self, argv: pytest.fail(f"ran {argv}"))
    result = agent_for([{"step": "EnsureIdle"}, {"step": "StopKlipper"}]).execute()
    assert result["action"] == "skipped" and "started a job" in result["reason"]
    assert (result["klipper_restarted"], result["backend"], result["read_back"]) == (False, None, None)
    assert result["after_version"] == result["before_version"]  # untouched: it runs what it ran


# ---------------------------------------------------------------- time limits and error text

def test_a_command_that_hangs_fails_its_step_with_the_time_limit(monkeypatch) -> None:
    def hang(argv: list[str], **kwargs: Any) -> None:
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    monkeypatch.setattr(flash_agent.subprocess, "run", hang)
    with pytest.raises(StepFailed, match=f"systemctl stop klipper did not finish within {flash_agent.COMMAND_TIMEOUT_S} s"):
        agent_for([]).StopKlipper()


def test_a_missing_command_fails_its_step_instead_of_crashing_the_agent() -> None:
    with pytest.raises(StepFailed, match="could not run"):
        agent_for([]).run(["/nonexistent/install", "a", "b"])


def test_a_board_that_ignores_the_bootloader_request_is_named_so(monkeypatch) -> None:
    monkeypatch.setattr(flash_agent, "usb_id", lambda port: flash_agent.KLIPPER_ID)
    with pytest.raises(StepFailed, match="still runs Klipper: the bootloader request was ignored"):
        agent_for([]).WaitDfu("1-1.3", 0)


def test_a_board_that_stays_in_dfu_after_the_download_is_named_so(monkeypatch) -> None:
    monkeypatch.setattr(flash_agent, "usb_id", lambda port: flash_agent.DFU_ID)
    with pytest.raises(StepFailed, match="did not come back as Klipper on its USB port 1-1.3 .*still in DFU"):
        agent_for([]).WaitKlipper("1-1.3", 0)


def test_bootloader_request_never_takes_the_boards_tty_as_controlling_terminal(monkeypatch) -> None:
    master, slave = os.openpty()
    opened: list[int] = []
    real_open = os.open

    def recording_open(path: str, flags: int, *args: Any) -> int:
        opened.append(flags)
        return real_open(path, flags, *args)

    ioctls: list[int] = []
    monkeypatch.setattr(flash_agent.os, "open", recording_open)
    monkeypatch.setattr(flash_agent.fcntl, "ioctl", lambda fd, request, arg: ioctls.append(request))
    try:
        agent_for([]).RequestBootloader(os.ttyname(slave), "1-1.3")
        assert termios.tcgetattr(slave)[4] == termios.B1200
    finally:
        os.close(master)
        os.close(slave)
    assert opened and opened[0] & os.O_NOCTTY and opened[0] & os.O_NONBLOCK
    assert ioctls == [termios.TIOCMBIS, termios.TIOCMBIC]  # DTR up, then down after 1200 baud


# ---------------------------------------------------------------- the pyusb backend

def test_pyusb_client_runs_from_the_venv_with_the_bootloader_protected(tmp_path: Path, monkeypatch) -> None:
    fake_client(tmp_path, client_answer(), 0)
    monkeypatch.setattr(flash_agent, "moonraker", lambda *a, **k: {"result": {"status": {"mcu": {"mcu_version": VERSION}}}})
    result = agent_for([PYUSB_STEP], home=str(tmp_path), verify=True, finally_steps=[]).execute()
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:4] == ["-I", "-m", "pyinfra_ratos.dfu", "flash"]
    assert argv[argv.index("--protect-below") + 1] == "0x08020000"
    assert argv[argv.index("--image") + 1] == f"{tmp_path}/printer_data/firmware/x/klipper.bin"
    assert result["action"] == "flashed" and result["verified"] is True
    assert (result["backend"], result["read_back"], result["after_version"]) == ("pyusb", True, VERSION)


def test_pyusb_read_back_mismatch_fails_with_the_clients_reason(tmp_path: Path, monkeypatch) -> None:
    error = ("btt-octopus-pro-h723-11 on USB port 1-1.3: read-back differs from the image at 0x08020800 "
             "(1 byte(s) differ); the board stays in DFU for a re-flash")
    fake_client(tmp_path, client_answer(ok=False, read_back_ok=False, left=None, error=error, failure="verify",
                                        exit_code=7), 7)
    monkeypatch.setattr(Agent, "run", lambda self, argv: None)
    steps = [{"step": "StopKlipper"}, PYUSB_STEP, {"step": "WaitKlipper", "port": "1-1.3", "timeout": 30}]
    result = agent_for(steps, home=str(tmp_path), verify=True).execute()
    assert result["action"] == "failed" and result["verified"] is False
    assert (result["backend"], result["read_back"], result["dfu_exit"]) == ("pyusb", False, 7)
    assert "pyusb DFU client failed (verify, exit 7): " + error in result["reason"]
    assert result["klipper_restarted"] is True


def test_pyusb_client_missing_from_the_pi_says_how_it_gets_there(tmp_path: Path) -> None:
    result = agent_for([PYUSB_STEP], home=str(tmp_path), finally_steps=[]).execute()
    assert result["action"] == "failed"
    assert "pyusb DFU client is not installed" in result["reason"] and "firmware.dfu_client" in result["reason"]
    assert result["read_back"] is None


def test_client_answer_is_the_last_json_line_and_empty_without_one() -> None:
    assert flash_agent.client_answer('noise\n{"ok": true}\n') == {"ok": True}
    assert flash_agent.client_answer("Traceback ...\n") == {}


def test_a_dfu_util_flash_records_no_read_back(monkeypatch) -> None:
    done = subprocess.CompletedProcess([], 0, "Download done.\nFile downloaded successfully\n", "")
    monkeypatch.setattr(flash_agent.subprocess, "run", lambda *a, **k: done)
    agent = agent_for([])
    agent.DfuDownload("1-1.3", 0x08020000, "klipper.bin")
    assert (agent.backend, agent.read_back, agent.dfu_exit) == ("dfu-util", None, 0)


def test_a_stop_request_mid_flash_still_restarts_klipper(monkeypatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(Agent, "run", lambda self, argv: ran.append(argv))

    def dies(self: Agent, port: str, timeout: float) -> None:
        flash_agent._interrupt(15, None)  # what SIGTERM does while a step runs

    monkeypatch.setattr(Agent, "WaitDfu", dies)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = agent_for([{"step": "StopKlipper"}, {"step": "WaitDfu", "port": "1-1.3", "timeout": 0}]).execute()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert ran == [["systemctl", "stop", "klipper"], ["systemctl", "start", "klipper"]]
    assert result["action"] == "failed" and "interrupted by SIGTERM" in result["reason"]


def test_a_lost_ssh_connection_does_not_stop_the_agent() -> None:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        flash_agent.guard_signals()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is flash_agent._interrupt
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
