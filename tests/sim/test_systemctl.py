"""The systemctl stand-in, run as a command against a temporary state file."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from pyinfra_ratos.sim import pistate, procs
from pyinfra_ratos.sim.systemctl import git_describe_argv

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD = "gcc: (15:12.2.rel1-1) 12.2.1 20221205 binutils: (2.40-2+18+b1) 2.40"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def pi(tmp_path: Path) -> Iterator[Path]:
    """A Pi's state dir that other users may read (the non-root tests run as nobody)."""
    tmp_path.chmod(0o755)
    klipper = tmp_path / "klipper"
    klipper.mkdir()
    git(klipper, "init", "-q")
    git(klipper, "commit", "-q", "--allow-empty", "-m", "one")
    git(klipper, "tag", "v0.13.0")
    git(klipper, "commit", "-q", "--allow-empty", "-m", "two")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state: dict[str, Any] = {
        "hostname": "vcore-01", "print_state": "standby", "print_filename": "",
        "services": {"klipper": "inactive", "moonraker": "inactive", "klipper-mcu": "active"},
        "allowed_services": ["klipper", "moonraker", "klipper-mcu"],
        "klipper_path": str(klipper), "klipper_user": "root", "home": str(tmp_path / "home"),
        "host_version": "", "moonraker_pid_file": str(tmp_path / "run" / "moonraker.pid"),
        "moonraker_port": port,
        "mcus": [{"name": "mcu", "present": True, "firmware": {
            "version": "v0.13.0-1-gdeadbee", "build_versions": BUILD,
            "config": {"MCU": "stm32h723xx", "CLOCK_FREQ": 400000000}}}],
    }
    pistate.save(state, str(tmp_path / "state.json"))
    yield tmp_path
    # the units' main processes are real: stop what a test started
    systemctl(tmp_path, "stop", "moonraker", "klipper", "klipper-mcu")


def systemctl(pi: Path, *args: str, env: dict[str, str] | None = None,
              prefix: tuple[str, ...] = (), python: str = sys.executable,
              ) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, RATOS_SIM_STATE=str(pi / "state.json"), PYTHONPATH=str(REPO_ROOT),
                   **(env or {}))
    return subprocess.run([*prefix, python, "-m", "pyinfra_ratos.sim.systemctl", *args],
                          capture_output=True, text=True, env=environ, cwd="/", check=False)


def load(pi: Path) -> dict[str, Any]:
    return pistate.load(str(pi / "state.json"))


def test_unknown_unit_cannot_start(pi: Path) -> None:
    done = systemctl(pi, "start", "foo")
    assert done.returncode == 5
    assert done.stderr == "Failed to start foo.service: Unit foo.service not found.\n"


def test_is_active_prints_state_and_exits_3_when_inactive(pi: Path) -> None:
    done = systemctl(pi, "is-active", "klipper.service")
    assert (done.returncode, done.stdout) == (3, "inactive\n")
    done = systemctl(pi, "is-active", "klipper-mcu")
    assert (done.returncode, done.stdout) == (0, "active\n")


def test_non_root_start_needs_interactive_authentication(pi: Path) -> None:
    done = systemctl(pi, "start", "klipper", env={"RATOS_SIM_UID": "1000"})
    assert done.returncode == 1
    assert done.stderr == ("Failed to start klipper.service: Interactive authentication required.\n"
                           "See system logs and 'systemctl status klipper.service' for details.\n")
    assert load(pi)["services"]["klipper"] == "inactive"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser")
                    or not os.path.exists("/usr/bin/python3"), reason="needs root")
def test_nobody_really_is_refused(pi: Path) -> None:
    # Debian's python3, as inside a Pi (the venv's interpreter is not nobody's to run)
    done = systemctl(pi, "stop", "klipper-mcu", prefix=("runuser", "-u", "nobody", "--"),
                     python="/usr/bin/python3")
    assert done.returncode == 1
    assert done.stderr.startswith(
        "Failed to stop klipper-mcu.service: Interactive authentication required.\n")
    assert load(pi)["services"]["klipper-mcu"] == "active"


def test_klipper_start_computes_the_host_version_and_logs_mcus(pi: Path) -> None:
    done = systemctl(pi, "start", "klipper")
    assert done.returncode == 0, done.stderr
    state = load(pi)
    assert state["services"]["klipper"] == "active"
    assert state["host_version"] == git(pi / "klipper", "describe", "--always", "--tags", "--long")
    assert state["host_version"].startswith("v0.13.0-1-g")
    log = (pi / "home" / "printer_data" / "logs" / "klippy.log").read_text()
    assert f"Loaded MCU 'mcu' 123 commands (v0.13.0-1-gdeadbee / {BUILD})" in log
    assert systemctl(pi, "is-active", "klipper").stdout == "active\n"


def test_dirty_checkout_gives_a_dirty_version(pi: Path) -> None:
    (pi / "klipper" / "tracked").write_text("x")
    git(pi / "klipper", "add", "tracked")
    systemctl(pi, "restart", "klipper")
    assert load(pi)["host_version"].endswith("-dirty")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")
