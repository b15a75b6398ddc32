"""The printer agent off the farm: the gate, its exit paths, the rollback and the backends.

The agent runs on a Pi as root; here what it would run is replaced by fakes (a recording ``run``,
a unit whose main PID the test sets, boards that answer or not), so each path is checked on its
own. The same paths run for real on the virtual farm (tests/farm/test_safety.py).
"""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.firmware import agent as flash_agent
from pyinfra_ratos.firmware.agent import EXIT_DONE, EXIT_FAILED, EXIT_PENDING, Agent, StepFailed, judge_activity
from pyinfra_ratos.firmware.plan import DFU_CLIENT_VENV

OLD, NEW = "v0.12.0-0-g097b935", "v0.13.0-3-gb846a96"


def query(print_state: str = "standby", idle: str = "Idle", klippy: str = "ready", status: int = 200,
          sdcard: bool = False) -> dict[str, Any]:
    return {"query": {"status": status, "body": {"result": {"status": {
        "print_stats": {"state": print_state}, "idle_timeout": {"state": idle},
        "virtual_sdcard": {"is_active": sdcard}, "webhooks": {"state": klippy}}}}}, "locks": []}


# ---------------------------------------------------------------- the gate: idle only when positively so

@pytest.mark.parametrize("raw, idle, why", [
    (query(), True, ""),
    (query(klippy="error"), True, ""),
    ({"query": {"status": 200, "body": {"result": {"status": {"webhooks": {"state": "error"}}}}}}, True, ""),
    (query("printing", "Printing"), False, "printer is busy (printing)"),
    (query("paused", "Ready"), False, "printer is busy (paused)"),
    (query("standby", "Printing"), False, "printer is busy (standby)"),
    (query(sdcard=True), False, "busy"),
    (query("complete", "Idle", klippy="shutdown"), False, "klippy is shut down"),
    (query("paused", "Ready", klippy="shutdown"), False, "printer is busy (paused)"),  # M112 mid-print
    ({"query": {"status": 200, "body": {"result": {"status": {"webhooks": {"state": "startup"}}}}}}, False,
     "state unknown"),
    ({"query": {"status": 503, "body": None}, "klipper_service": "active"}, False, "Moonraker answered 503"),
    ({"query": {"status": 0, "body": None}, "klipper_service": "active"}, False, "Moonraker did not answer"),
    ({"query": {"status": 0, "body": None}, "klipper_service": "activating"}, False, "activating"),
    ({"query": {"status": 0, "body": None}, "klipper_service": "deactivating"}, False, "deactivating"),
    ({"query": {"status": 0, "body": None}, "klipper_service": ""}, False, "unknown"),
    ({"query": {"status": 200, "body": "garbage"}, "klipper_service": "active"}, False, "unknown"),
    ({"query": {"status": 503, "body": None}, "klipper_service": "inactive"}, True, ""),
    ({"query": {"status": 0, "body": None}, "klipper_service": "failed"}, True, ""),
    ({**query(), "locks": [{"lock": "printer.lock", "pid": 42, "what": "flashing"}]}, False, "pid 42"),
    ({}, False, "unknown"),
])
def test_only_a_positive_answer_is_idle(raw: dict, idle: bool, why: str) -> None:
    got_idle, got_why = judge_activity(raw)
    assert got_idle is idle and why in got_why


# ---------------------------------------------------------------- a fake Pi for the transaction

