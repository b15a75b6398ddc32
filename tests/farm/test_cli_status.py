"""``ratos-fleet status`` on the virtual farm: one SSH command per Pi, and none for a bad inventory."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinfra_ratos.sim import farm as sim_farm

from .conftest import VENV_BIN, RunningFarm, start_farm

SCENARIO = """
[[pi]]
name = "st-current"            # both MCUs run the host's version
[[pi.boards]]
board = "btt-octopus-pro-h723-11"
firmware = "current"
[[pi.boards]]
board = "btt-ebb42-12"
mcu_name = "toolboard_t0"
firmware = "current"

[[pi]]
name = "st-behind"             # printing, and its MCU is behind the host
state = "printing"
[[pi.boards]]
board = "btt-octopus-pro-h723-11"
firmware = "old"

[[pi]]
name = "st-offline"            # no default route, its board in ROM DFU
network = "offline"
[[pi.boards]]
board = "btt-octopus-pro-h723-11"
mode = "dfu"
firmware = "old"
"""
PIS = ("st-current", "st-behind", "st-offline")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    state = tmp_path_factory.mktemp("farm-status")
    scenario = state.parent / f"{state.name}-scenario.toml"
    scenario.write_text(SCENARIO)
    running = start_farm(scenario, state)
    try:
        yield running
    finally:
        sim_farm.down(state)


def status(farm: RunningFarm, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(VENV_BIN / "ratos-fleet"), "status", str(inventory or farm.inventory), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def ssh_commands(farm: RunningFarm) -> dict[str, int]:
    counts = {}
    for pi in PIS:
        log = farm.upper(pi) / "var/log/ratos-sim/sshd.log"
        counts[pi] = log.read_text(errors="replace").count("Starting session") if log.exists() else 0
    return counts


def derived(farm: RunningFarm, tmp_path: Path, body: str) -> Path:
    """An inventory made from the farm's: its ``pis`` rewritten by ``body``."""
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"exec(open({str(farm.inventory)!r}).read())\n{body}\n")
    return inventory


def rows(stdout: str) -> dict[str, list[list[str]]]:
    """Each printer's line (first), then its board lines (indented under it)."""
    found: dict[str, list[list[str]]] = {}
    current = None
    for line in stdout.splitlines():
        words = line.split()
        if words and words[0] in (*PIS, "st-gone"):
            current = words[0]
            found[current] = [words]
        elif current and line.startswith("    ") and not line.startswith("      ") and words:  # not a reason
            found[current].append(words)
        else:
            current = None
    return found


def test_status_shows_every_board_against_the_pin_with_one_ssh_command_per_pi(farm: RunningFarm) -> None:
    before = ssh_commands(farm)
    done = status(farm)
    after = ssh_commands(farm)
    assert {pi: after[pi] - before[pi] for pi in PIS} == dict.fromkeys(PIS, 1)
    assert done.returncode == 3, done.stdout + done.stderr  # st-behind and st-offline have changes pending
    assert max(len(line) for line in done.stdout.splitlines()) <= 120
    table = rows(done.stdout)
    current = farm.info["versions"]["current"]["version"]
    old = farm.info["versions"]["old"]["version"]
    assert done.stdout.splitlines()[0] == f"fleet pinned to Klipper {current}"
    # at the pin, but its printer.cfg does not include RatOS.cfg: update would adopt it (as plan says)
    assert table["st-current"][0] == ["st-current", "online", "ready", "no", current, "at", "pin", "will", "write"]
    assert table["st-current"][1:] == [
        ["mcu", "btt-octopus-pro-h723-11", "1-1.1", "klipper", current, "at", "pin"],
        ["toolboard_t0", "btt-ebb42-12", "1-1.2", "klipper", current, "at", "pin"],
    ]
    behind = table["st-behind"]
    assert behind[0][:4] == ["st-behind", "online", behind[0][2], "yes"]
    assert behind[1][4:] == [old, "behind"]
    offline = table["st-offline"]
    assert offline[0][1] == "offline" and offline[1][3] == "dfu" and offline[1][-1] == "unknown"
    assert "update would write RatOS.cfg (generated), printer.cfg (adopted)" in done.stdout
    assert "3 printers: 0 converged, 2 behind the pin, 3 with configuration to write, 0 unreachable or unread, " \
           "1 busy" in done.stdout
    assert "behind the pin: st-behind, st-offline" in done.stdout