def test_checkout_owned_by_another_user_reads_question_mark(pi: Path) -> None:
    subprocess.run(["chown", "-R", "nobody", str(pi / "klipper")], check=True)
    systemctl(pi, "start", "klipper")
    assert load(pi)["host_version"] == "?"


def test_version_is_read_as_the_klipper_user() -> None:
    assert git_describe_argv("/home/pi/klipper", "pi", 0)[:4] == ["runuser", "-u", "pi", "--"]
    assert git_describe_argv("/home/pi/klipper", "pi", 1000)[0] == "git"


def test_stop_marks_klipper_inactive(pi: Path) -> None:
    systemctl(pi, "start", "klipper")
    assert systemctl(pi, "stop", "klipper").returncode == 0
    assert load(pi)["services"]["klipper"] == "inactive"


def test_pyinfra_status_fact_parses_show_output(pi: Path) -> None:
    systemctl(pi, "start", "klipper")
    done = systemctl(pi, "show", "--all", "--property", "Id", "--property", "SubState", "*")
    parsed = SystemdStatus().process(done.stdout.splitlines())
    assert parsed == {"klipper.service": True, "moonraker.service": False,
                      "klipper-mcu.service": True}


def test_pyinfra_enabled_fact_follows_disable(pi: Path) -> None:
    assert systemctl(pi, "disable", "klipper-mcu").returncode == 0
    done = systemctl(pi, "show", "--all", "--property", "Id", "--property", "UnitFileState",
                     "klipper-mcu.service", "klipper.service")
    assert SystemdEnabled().process(done.stdout.splitlines()) == {
        "klipper-mcu.service": False, "klipper.service": True}
    assert systemctl(pi, "is-enabled", "klipper-mcu").returncode == 1


def test_moonraker_start_serves_http_and_stop_kills_by_pid_file(pi: Path) -> None:
    done = systemctl(pi, "start", "moonraker")
    assert done.returncode == 0, done.stderr
    state = load(pi)
    pid_line = (pi / "run" / "moonraker.pid").read_text().split()
    url = f"http://127.0.0.1:{state['moonraker_port']}/server/info"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert json.load(response)["result"]["klippy_state"] == "disconnected"
    assert systemctl(pi, "is-active", "moonraker").returncode == 0
    assert systemctl(pi, "stop", "moonraker").returncode == 0
    assert systemctl(pi, "is-active", "moonraker").returncode == 3
    assert procs.start_time(int(pid_line[0])) != int(pid_line[1])


def test_stale_pid_file_is_not_trusted(pi: Path) -> None:
    (pi / "run").mkdir()
    # our own pid and start time: alive, but not a moonraker, so never killed
    procs.write_pidfile(str(pi / "run" / "moonraker.pid"), os.getpid())
    assert systemctl(pi, "is-active", "moonraker").returncode == 3
    assert systemctl(pi, "stop", "moonraker").returncode == 0


def test_status_of_unknown_unit_exits_4(pi: Path) -> None:
    done = systemctl(pi, "status", "nope")
    assert (done.returncode, done.stderr) == (4, "Unit nope.service could not be found.\n")


def test_list_units_plain_no_legend_is_what_moonraker_parses(pi: Path) -> None:
    done = systemctl(pi, "list-units", "--all", "--type=service", "--plain", "--no-legend")
    assert [line.split()[0] for line in done.stdout.splitlines()] == [
        "klipper.service", "moonraker.service", "klipper-mcu.service"]


# ---------------------------------------------------------------- show -p, MainPID, transitions

RESTART_PROOF = "MainPID,ExecMainStartTimestamp,ExecMainStartTimestampMonotonic,NRestarts"
STAMP = r"[A-Z][a-z]{2} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z]+"


def show(pi: Path, *args: str) -> dict[str, str]:
    done = systemctl(pi, "show", "klipper", *args)
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in done.stdout.splitlines())


def test_show_property_prints_systemds_order_not_the_asked_one(pi: Path) -> None:
    systemctl(pi, "start", "klipper")
    done = systemctl(pi, "show", "klipper.service",
                     "--property=SubState,ActiveState,LoadState,NRestarts", "-p", "MainPID")
    assert done.returncode == 0
    names = [line.split("=", 1)[0] for line in done.stdout.splitlines()]
    assert names == ["MainPID", "NRestarts", "LoadState", "ActiveState", "SubState"]
    assert done.stdout.endswith("LoadState=loaded\nActiveState=active\nSubState=running\n")
    values = systemctl(pi, "show", "klipper", "-p", "ActiveState,SubState", "--value")
    assert (values.returncode, values.stdout) == (0, "active\nrunning\n")
    assert systemctl(pi, "show", "klipper", "-P", "LoadState").stdout == "loaded\n"


