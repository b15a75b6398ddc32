"""Live progress of a flash: the agent's parsing and throttling, the stream tap, the lines shown."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.firmware import agent as flash_agent
from pyinfra_ratos.firmware.agent import PROGRESS_PREFIX, Agent, Throttle, parse_client_progress, parse_dfu_progress
from pyinfra_ratos.fleet.progress import Progress, agent_line
from pyinfra_ratos.run.stream import progress_record, tap


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def reported(throttle: Throttle, clock: Clock, steps: list[tuple[float, int]], total: int = 1000) -> list[int]:
    out = []
    for at, done in steps:
        clock.now = at
        percent = throttle.due(done, total)
        if percent is not None:
            out.append(percent)
    return out


def test_a_slow_write_reports_every_ten_percent_and_the_end() -> None:
    clock = Clock()
    steps = [(i * 0.5, i * 10) for i in range(1, 101)]  # 1% every half second
    assert reported(Throttle(clock=clock), clock, steps) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def test_a_fast_write_reports_at_most_once_a_second() -> None:
    clock = Clock()
    steps = [(i * 0.05, i * 10) for i in range(1, 101)]  # 1% every 50 ms: the whole write in 5 s
    shown = reported(Throttle(clock=clock), clock, steps)
    assert shown[-1] == 100 and len(shown) <= 6  # one a second, and the last


def test_the_end_is_reported_once_and_nothing_without_a_size() -> None:
    clock = Clock()
    throttle = Throttle(clock=clock)
    assert reported(throttle, clock, [(0.1, 1000), (0.2, 1000)]) == [100]
    assert Throttle(clock=clock).due(10, 0) is None


def test_dfu_util_progress_is_read_from_its_carriage_returns() -> None:
    text = ("Erase   \t[=========================] 100%        27304 bytes\nErase    done.\n"
            "Download\t[                         ]   0%            0 bytes"
            "\rDownload\t[===========              ]  45%        12288 bytes"
            "\rDownload\t[=========================] 100%        27304 bytes\nDownload done.\n"
            "File downloaded successfully\n")
    assert parse_dfu_progress(text) == [("Erase", 100, 27304), ("Download", 0, 0), ("Download", 45, 12288),
                                        ("Download", 100, 27304)]
    assert parse_dfu_progress("Opening DFU capable USB device...\nDownload done.\n[x] 5% bytes") == []


def test_the_pyusb_clients_progress_lines_are_read_and_others_ignored() -> None:
    text = "erase 0x08020000 (128 KiB)\nprogress download 2048 27304\nprogress verify 0 27304\nprogress x y z\n"
    assert parse_client_progress(text) == [("download", 2048, 27304), ("verify", 0, 27304)]


def test_the_agent_prints_a_bounded_number_of_progress_lines_for_a_write(capsys) -> None:
    agent = Agent({}, "/home/pi")
    agent.board_now = {"board": "btt-octopus-pro-h723-11", "mcu": "mcu"}
    agent.transfer("write", 0, 100_000, start=True)
    for done in range(0, 100_001, 1000):
        agent.transfer("write", done, 100_000)
    records = [json.loads(line[len(PROGRESS_PREFIX):]) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["text"] == "write 100000 bytes"
    percents = [r["percent"] for r in records[1:]]
    assert percents[-1] == 100 and len(percents) <= 11
    assert records[-1] == {"phase": "flash", "text": "write 100% (100000 of 100000 bytes)", "done": 100_000,
                           "total": 100_000, "percent": 100, "board": "btt-octopus-pro-h723-11", "mcu": "mcu"}


def test_dfu_util_progress_reaches_the_agent_as_it_runs(monkeypatch, tmp_path: Path, capsys) -> None:
    """A stand-in dfu-util redraws its bar with carriage returns, split across writes."""
    fake = tmp_path / "bin" / "dfu-util"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n"
                    "printf 'Download\\t[=====      ]  20%%         2000 bytes\\rDownload\\t[======'\n"
                    "printf '=====]  100%%        10000 bytes\\nDownload done.\\nFile downloaded successfully\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    backend = flash_agent.DfuUtil(Agent({}, str(tmp_path)), {"port": "1-1.3", "address": 0x08020000})
    out = backend.dfu("-s", "0x08020000", "-D", "klipper.bin", total=10_000)
    assert "File downloaded successfully" in out
    texts = [json.loads(line[len(PROGRESS_PREFIX):])["text"] for line in capsys.readouterr().out.splitlines()]
    assert texts == ["write 100% (10000 of 10000 bytes)"]  # 20% within a second of the start: throttled


def test_a_command_that_outlives_its_timeout_is_killed() -> None:
    with pytest.raises(flash_agent.subprocess.TimeoutExpired):
        flash_agent.run_streaming([sys.executable, "-c", "import time; time.sleep(30)"], 0.5, lambda text: None)


def test_the_tap_hands_progress_lines_over_and_keeps_the_rest() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    lines = ["hello\n", PROGRESS_PREFIX + '{"phase": "verify", "text": "klippy"}\n',
             PROGRESS_PREFIX + "not json\n", b"RATOS-RESULT {}\n"]
    kept = list(tap(lines, "vcore-01", lambda host, record: seen.append((host, record))))
    assert kept == ["hello\n", PROGRESS_PREFIX + "not json\n", b"RATOS-RESULT {}\n"]
    assert seen == [("vcore-01", {"phase": "verify", "text": "klippy"})]
    assert progress_record(PROGRESS_PREFIX + '{"text": "no phase"}') is None


def test_a_failing_listener_never_fails_the_command() -> None:
    def broken(host: str, record: dict[str, Any]) -> None:
        raise RuntimeError("display gone")

    assert list(tap([PROGRESS_PREFIX + '{"phase": "stop"}', "x"], "h", broken)) == ["x"]


FLASH_45 = {"phase": "flash", "text": "write 45% (12288 of 27304 bytes)", "percent": 45, "done": 12288,
            "total": 27304, "mcu": "mcu", "board": "btt-octopus-pro-h723-11"}


def test_a_progress_line_names_the_printer_and_the_board_and_is_sanitised() -> None:
    assert agent_line("vcore-01", FLASH_45) == \
        "[vcore-01] flash mcu (btt-octopus-pro-h723-11): write 45% (12288 of 27304 bytes)"
    assert agent_line("vcore-01", {"phase": "checkout", "text": "~/klipper to f35739b\x1b[2J"}) == \
        "[vcore-01] checkout: ~/klipper to f35739b[2J"


def test_without_a_terminal_every_progress_record_is_a_line() -> None:
    out = io.StringIO()
    progress = Progress(out, total=3, tty=False)
    progress.agent_progress("vcore-01", FLASH_45)
    progress.agent_progress("vcore-01", {"phase": "verify", "text": "klippy"})
    assert out.getvalue().splitlines() == [agent_line("vcore-01", FLASH_45), "[vcore-01] verify: klippy"]


def test_on_a_terminal_a_transfers_percent_goes_to_the_bar(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    out = io.StringIO()
    progress = Progress(out, total=3, tty=True)
    progress.agent_progress("vcore-01", FLASH_45)
    assert out.getvalue() == ""
    bar = err.getvalue().split("\r")[-1]
    assert "0/3 printers" in bar and "write 45%" in bar and len(bar) < 120
    progress.agent_progress("vcore-01", {**FLASH_45, "percent": 100, "text": "write 100% (27304 of 27304 bytes)"})
    assert out.getvalue().splitlines() == ["[vcore-01] flash mcu (btt-octopus-pro-h723-11): write 100% "
                                           "(27304 of 27304 bytes)"]


def test_pyinfra_hands_a_running_commands_progress_over_before_it_ends() -> None:
    """Through pyinfra's own connector (here @local): the listener hears the line while the
    command still runs, and the operation's output keeps everything else."""
    from pyinfra_ratos.fleet import api as fleet_api  # noqa: F401 - gevent's patching first
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops
    from pyinfra.operations import server

    from pyinfra_ratos.run.stream import listening

    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    marker = Path(os.environ.get("TMPDIR", "/tmp")) / f"ratos-stream-{os.getpid()}"
    seen = marker.with_suffix(".heard")
    marker.unlink(missing_ok=True)
    seen.unlink(missing_ok=True)
    # the command goes on only once the line was heard (or after 30 s, and then the test fails):
    # no race with a loaded machine's scheduling
    script = (f"echo before; echo '{PROGRESS_PREFIX}{{\"phase\": \"flash\", \"text\": \"write 45%\"}}'; "
              f"for i in $(seq 300); do [ -e {seen} ] && break; sleep 0.1; done; touch {marker}; echo after")
    op = add_op(state, server.shell, script)
    heard: list[tuple[str, dict[str, Any], bool]] = []

    def hear(host: str, record: dict[str, Any]) -> None:
        heard.append((host, record, marker.exists()))
        seen.touch()

    with listening(hear):
        run_ops(state)
    marker.unlink(missing_ok=True)
    seen.unlink(missing_ok=True)
    assert heard == [("@local", {"phase": "flash", "text": "write 45%"}, False)]  # before the command ended
    assert op[state.inventory.get_host("@local")].stdout_lines == ["before", "after"]