def test_status_and_plan_agree_on_the_configuration_and_an_update_converges_it(farm: RunningFarm,
                                                                              tmp_path: Path) -> None:
    assert status(farm, "--limit", "st-current").returncode == 3  # at the pin, configuration to write
    plan = subprocess.run([str(VENV_BIN / "ratos-fleet"), "plan", str(farm.inventory), "--limit", "st-current",
                           "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert plan.returncode == 3 and json.loads(plan.stdout)["printers"][0]["config"]["action"] == "written"
    update = subprocess.run([str(VENV_BIN / "ratos-fleet"), "update", str(farm.inventory), "--limit", "st-current",
                             "--report", str(tmp_path)], capture_output=True, text=True, timeout=600, check=False)
    assert update.returncode == 3, update.stdout + update.stderr  # changes made
    done = status(farm, "--limit", "st-current")
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(rows(done.stdout)) == ["st-current"] and rows(done.stdout)["st-current"][0][-3:] == ["up", "to", "date"]
    found = json.loads(status(farm, "--limit", "st-current", "--json").stdout)
    assert found["converged"] is True and found["hosts"]["st-current"]["summary"]["config"]["state"] == "up to date"


def test_fail_on_busy_makes_a_busy_printer_behind_the_pin_exit_1(farm: RunningFarm) -> None:
    assert status(farm, "--limit", "st-behind").returncode == 3
    assert status(farm, "--limit", "st-behind", "--fail-on-busy").returncode == 1
    assert status(farm, "--limit", "st-offline", "--fail-on-busy").returncode == 3  # idle: pending, not busy


def test_status_reads_without_the_controllers_klipper_checkout(farm: RunningFarm, tmp_path: Path) -> None:
    # after the update above: st-current converged, configuration included
    inventory = derived(farm, tmp_path, "pis = [(n, {**d, 'klipper_source': '/nonexistent/klipper-fleet'}) "
                                        "for n, d in pis]")
    done = status(farm, "--limit", "st-current", inventory=inventory)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "klipper_source" not in done.stderr


def test_json_prints_each_pis_facts_and_its_summary(farm: RunningFarm) -> None:
    done = status(farm, "--json", "--limit", "st-behind", "--limit", "st-off*")
    assert done.returncode == 3
    found = json.loads(done.stdout)
    assert found["converged"] is False and sorted(found["hosts"]) == ["st-behind", "st-offline"]
    assert found["behind"] == ["st-behind", "st-offline"] and found["exit_code"] == 3
    assert found["config_pending"] == ["st-behind", "st-offline"] == found["not_converged"]
    behind = found["hosts"]["st-behind"]
    assert behind["status"] == "ok" and behind["error"] == ""
    assert set(behind["facts"]) == {"boards", "klipper", "mcu_firmware", "activity", "network"}
    assert behind["facts"]["activity"]["busy"] is True
    assert behind["summary"]["boards"][0]["firmware"] == "behind"
    assert found["hosts"]["st-offline"]["summary"]["network"] == "offline"
    assert behind["summary"]["config"]["state"] == "will write" and behind["summary"]["at_pin"] is False


def test_an_unreachable_printer_is_reported_not_raised(farm: RunningFarm, tmp_path: Path) -> None:
    inventory = derived(farm, tmp_path, (
        "pis = pis[:1] + [('st-gone', {**pis[0][1], 'ssh_hostname': '127.0.0.1', 'ssh_port': 1})]"))
    done = status(farm, inventory=inventory)
    assert done.returncode == 1, done.stdout + done.stderr
    table = rows(done.stdout)
    assert table["st-current"][0][-5:] == ["at", "pin", "up", "to", "date"]  # converged by the update above
    assert table["st-gone"][0][-1] == "unknown" and "unreachable:" in done.stdout
    assert "2 printers: 1 converged, 0 behind the pin, 0 with configuration to write, 1 unreachable or unread" \
        in done.stdout


def test_bad_inventory_values_are_each_one_line_and_nothing_runs_on_any_pi(farm: RunningFarm, tmp_path: Path) -> None:
    inventory = derived(farm, tmp_path, "\n".join((
        "pis = [(name, dict(data)) for name, data in pis]",
        "pis[0][1]['boards'] = [{'board': 'btt-octopus-pro-h72', 'port': '1-1.1'}]",
        "pis[1][1]['boards'] = [{'board': 'btt-octopus-pro-h723-11', 'port': 'usb1', 'serial': 'ttyACM0'}]",
        "pis[2][1]['printer_modle'] = 'v-core-3'",
        "pis[2][1]['attended_flash'] = True",
    )))
    before = ssh_commands(farm)
    done = status(farm, inventory=inventory)
    assert ssh_commands(farm) == before
    assert done.returncode == 2 and done.stdout == ""
    errors = [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("host ")]
    assert [line.split(":")[0] + ":" + line.split(":")[1].split("'")[1] for line in errors] == [
        "host st-current:boards[0].board", "host st-behind:boards[0].port", "host st-behind:boards[0].serial",
        "host st-offline:printer_modle", "host st-offline:attended_flash",
    ]
    assert "did you mean 'btt-octopus-pro-h723" in errors[0] and "did you mean 'printer_model'?" in errors[3]


@pytest.mark.parametrize("command", ["status", "plan"])
def test_hostile_inventory_values_exit_2_and_no_pi_sees_a_connection(
    farm: RunningFarm, tmp_path: Path, command: str,
) -> None:
    inventory = derived(farm, tmp_path, "\n".join((
        "pis = [(name, dict(data)) for name, data in pis]",
        "pis[0][1]['boards'] = [{'board': 'btt-octopus-pro-h723-11', 'port': '1-1.1\\n'},",
        "                       {'board': 'btt-ebb42-12', 'port': '1-1.1', 'kconfig': {5: 'x'}}]",
        "pis[1][1]['config_backups'] = 'x\\0y'",
        "pis[1][1]['ssh_password'] = 424242",
        "pis[2] = ('..', {**pis[2][1], 'hotend': 'rapido\\x1b]0;pwned\\x07', 'timezone': '$(reboot)'})",
    )))
    before = ssh_commands(farm)
    done = subprocess.run([str(VENV_BIN / "ratos-fleet"), command, str(inventory)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert ssh_commands(farm) == before
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr, done.stderr
    for host, field in [("st-current", "boards[0].port"), ("st-current", "boards[1].kconfig"),
                        ("st-behind", "config_backups"), ("st-behind", "ssh_password"), ("..", "inventory name"),
                        ("..", "hotend"), ("..", "timezone")]:
        assert f"host {host}: field '{field}'" in done.stderr, (host, field, done.stderr)
    assert "424242" not in done.stderr and "\x1b" not in done.stderr and "\x07" not in done.stderr


def test_an_unknown_limit_is_bad_input(farm: RunningFarm) -> None:
    before = ssh_commands(farm)
    done = status(farm, "--limit", "no-such-printer")
    assert done.returncode == 2 and "--limit no-such-printer" in done.stderr
    assert ssh_commands(farm) == before