def test_never_started_unit_shows_empty_start_and_pid_0(pi: Path) -> None:
    done = systemctl(pi, "show", "klipper", "-p", RESTART_PROOF)
    assert done.stdout == ("MainPID=0\nNRestarts=0\nExecMainStartTimestamp=\n"
                           "ExecMainStartTimestampMonotonic=0\n")
    missing = systemctl(pi, "show", "nope", "-p", "LoadState,ActiveState,MainPID")
    assert missing.stdout == "MainPID=0\nLoadState=not-found\nActiveState=inactive\n"


def test_main_pid_is_a_real_process_replaced_by_every_restart(pi: Path) -> None:
    systemctl(pi, "start", "klipper")
    first = show(pi, "-p", RESTART_PROOF)
    pid = int(first["MainPID"])
    assert pid == load(pi)["klippy_pid"]
    assert "pyinfra_ratos.sim.mainproc" in Path(f"/proc/{pid}/cmdline").read_text()
    assert re.fullmatch(STAMP, first["ExecMainStartTimestamp"])
    assert systemctl(pi, "restart", "klipper").returncode == 0
    second = show(pi, "-p", RESTART_PROOF)
    assert int(second["MainPID"]) not in (0, pid)
    assert int(second["ExecMainStartTimestampMonotonic"]) > int(first["ExecMainStartTimestampMonotonic"])
    assert second["NRestarts"] == "0"  # systemd counts Restart= restarts only, not ours
    assert procs.start_time(pid) is None  # the old main process is gone
    systemctl(pi, "stop", "klipper")
    stopped = show(pi, "-p", RESTART_PROOF + ",ActiveState")
    assert (stopped["MainPID"], stopped["ActiveState"]) == ("0", "inactive")
    # systemd keeps the last run's start time on an inactive unit
    assert stopped["ExecMainStartTimestampMonotonic"] == second["ExecMainStartTimestampMonotonic"]


def knob(pi: Path, *settings: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pyinfra_ratos.sim.knobs", "--state",
                           str(pi / "state.json"), *settings], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), check=False)
    assert done.returncode == 0, done.stderr


def test_activating_unit_is_not_active_and_has_no_main_pid(pi: Path) -> None:
    systemctl(pi, "start", "klipper")
    knob(pi, "klipper=activating")
    done = systemctl(pi, "is-active", "klipper")
    assert (done.returncode, done.stdout) == (3, "activating\n")
    status = systemctl(pi, "status", "klipper")
    assert status.returncode == 3
    assert "     Active: activating (auto-restart) (Result: exit-code) since " in status.stdout
    assert "Main PID" not in status.stdout
    assert show(pi, "-p", "ActiveState,SubState,MainPID") == {
        "MainPID": "0", "ActiveState": "activating", "SubState": "auto-restart"}
    assert systemctl(pi, "restart", "klipper").returncode == 0  # queued, then done
    after = show(pi, "-p", "ActiveState,MainPID")
    assert after["ActiveState"] == "active" and after["MainPID"] != "0"


def test_deactivating_unit_keeps_its_process_until_the_stop_completes(pi: Path) -> None:
    knob(pi, "klipper=deactivating")  # starts klipper first: it was stopped
    props = show(pi, "-p", "ActiveState,SubState,MainPID")
    assert (props["ActiveState"], props["SubState"]) == ("deactivating", "stop-sigterm")
    pid = int(props["MainPID"])
    assert procs.start_time(pid) is not None
    done = systemctl(pi, "is-active", "klipper")
    assert (done.returncode, done.stdout) == (3, "deactivating\n")
    assert systemctl(pi, "status", "klipper").stdout.splitlines()[2].startswith(
        "     Active: deactivating (stop-sigterm) since ")
    assert systemctl(pi, "start", "klipper").returncode == 0  # waits for the stop, then starts
    after = show(pi, "-p", "ActiveState,MainPID")
    assert after["ActiveState"] == "active" and int(after["MainPID"]) != pid
    assert procs.start_time(pid) is None
    knob(pi, "klipper=deactivating")
    assert systemctl(pi, "stop", "klipper").returncode == 0
    assert show(pi, "-p", "ActiveState,MainPID") == {"ActiveState": "inactive", "MainPID": "0"}


def test_a_hanging_moonraker_holds_connections_and_still_stops_at_once(pi: Path) -> None:
    assert systemctl(pi, "start", "moonraker").returncode == 0
    knob(pi, "moonraker_fault=hang")
    port = load(pi)["moonraker_port"]
    held = []
    for _ in range(5):
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn.sendall(b"GET /server/info HTTP/1.1\r\nHost: x\r\n\r\n")
        held.append(conn)
    held[0].settimeout(0.5)
    with pytest.raises(TimeoutError):
        held[0].recv(1)
    started = time.monotonic()
    assert systemctl(pi, "stop", "moonraker").returncode == 0
    assert time.monotonic() - started < 5  # SIGTERM is enough: no kill after the 10 s grace
    for conn in held:
        conn.settimeout(5)
        try:
            assert conn.recv(1) == b""  # closed with the process, never answered
        except ConnectionResetError:
            pass
        conn.close()
