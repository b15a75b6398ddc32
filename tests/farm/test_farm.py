"""The virtual RatOS farm, driven like a real one: pyinfra and OpenSSH over loopback."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from pyinfra_ratos.sim import farm as sim_farm
from pyinfra_ratos.sim import procs

from .conftest import VENV_BIN, RunningFarm, start_farm

TWO_PIS = """
[[pi]]
name = "lone-01"
[[pi.boards]]
board = "btt-octopus-pro-h723-11"
firmware = "current"

[[pi]]
name = "lone-02"
network = "offline"
"""


def _namespaces() -> set[str]:
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            for kind in ("mnt", "net", "uts", "pid"):
                try:
                    found.add(os.readlink(f"/proc/{pid}/ns/{kind}"))
                except OSError:
                    pass
    return found


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{pid}: {cmdline}")
    return found


def _namespaces_holding(state: Path) -> set[str]:
    """Namespaces (new since the farm started) whose processes still see the farm's mounts.

    A Pi's mount namespace shows its overlays with upperdir under the state dir, so this finds
    exactly what is left of this farm, whatever other farms run on the machine meanwhile.
    """
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if str(state) in Path(f"/proc/{pid}/mountinfo").read_text():
                    found |= {os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("mnt", "net", "uts", "pid")}
            except OSError:
                continue
    return found


def _assert_nothing_left(state: Path, namespaces_before: set[str]) -> None:
    assert _processes_mentioning(str(state)) == []
    assert str(state) not in Path("/proc/self/mountinfo").read_text()
    assert _namespaces_holding(state) - namespaces_before == set()
    for pidfile in [state / "daemon.pid", *state.glob("pis/*/init.pid")]:
        assert procs.pidfile_alive(str(pidfile)) is None


def test_each_pi_answers_pyinfra_with_its_own_hostname(three_pis: RunningFarm) -> None:
    result = three_pis.pyinfra("exec", "--", "hostname")
    for pi in three_pis.info["pis"]:
        assert re.search(rf"^\[{pi['name']}\]\s+{pi['name']}$", result.stdout, re.M), result.stdout


def test_each_pi_has_its_own_moonraker_with_its_scenario_state(three_pis: RunningFarm) -> None:
    expected = {"vcore-01": "standby", "vcore-02": "printing", "vminion-01": "standby"}
    for name, state in expected.items():
        out = three_pis.ssh(name, "curl -s '127.0.0.1:7125/printer/objects/query?print_stats'").stdout
        answer = json.loads(out)
        assert answer["result"]["status"]["print_stats"]["state"] == state, name


def test_klipper_checkout_describes_like_a_real_one(three_pis: RunningFarm) -> None:
    current = three_pis.info["versions"]["current"]["version"]
    for pi in three_pis.info["pis"]:
        out = three_pis.ssh(pi["name"], "git -C ~/klipper describe --always --tags --long --dirty").stdout
        assert out.strip() == current
    assert current.startswith("v0.13.0-") and "-g" in current


def test_writes_in_one_pi_stay_in_that_pi(three_pis: RunningFarm) -> None:
    three_pis.ssh("vcore-01", "sudo sh -c 'echo one > /etc/isolation-probe' && echo one > ~/isolation-probe")
    assert three_pis.ssh("vcore-01", "cat /etc/isolation-probe ~/isolation-probe").stdout == "one\none\n"
    other = three_pis.ssh("vcore-02", "ls /etc/isolation-probe ~/isolation-probe", check=False)
    assert other.returncode != 0 and "No such file" in other.stderr
    assert not Path("/etc/isolation-probe").exists()
    assert not Path("/home/pi/isolation-probe").exists()
    # the change lives in the Pi's own copy-on-write layer, visible from the controller side
    assert (three_pis.upper("vcore-01") / "etc" / "isolation-probe").read_text() == "one\n"


def test_pi_user_has_passwordless_sudo_and_its_own_host_key(three_pis: RunningFarm) -> None:
    assert three_pis.ssh("vcore-01", "sudo -n id -u").stdout.strip() == "0"
    keys = {
        (three_pis.upper(pi["name"]) / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1]
        for pi in three_pis.info["pis"]
    }
    assert len(keys) == len(three_pis.info["pis"])


def test_strict_host_key_checking_refuses_a_pi_with_the_wrong_key(three_pis: RunningFarm, tmp_path: Path) -> None:
    lines = (three_pis.state / "known_hosts").read_text().splitlines()
    # give vcore-01's address the key of vcore-02
    swapped = [lines[0].split()[0] + " " + " ".join(lines[1].split()[1:])] + lines[1:]
    (tmp_path / "known_hosts").write_text("\n".join(swapped) + "\n")
    pi = three_pis.pi("vcore-01")
    result = subprocess.run(
        ["ssh", "-i", str(three_pis.state / "id_ed25519"), "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"pi@{pi['address']}", "true"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_offline_pi_has_no_route_and_online_pi_has_one(three_pis: RunningFarm) -> None:
    assert three_pis.ssh("vcore-01", "ip route show default").stdout.startswith("default")
    assert three_pis.ssh("vminion-01", "ip route show default").stdout == ""
    offline = three_pis.ssh("vminion-01", "getent hosts github.com", check=False)
    assert offline.returncode == 2


def test_two_farms_run_side_by_side_and_down_leaves_nothing(three_pis: RunningFarm, tmp_path: Path) -> None:
    scenario = tmp_path / "two.toml"
    scenario.write_text(TWO_PIS)
    state = tmp_path / "state"
    before = _namespaces()
    second = start_farm(scenario, state)
    try:
        assert second.ssh("lone-01", "hostname").stdout.strip() == "lone-01"
        assert three_pis.ssh("vcore-01", "hostname").stdout.strip() == "vcore-01"
        assert {p["address"] for p in second.info["pis"]}.isdisjoint(p["address"] for p in three_pis.info["pis"])
    finally:
        sim_farm.down(state)
    _assert_nothing_left(state, before)


def test_down_after_the_daemon_was_killed_leaves_nothing(tmp_path: Path) -> None:
    scenario = tmp_path / "two.toml"
    scenario.write_text(TWO_PIS)
    state = tmp_path / "state"
    before = _namespaces()
    start_farm(scenario, state)
    daemon = procs.read_pidfile(str(state / "daemon.pid"))
    assert daemon is not None
    os.kill(daemon[0], signal.SIGKILL)
    sim_farm.down(state)
    _assert_nothing_left(state, before)
    # and the same state directory starts a fresh farm again
    again = start_farm(scenario, state)
    try:
        assert again.ssh("lone-02", "hostname").stdout.strip() == "lone-02"
    finally:
        sim_farm.down(state)
    _assert_nothing_left(state, before)


def test_down_after_a_killed_sim_up_leaves_nothing(tmp_path: Path) -> None:
    scenario = tmp_path / "two.toml"
    scenario.write_text(TWO_PIS)
    state = tmp_path / "state"
    before = _namespaces()
    up = subprocess.Popen(
        [str(VENV_BIN / "ratos-fleet"), "sim", "up", str(scenario), "--state", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while procs.pidfile_alive(str(state / "daemon.pid")) is None:
        assert time.monotonic() < deadline and up.poll() is None
        time.sleep(0.01)
    up.kill()
    up.wait()
    result = subprocess.run(
        [str(VENV_BIN / "ratos-fleet"), "sim", "down", "--state", str(state)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    _assert_nothing_left(state, before)


def test_sim_up_refuses_a_second_farm_in_the_same_state_dir(three_pis: RunningFarm) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "ratos-fleet"), "sim", "up", three_pis.info["scenario"], "--state", str(three_pis.state)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "already runs" in result.stderr
    assert three_pis.ssh("vcore-01", "hostname").stdout.strip() == "vcore-01"


def test_bad_scenario_is_refused_before_anything_starts(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text('[[pi]]\nname = "vcore-01"\nstate = "printin"\n')
    result = subprocess.run(
        [sys.executable, "-m", "pyinfra_ratos.fleet.cli", "sim", "up", str(scenario), "--state", str(tmp_path / "s")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "pi 'vcore-01': key 'state' is 'printin'; allowed values: standby, printing" in result.stderr
    assert not (tmp_path / "s").exists()


def _ssh_commands(farm: RunningFarm, name: str) -> int:
    log = farm.upper(name) / "var/log/ratos-sim/sshd.log"
    return log.read_text().count("Starting session") if log.exists() else 0


def test_the_audit_deploy_prints_each_pi_and_board_in_one_command_per_pi(three_pis: RunningFarm) -> None:
    deploy = Path(__file__).parents[2] / "deploys" / "audit.py"
    before = {p["name"]: _ssh_commands(three_pis, p["name"]) for p in three_pis.info["pis"]}
    out = three_pis.pyinfra(str(deploy)).stdout
    current = three_pis.info["versions"]["current"]["version"]
    assert re.search(rf"\[vcore-02\] klipper {current} \(at pin\)\s+klippy ready\s+busy\s+online", out), out
    assert re.search(r"\[vminion-01\] klipper \S+ \((at pin|behind)\)\s+klippy error\s+idle\s+offline", out), out
    assert re.search(r"\[vminion-01\]\s+1-1\.1\s+dfu\s+", out), out
    assert all(re.search(rf"\[{p['name']}\]   config (up to date|will write|restart owed|invalid|unknown)", out)
               for p in three_pis.info["pis"]), out
    after = {p["name"]: _ssh_commands(three_pis, p["name"]) for p in three_pis.info["pis"]}
    assert all(after[name] - before[name] == 1 for name in before), (before, after)