class FakePi:
    """What the agent sees of a Pi: a klipper unit (its main PID), boards, commands it ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, activity: dict | None = None) -> None:
        self.ran: list[list[str]] = []
        self.pid = 100
        self.versions: dict[str, str] = {}
        self.fail_enter: set[str] = set()
        self.head = "a" * 40
        monkeypatch.setattr(flash_agent, "LOCK_DIR", str(tmp_path / "locks"))
        monkeypatch.setattr(flash_agent, "ROLLBACK_DIR", str(tmp_path / "rollback"))
        monkeypatch.setattr(flash_agent, "read_activity", lambda base, own_locks=(): activity or query())
        monkeypatch.setattr(flash_agent, "unit_state", lambda unit: {
            "ActiveState": "active", "MainPID": str(self.pid), "ExecMainStartTimestampMonotonic": str(self.pid)})
        monkeypatch.setattr(Agent, "run", lambda agent, argv, timeout=0: self.run(agent, argv))
        monkeypatch.setattr(Agent, "flash_board", lambda agent, board, record: self.flash_board(agent, board, record))
        monkeypatch.setattr(Agent, "restore_board", lambda agent, board, record: self.restore_board(agent, board, record))
        monkeypatch.setattr(Agent, "klippy", lambda agent: {"state": "ready", "versions": dict(self.versions)})
        monkeypatch.setattr(flash_agent, "VERIFY_POLL_S", 0.01)

    def run(self, agent: Agent, argv: list[str], timeout: float = 0) -> str:
        self.ran.append(argv)
        if argv[:2] == ["systemctl", "start"] or argv[:2] == ["systemctl", "restart"]:
            self.pid += 1
        if "checkout" in argv:
            self.head = argv[-1]
        if argv[-2:] == ["rev-parse", "HEAD"]:
            return self.head + "\n"
        return ""

    def flash_board(self, agent: Agent, board: dict, record: dict) -> None:
        if board["board"] in self.fail_enter:
            raise StepFailed("the board did not enter DFU (it still runs Klipper: the bootloader request was ignored)")
        record["written"], record["capture"], record["read_back"] = True, f"/rollback/{board['port']}.bin", True
        self.versions[board["mcu_name"]] = board["expected_version"]

    def restore_board(self, agent: Agent, board: dict, record: dict) -> str | None:
        self.ran.append(["restore", board["board"]])
        self.versions[board["mcu_name"]] = board["before_version"]
        return None

    def systemctl(self) -> list[list[str]]:
        return [argv for argv in self.ran if argv[0] == "systemctl"]


def board(name: str, port: str, mcu: str = "mcu") -> dict[str, Any]:
    return {"board": name, "mcu_name": mcu, "port": port, "method": "dfu-util", "expected_version": NEW,
            "before_version": OLD, "steps": []}


def agent(boards: list[dict], klipper: dict | None = None, **plan: Any) -> Agent:
    return Agent({"boards": boards, "klipper": klipper, "verify_timeout": 0.05, **plan}, "/home/pi")


MOVE = {"path": "/home/pi/klipper", "user": "pi", "from": "a" * 40, "to": "b" * 40}


def test_a_printer_that_is_not_idle_on_the_pi_is_not_touched(monkeypatch, tmp_path: Path) -> None:
    pi = FakePi(monkeypatch, tmp_path, {"query": {"status": 503, "body": None}, "klipper_service": "active"})
    summary, status = agent([board("octopus", "1-1.3")], MOVE).execute()
    assert status == EXIT_PENDING and summary["outcome"] == "pending"
    assert pi.ran == [] and "Moonraker answered 503" in summary["reason"]


def test_a_pending_restart_is_marked_for_the_next_run(monkeypatch, tmp_path: Path) -> None:
    FakePi(monkeypatch, tmp_path, query("printing", "Printing"))
    summary, status = Agent({"restart": "klipper", "pending_marker": "marker"}, str(tmp_path)).execute()
    assert status == EXIT_PENDING and (tmp_path / "marker").exists()


def test_an_update_flashes_then_checks_out_then_starts_and_verifies(monkeypatch, tmp_path: Path) -> None:
    pi = FakePi(monkeypatch, tmp_path)
    summary, status = agent([board("octopus", "1-1.3")], MOVE).execute()
    assert (status, summary["outcome"], summary["klipper_after"]) == (EXIT_DONE, "done", "b" * 40)
    assert pi.systemctl() == [["systemctl", "stop", "klipper"], ["systemctl", "start", "klipper"]]
    # as the checkout's owner, never as root (git: dubious ownership)
    assert any(argv[:3] == ["runuser", "-u", "pi"] and argv[-7:] == ["git", "-C", "/home/pi/klipper", "checkout",
                                                                    "-q", "--detach", "b" * 40] for argv in pi.ran)


def test_a_restart_counts_only_when_the_main_pid_changed(monkeypatch, tmp_path: Path) -> None:
    pi = FakePi(monkeypatch, tmp_path)
    monkeypatch.setattr(pi, "pid", 7)
    monkeypatch.setattr(flash_agent, "unit_state", lambda unit: {"ActiveState": "active", "MainPID": "7",
                                                                 "ExecMainStartTimestampMonotonic": "7"})
    summary, status = Agent({"restart": "klipper"}, "/home/pi").execute()
    assert status == EXIT_FAILED and "did not start anew" in summary["reason"]


def test_a_failed_second_board_puts_the_first_back_and_klipper_stays(monkeypatch, tmp_path: Path) -> None:
    pi = FakePi(monkeypatch, tmp_path)
    pi.fail_enter.add("ebb42")
    summary, status = agent([board("octopus", "1-1.3"), board("ebb42", "1-1.4", "toolboard_t0")], MOVE).execute()
    assert status == EXIT_FAILED and summary["outcome"] == "rolled-back"
    assert ["restore", "octopus"] in pi.ran and ["restore", "ebb42"] not in pi.ran
    assert not any("checkout" in argv for argv in pi.ran)  # Klipper never moved
    assert summary["klipper_after"] == "a" * 40 and pi.systemctl()[-1] == ["systemctl", "start", "klipper"]
    assert "bootloader request was ignored" in summary["reason"]


def test_a_verify_failure_after_the_checkout_moves_klipper_back(monkeypatch, tmp_path: Path) -> None:
    pi = FakePi(monkeypatch, tmp_path)
    monkeypatch.setattr(Agent, "klippy", lambda agent: {"state": "error", "versions": {"mcu": OLD}})
    summary, status = agent([board("octopus", "1-1.3")], MOVE).execute()
    assert status == EXIT_FAILED and summary["outcome"] in ("rolled-back", "attention")
    checkouts = [argv[-1] for argv in pi.ran if "checkout" in argv]
    assert checkouts == ["b" * 40, "a" * 40] and ["restore", "octopus"] in pi.ran


def test_a_board_that_cannot_be_restored_says_what_to_do(monkeypatch, tmp_path: Path) -> None:
    pi = FakePi(monkeypatch, tmp_path)
    pi.fail_enter.add("ebb42")
    monkeypatch.setattr(Agent, "restore_board", lambda agent, board, record: "power-cycle the printer's board")
    summary, status = agent([board("octopus", "1-1.3"), board("ebb42", "1-1.4", "toolboard_t0")]).execute()
    assert status == EXIT_FAILED and summary["outcome"] == "attention" and "power-cycle" in summary["todo"]


def test_klipper_is_started_again_when_a_stop_request_interrupts_a_flash(monkeypatch, tmp_path: Path) -> None:
    pi = FakePi(monkeypatch, tmp_path)

    def dies(agent: Agent, board: dict, record: dict) -> None:
        flash_agent._interrupt(15, None)  # what SIGTERM does while a step runs

    monkeypatch.setattr(Agent, "flash_board", dies)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        summary, status = agent([board("octopus", "1-1.3")], MOVE).execute()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert status == EXIT_FAILED and "interrupted by SIGTERM" in summary["reason"]
    assert pi.systemctl()[0] == ["systemctl", "stop", "klipper"] and pi.systemctl()[-1][1] == "start"


def test_a_second_run_never_touches_a_printer_another_run_holds(monkeypatch, tmp_path: Path) -> None:
    pi = FakePi(monkeypatch, tmp_path)
    first = agent([board("octopus", "1-1.3")])
    assert first.lock(flash_agent.PRINTER_LOCK, "flashing")
    try:
        summary, status = agent([board("octopus", "1-1.3")]).execute()
    finally:
        first.unlock_all()
    assert status == EXIT_PENDING and "another pyinfra-ratos run" in summary["reason"] and pi.ran == []


def test_the_probe_and_the_agent_see_the_same_held_lock(monkeypatch, tmp_path: Path) -> None:
    from pyinfra_ratos.facts import remote

    monkeypatch.setattr(flash_agent, "LOCK_DIR", str(tmp_path))
    holder = agent([])
    assert holder.lock("port-1-1.3.lock", "flashing octopus")
    try:
        seen = remote.held_locks(str(tmp_path))
        assert seen == flash_agent.held_locks(str(tmp_path)) and seen[0]["what"] == "flashing octopus"
    finally:
        holder.unlock_all()
    assert remote.held_locks(str(tmp_path)) == []


def test_a_changed_image_is_refused_before_anything_stops(monkeypatch, tmp_path: Path) -> None:
    pi = FakePi(monkeypatch, tmp_path)
    image = tmp_path / "klipper.bin"
    image.write_bytes(b"new")
    plan = board("octopus", "1-1.3")
    plan.update(sha256="0" * 64, steps=[{"step": "DfuDownload", "port": "1-1.3", "address": 0, "image": str(image)}])
    summary, status = agent([plan]).execute()
    assert status == EXIT_FAILED and "sha256" in summary["reason"] and pi.systemctl() == []


# ---------------------------------------------------------------- the backends read every write back

def test_dfu_util_writes_without_leaving_reads_back_then_leaves(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(flash_agent, "ROLLBACK_DIR", str(tmp_path / "rb"))
    image = tmp_path / "klipper.bin"
    image.write_bytes(b"\x01" * 64)
    calls: list[list[str]] = []

    def run(argv: list[str], timeout: float, on_output: Any, **kwargs: Any) -> tuple[int, str, str]:
        argv = argv[2:] if argv[0].endswith("stdbuf") else argv
        calls.append(argv)
        if "-U" in argv:
            Path(argv[argv.index("-U") + 1]).write_bytes(b"\x01" * 63 + b"\x00")  # one bad byte
        return 0, "File downloaded successfully\n", ""

    monkeypatch.setattr(flash_agent, "run_streaming", run)
    backend = flash_agent.DfuUtil(agent([]), {"port": "1-1.3", "address": 0x08020000})
    assert backend.write_verified(str(image)) is False
    assert [c[c.index("-s") + 1] for c in calls] == ["0x08020000", "0x08020000:64"]  # no leave after a bad read
    calls.clear()
    monkeypatch.setattr(flash_agent, "run_streaming", lambda argv, timeout, on_output, **k: (
        calls.append(argv[2:] if argv[0].endswith("stdbuf") else argv),
        Path(argv[argv.index("-U") + 1]).write_bytes(b"\x01" * 64) if "-U" in argv else None,
        (0, "File downloaded successfully\n", ""))[-1])
    assert backend.write_verified(str(image)) is True
    assert calls[-1][-2:] == ["-s", "0x08020000:leave"]


def fake_client(home: Path, answer: dict[str, Any], status: int) -> Path:
    """A stand-in ``<venv>/bin/python`` printing the client's JSON line; it records its argv."""
    python = home / DFU_CLIENT_VENV / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\necho \"$@\" > {home}/argv\necho '{json.dumps(answer)}'\nexit {status}\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return python


