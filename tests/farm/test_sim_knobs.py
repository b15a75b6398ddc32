"""The printer-state knobs on a real farm: set by the scenario, flipped at run time with
``sudo ratos-sim-knob`` over SSH, read back over real SSH with curl and systemctl."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


from .conftest import RunningFarm, running_farm

SCENARIO = Path(__file__).parent / "scenarios" / "knobs-lab.toml"
QUERY = "/printer/objects/query?webhooks&print_stats=state&idle_timeout=state"
PROOF = "MainPID,ExecMainStartTimestamp,ExecMainStartTimestampMonotonic,NRestarts"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIO, "farm-knobs") as running:
        yield running


def knob(lab: RunningFarm, pi: str, *settings: str) -> None:
    """How a test flips a knob: on the Pi, as root (the state file is in the Pi's overlay)."""
    done = lab.ssh(pi, "sudo ratos-sim-knob " + " ".join(map(shlex.quote, settings)), check=False)
    assert done.returncode == 0, done.stderr


def curl(lab: RunningFarm, pi: str, url: str, limit: int = 10) -> tuple[int, int, Any]:
    """(curl's exit status, HTTP status, JSON body) of a GET to the Pi's own Moonraker."""
    done = lab.ssh(pi, f"curl -s -m {limit} -w '\\n%{{http_code}}' "
                       f"{shlex.quote('http://127.0.0.1:7125' + url)}", check=False)
    body, _, code = done.stdout.rpartition("\n")
    return done.returncode, int(code or 0), json.loads(body) if body else None


def systemctl(lab: RunningFarm, pi: str, args: str) -> tuple[int, str]:
    done = lab.ssh(pi, f"systemctl {args}", check=False)
    return done.returncode, done.stdout


def test_scenario_sets_the_knobs_at_start(lab: RunningFarm) -> None:
    _, code, data = curl(lab, "knob-m112", QUERY)
    status = data["result"]["status"]
    assert code == 200 and status["webhooks"]["state"] == "shutdown"
    assert status["webhooks"]["state_message"].startswith("Shutdown due to M112 command\n")
    assert status["print_stats"] == {"state": "paused"}

    _, code, data = curl(lab, "knob-lost", "/printer/info")
    assert (code, data["error"]["message"]) == (503, "Klippy Host not connected")
    assert systemctl(lab, "knob-lost", "is-active klipper") == (3, "activating\n")

    exit_status, code, _ = curl(lab, "knob-hang", "/server/info", limit=2)
    assert (exit_status, code) == (28, 0)  # curl: operation timed out, nothing answered
    assert systemctl(lab, "knob-hang", "is-active klipper") == (3, "deactivating\n")


def test_503_while_the_print_goes_on(lab: RunningFarm) -> None:
    knob(lab, "knob-idle", "print=start", "moonraker_fault=503")
    _, code, data = curl(lab, "knob-idle", QUERY)
    assert code == 503
    assert (data["error"]["code"], data["error"]["message"]) == (503, "Klippy Host not connected")
    assert "traceback" in data["error"]
    knob(lab, "knob-idle", "moonraker_fault=none")
    _, _, data = curl(lab, "knob-idle", QUERY)
    assert data["result"]["status"]["print_stats"] == {"state": "printing"}
    assert data["result"]["status"]["idle_timeout"] == {"state": "Printing"}
    knob(lab, "knob-idle", "print=stop")
    _, _, data = curl(lab, "knob-idle", QUERY)
    assert data["result"]["status"]["idle_timeout"] == {"state": "Idle"}


def test_hang_never_answers_then_answers_late(lab: RunningFarm) -> None:
    knob(lab, "knob-idle", "moonraker_fault=hang")
    assert curl(lab, "knob-idle", "/printer/info", limit=2)[:2] == (28, 0)
    knob(lab, "knob-idle", "moonraker_hang_seconds=2")
    started = time.monotonic()
    exit_status, code, data = curl(lab, "knob-idle", "/printer/info", limit=20)
    assert (exit_status, code, data["result"]["state"]) == (0, 200, "ready")
    assert time.monotonic() - started >= 2
    knob(lab, "knob-idle", "moonraker_fault=none", "moonraker_hang_seconds=0")
    assert curl(lab, "knob-idle", "/printer/info")[1] == 200


def test_m112_at_run_time_and_a_klipper_restart_out_of_it(lab: RunningFarm) -> None:
    knob(lab, "knob-idle", "print=start", "klippy=shutdown")
    _, _, data = curl(lab, "knob-idle", "/printer/info")
    assert data["result"]["state"] == "shutdown"
    assert data["result"]["state_message"].endswith("Printer is shutdown\n")
    _, _, data = curl(lab, "knob-idle", QUERY)
    assert data["result"]["status"]["print_stats"] == {"state": "paused"}
    assert lab.ssh("knob-idle", "sudo systemctl restart klipper").returncode == 0
    _, _, data = curl(lab, "knob-idle", QUERY)
    assert data["result"]["status"]["webhooks"]["state"] == "ready"
    assert data["result"]["status"]["print_stats"] == {"state": "standby"}


def test_transitions_and_the_restart_proof(lab: RunningFarm) -> None:
    code, out = systemctl(lab, "knob-idle", f"show klipper -p {PROOF} --value")
    assert code == 0
    # --value prints in systemd's property order, not the order asked
    pid, restarts, stamp, monotonic = out.splitlines()
    assert int(pid) > 1 and stamp and restarts == "0"
    # the main process is real, and klipper's: it runs as pi
    assert lab.ssh("knob-idle", f"ps -o user= -p {pid}").stdout.strip() == "pi"

    knob(lab, "knob-idle", "klipper=activating")
    assert systemctl(lab, "knob-idle", "is-active klipper") == (3, "activating\n")
    code, out = systemctl(lab, "knob-idle", "status klipper")
    assert code == 3 and "Active: activating (auto-restart)" in out
    assert systemctl(lab, "knob-idle", "show klipper -p ActiveState,SubState,MainPID") == (
        0, "MainPID=0\nActiveState=activating\nSubState=auto-restart\n")
    assert curl(lab, "knob-idle", "/printer/info")[1] == 503
    assert lab.ssh("knob-idle", "sudo systemctl restart klipper").returncode == 0
    assert systemctl(lab, "knob-idle", "is-active klipper") == (0, "active\n")

    knob(lab, "knob-idle", "klipper=deactivating")
    assert systemctl(lab, "knob-idle", "is-active klipper") == (3, "deactivating\n")
    assert lab.ssh("knob-idle", "sudo systemctl start klipper").returncode == 0
    code, out = systemctl(lab, "knob-idle", f"show klipper -p {PROOF} --value")
    new_pid, _, _, new_monotonic = out.splitlines()
    assert new_pid != pid and int(new_monotonic) > int(monotonic)
    assert lab.ssh("knob-idle", f"ps -p {pid}", check=False).returncode == 1  # old one gone
    _, _, info = curl(lab, "knob-idle", "/printer/info")
    assert info["result"]["process_id"] == int(new_pid)
