"""ratos-fleet update on a 20-Pi mixed farm: canary first, busy printers untouched, threshold, report."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinfra_ratos.sim import farm as sim_farm

from .conftest import VENV_BIN, RunningFarm, start_farm

BOARDS = ["btt-octopus-pro-h723-11", "btt-octopus-pro-446", "btt-skr-mini-e3-30"]
PRINTING = {"prod-03", "prod-09", "prod-15"}
FAILING = {"prod-05"}  # flashed, never comes back on USB


def scenario() -> str:
    pis = []
    for i in range(1, 3):
        pis.append(f'[[pi]]\nname = "canary-{i:02d}"\ngroup = "canary"\ncheckout = "old"\n'
                   f'[[pi.boards]]\nboard = "{BOARDS[i % 3]}"\nfirmware = "old"\n')
    for i in range(1, 19):
        name = f"prod-{i:02d}"
        keys = [f'name = "{name}"', 'group = "production"', 'checkout = "old"']
        if name in PRINTING:
            keys.append('state = "printing"')
        if i == 7:
            keys.append('network = "offline"')
        board = [f'board = "{BOARDS[i % 3]}"', 'firmware = "old"']
        if i == 11:
            board.append('mode = "dfu"')
        if name in FAILING:
            board = ['board = "btt-octopus-pro-h723-11"', 'firmware = "old"', 'faults = ["no-reenumerate"]']
        pis.append("[[pi]]\n" + "\n".join(keys) + "\n[[pi.boards]]\n" + "\n".join(board) + "\n")
    return "\n".join(pis)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    base = tmp_path_factory.mktemp("farm-fleet")
    (base / "fleet.toml").write_text(scenario())
    running = start_farm(base / "fleet.toml", base / "state")
    try:
        yield running
    finally:
        sim_farm.down(base / "state")


def ratos_fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "ratos-fleet"), *args], capture_output=True, text=True, timeout=900)


def sshd_sessions(fleet: RunningFarm, pi: str) -> int:
    log = fleet.upper(pi) / "var/log/ratos-sim/sshd.log"
    return log.read_text().count("Starting session") if log.exists() else 0


def test_bad_inventory_is_refused_before_any_ssh_command(fleet: RunningFarm, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        f"exec(open({str(fleet.inventory)!r}).read())\n"
        "production = [(n, {**d, 'printer_model': 'v-core-9'}) if n == 'prod-02' else\n"
        "              (n, {**d, 'boards': [{'board': 'btt-nope'}]}) if n == 'prod-04' else (n, d)\n"
        "              for n, d in production]\n"
    )
    before = {pi["name"]: sshd_sessions(fleet, pi["name"]) for pi in fleet.info["pis"]}
    result = ratos_fleet("update", str(inventory), "--report", str(tmp_path / "report"))
    assert result.returncode == 2
    assert "host prod-02: field 'printer_model'" in result.stderr
    assert "host prod-04: field 'boards[0].board'" in result.stderr
    assert {pi["name"]: sshd_sessions(fleet, pi["name"]) for pi in fleet.info["pis"]} == before
    assert not (tmp_path / "report").exists()


def test_the_failure_threshold_stops_the_run_and_says_so(fleet: RunningFarm, tmp_path: Path) -> None:
    # canary (2), then a window of 1: prod-05 fails as the 7th printer to finish: 1 of 7 > 10%
    result = ratos_fleet("update", str(fleet.inventory), "--max-in-flight", "1", "--max-failed", "0.1",
                         "--report", str(tmp_path))
    assert result.returncode == 1, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stopped_early"]["after_batch"] == 2  # batches are numbered from 1, the canary first
    assert report["stopped_early"]["after_printer"] == "prod-05"
    assert "1 of 7 finished printers failed" in report["stopped_early"]["reason"]
    assert report["stopped_early"]["not_started"] == 13
    status = {p["host"]: p for p in report["printers"]}
    assert len(status) == 20  # every printer is in the report, run or not
    assert [p["host"] for p in report["printers"] if p["batch"] == 1] == ["canary-01", "canary-02"]
    assert status["prod-05"]["status"] == "failed"
    assert "did not come back" in status["prod-05"]["reason"]
    assert status["prod-03"]["status"] == "busy" and "busy" in status["prod-03"]["reason"]
    assert all(status[f"prod-{i:02d}"]["status"] == "not-run" for i in range(6, 19))
    assert set(report["window"]["printers"]) == {"canary-01", "canary-02", *(f"prod-{i:02d}" for i in range(1, 6))}
    assert "STOPPED EARLY after batch 2: 1 of 7 finished printers failed" in result.stdout
    assert "-- [7/20] prod-05: failed" in result.stdout


def test_a_slow_printer_does_not_hold_the_window(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Three printers, a window of 2: the first one's board erases slowly and is held in DFU
    (``stuck-dfu`` until a test mends it): the other two run and finish while it is in flight."""
    base = tmp_path_factory.mktemp("farm-window")
    (base / "w.toml").write_text("".join(
        f'[[pi]]\nname = "w-{i}"\ncheckout = "old"\n[[pi.boards]]\nboard = "btt-octopus-pro-446"\n'
        f'firmware = "old"\nport = "1-1.1"\n' + ('faults = ["slow-erase"]\n' if i == 1 else "") + "\n"
        for i in range(1, 4)))
    farm = start_farm(base / "w.toml", base / "state")
    try:
        result = ratos_fleet("update", str(farm.inventory), "--max-in-flight", "2", "--report", str(base / "r"))
        assert result.returncode == 3, result.stdout + result.stderr  # changes made
        report = json.loads((base / "r/report.json").read_text())
        slots = report["window"]["printers"]
        assert report["window"]["max_in_flight"] == 2 and report["window"]["peak_in_flight"] == 2
        # w-3 started when w-2 finished, while w-1 (slow) was still in flight: no barrier
        assert slots["w-3"]["start_s"] >= slots["w-2"]["end_s"]
        assert slots["w-3"]["start_s"] < slots["w-1"]["end_s"]
        assert {p["status"] for p in report["printers"]} == {"changed"}
    finally:
        sim_farm.down(base / "state")