PYUSB_STEP = {"step": "PyusbDownload", "port": "1-1.3", "address": 0x08020000,
              "image": "printer_data/firmware/x/klipper.bin", "protect_below": 0x08020000, "venv": DFU_CLIENT_VENV}


def test_pyusb_client_runs_from_the_venv_with_the_bootloader_protected(tmp_path: Path) -> None:
    fake_client(tmp_path, {"ok": True, "read_back_ok": True}, 0)
    backend = flash_agent.Pyusb(Agent({}, str(tmp_path)), PYUSB_STEP)
    assert backend.write_verified(str(tmp_path / PYUSB_STEP["image"])) is True
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:4] == ["-I", "-m", "pyinfra_ratos.firmware.dfu", "flash"]
    assert argv[argv.index("--protect-below") + 1] == "0x08020000"


def test_pyusb_read_back_mismatch_asks_for_another_write(tmp_path: Path) -> None:
    fake_client(tmp_path, {"ok": False, "read_back_ok": False, "failure": "verify", "error": "differs"}, 7)
    backend = flash_agent.Pyusb(Agent({}, str(tmp_path)), PYUSB_STEP)
    assert backend.write_verified("klipper.bin") is False


def test_pyusb_client_missing_from_the_pi_says_how_it_gets_there(tmp_path: Path) -> None:
    backend = flash_agent.Pyusb(Agent({}, str(tmp_path)), PYUSB_STEP)
    with pytest.raises(StepFailed, match="pyusb DFU client is not installed.*firmware.dfu_client"):
        backend.write_verified("klipper.bin")


def test_a_second_write_repairs_a_bad_read_back(tmp_path: Path) -> None:
    answers = iter([False, True])

    class Flaky:
        name = "pyusb"

        def write_verified(self, image: str) -> bool:
            return next(answers)

    record: dict[str, Any] = {"notes": []}
    Agent({}, str(tmp_path)).write_with_retry(Flaky(), "klipper.bin", record)  # type: ignore[arg-type]
    assert record["read_back"] is True and "attempt 2 read back right" in record["notes"][0]


def test_an_erased_tail_is_not_kept_in_the_rollback_image() -> None:
    assert flash_agent.trimmed(b"\x01\x02\x03" + b"\xff" * 100) == b"\x01\x02\x03" + b"\xff" * 5
    assert flash_agent.trimmed(b"\xff" * 64) == b""


def test_client_answer_is_the_last_json_line_and_empty_without_one() -> None:
    assert flash_agent.client_answer('noise\n{"ok": true}\n') == {"ok": True}
    assert flash_agent.client_answer("Traceback ...\n") == {}


def test_a_lost_ssh_connection_does_not_stop_the_agent() -> None:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        flash_agent.guard_signals()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is flash_agent._interrupt
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