def test_the_update_converges_the_fleet_and_never_touches_a_printing_printer(fleet: RunningFarm, tmp_path: Path) -> None:
    pids = {name: fleet.klippy_pid(name) for name in PRINTING}
    result = ratos_fleet("update", str(fleet.inventory), "--max-in-flight", "6", "--max-failed", "0.5",
                         "--report", str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    status = {p["host"]: p for p in report["printers"]}
    assert report["stopped_early"] is None
    assert len(status) == 20 and (tmp_path / "report.html").exists()
    for name in PRINTING:
        assert status[name]["status"] == "busy" and "printing" in status[name]["reason"]
        assert fleet.klippy_pid(name) == pids[name]  # Klipper never stopped or restarted
    for name, entry in status.items():
        if name in PRINTING | FAILING:
            continue
        assert entry["status"] in ("changed", "converged"), (name, entry)
        assert entry["klipper"]["after"] == fleet.info["versions"]["current"]["version"], name
        assert all(b["after_version"] == fleet.info["versions"]["current"]["version"] for b in entry["boards"]), name
    assert status["prod-07"]["klipper"]["action"] in ("updated", "unchanged")  # the offline Pi, from the bundle
    assert result.returncode == 1  # prod-05 failed (the printing printers alone would be 3: pending)
    html = (tmp_path / "report.html").read_text()
    assert all(name in html for name in status)


def test_one_batch_of_printers_with_different_work_converges_and_is_backed_up_as_written(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """One batch: a Pi that needs Klipper, a flash and its config; one that needs its config only;
    one that builds its firmware itself (its flash is planned while executing, in a python.call).
    Their operation lists differ in length (pyinfra's API hashes an operation by its position on
    its host): the update must still run each operation once per host. The config each update
    wrote is backed up after the writes, so the next run is converged at 1 command per Pi."""
    base = tmp_path_factory.mktemp("farm-mixed")
    (base / "mixed.toml").write_text(
        '[[pi]]\nname = "mix-flash"\ncheckout = "old"\n'
        '[[pi.boards]]\nboard = "btt-octopus-pro-h723-11"\nfirmware = "old"\n\n'
        '[[pi]]\nname = "mix-config"\n'
        '[[pi.boards]]\nboard = "btt-octopus-pro-446"\nfirmware = "current"\n\n'
        '[[pi]]\nname = "mix-pibuild"\n'
        '[[pi.boards]]\nboard = "btt-skr-mini-e3-30"\nfirmware = "old"\n')
    mixed = start_farm(base / "mixed.toml", base / "state")
    inventory = base / "inventory.py"
    inventory.write_text(f"exec(open({str(mixed.inventory)!r}).read())\n"
                         "pis = [(n, {**d, 'firmware_build': 'pi'} if n == 'mix-pibuild' else d) for n, d in pis]\n")
    try:
        first = ratos_fleet("update", str(inventory), "--batch-size", "3", "--report", str(base / "r1"))
        assert first.returncode == 3 and "Traceback" not in first.stderr, first.stdout + first.stderr  # changes made
        status = {p["host"]: p for p in json.loads((base / "r1/report.json").read_text())["printers"]}
        assert status["mix-flash"]["boards"][0]["action"] == "flashed"
        assert status["mix-pibuild"]["boards"][0]["action"] == "flashed"
        assert status["mix-config"]["config"]["action"] == "written"
        assert status["mix-config"]["klipper"]["action"] == "unchanged"

        before = {name: sshd_sessions(mixed, name) for name in status}
        again = ratos_fleet("update", str(inventory), "--report", str(base / "r2"))
        assert again.returncode == 0, again.stdout + again.stderr
        report = json.loads((base / "r2/report.json").read_text())
        assert {p["status"] for p in report["printers"]} == {"converged"}
        assert {name: sshd_sessions(mixed, name) - before[name] for name in status} == {name: 1 for name in status}
        for name in status:  # the newest backup holds the RatOS.cfg the first update wrote
            newest = sorted((mixed.state / "config-backups" / name).iterdir())[-1]
            pi_home = mixed.state / "pis" / name / "home" / "pi"
            assert (newest / "files/RatOS.cfg").read_bytes() == \
                (pi_home / "printer_data/config/RatOS.cfg").read_bytes(), name
    finally:
        sim_farm.down(base / "state")
