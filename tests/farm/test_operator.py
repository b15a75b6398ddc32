"""What the operator sees (issue 16) on the virtual farm: an exit code per outcome, interrupts at
three points of an update (checkout, flash, between printers) that leave every printer's state in
the report and converge on a re-run, plan --json/--diff/--attended-flash, the demo at 120 columns."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinfra_ratos.sim import farm as sim_farm

from .conftest import VENV_BIN, RunningFarm, start_farm

SCENARIO = """
[[pi]]
name = "op-01"
checkout = "old"
[[pi.boards]]
board = "btt-octopus-pro-h723-11"
firmware = "old"

[[pi]]
name = "op-02"                 # mainboard and toolboard: a half-flashed printer would be broken
checkout = "old"
[[pi.boards]]
board = "btt-octopus-pro-h723-11"
firmware = "old"
[[pi.boards]]
board = "btt-ebb42-12"
mcu_name = "toolboard_t0"
firmware = "old"

[[pi]]
name = "op-03"
checkout = "old"
model = "v-minion"
[[pi.boards]]
board = "btt-skr-mini-e3-30"
firmware = "old"

[[pi]]
name = "op-04"                 # always printing
state = "printing"
checkout = "old"
[[pi.boards]]
board = "btt-octopus-pro-446"
firmware = "old"

[[pi]]
name = "op-05"                 # Octopus Pro H723 v1.0: flashed only with --attended-flash
checkout = "old"
[[pi.boards]]
board = "btt-octopus-pro-h723"
firmware = "old"
"""
PIS = ("op-01", "op-02", "op-03", "op-04", "op-05")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    base = tmp_path_factory.mktemp("farm-operator")
    (base / "op.toml").write_text(SCENARIO)
    running = start_farm(base / "op.toml", base / "state")
    try:
        yield running
    finally:
        sim_farm.down(base / "state")


def ratos_fleet(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "ratos-fleet"), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def interrupted_update(farm: RunningFarm, report: Path, cue: str, sig: int = signal.SIGINT) -> tuple[int, str, dict]:
    """``update --batch-size 1``, with ``sig`` sent as soon as a progress line holds ``cue``."""
    argv = [str(VENV_BIN / "ratos-fleet"), "update", str(farm.inventory), "--batch-size", "1", "--report", str(report)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    assert proc.stdout is not None
    sent = False
    for line in proc.stdout:
        lines.append(line)
        if not sent and cue in line:
            proc.send_signal(sig)
            sent = True
    code = proc.wait(timeout=600)
    err = proc.stderr.read() if proc.stderr else ""
    assert sent, "".join(lines) + err
    assert "Traceback" not in err, err
    return code, "".join(lines) + err, json.loads((report / "report.json").read_text())


def statuses(report: dict) -> dict[str, str]:
    return {p["host"]: p["status"] for p in report["printers"]}


def test_status_before_the_update_names_who_is_behind_the_pin(farm: RunningFarm) -> None:
    done = ratos_fleet("status", str(farm.inventory))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "behind the pin: op-01, op-02, op-03, op-04, op-05" in done.stdout


def test_plan_exits_3_and_speaks_of_what_it_will_do(farm: RunningFarm) -> None:
    done = ratos_fleet("plan", str(farm.inventory), "--json")
    assert done.returncode == 3, done.stderr
    plan = json.loads(done.stdout)
    assert plan["command"] == "plan" and plan["exit_code"] == 3
    assert statuses(plan) == {"op-01": "changed", "op-02": "changed", "op-03": "changed", "op-04": "busy",
                              "op-05": "held"}
    target = farm.info["versions"]["current"]["version"]
    assert all(b["after_version"] == target for p in plan["printers"][:3] for b in p["boards"])
    held = plan["printers"][4]["boards"][0]
    assert (held["action"], held["port"]) == ("refused", "1-1.1")  # the port the audit saw, not "-"
    assert all(p["klippy_state"] == "ready" for p in plan["printers"])
    table = ratos_fleet("plan", str(farm.inventory))
    assert "will update" in table.stdout and "will flash" in table.stdout and " updated " not in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 120
    attended = json.loads(ratos_fleet("plan", str(farm.inventory), "--json", "--attended-flash",
                                      "--limit", "op-05").stdout)
    assert statuses(attended) == {"op-05": "changed"}  # the preview of an attended run
    assert [b["action"] for b in attended["printers"][0]["boards"]] == ["planned"]


def test_plan_diff_shows_the_config_files_it_would_write(farm: RunningFarm) -> None:
    done = ratos_fleet("plan", str(farm.inventory), "--diff", "--limit", "op-01")
    assert done.returncode == 3, done.stderr
    assert "Will modify RatOS.cfg" in done.stdout or "Will create RatOS.cfg" in done.stdout, done.stdout
    assert "+++ " in done.stdout and "@@" in done.stdout


def test_sigint_while_a_printer_prepares_finishes_it_and_starts_no_other(farm: RunningFarm, tmp_path: Path) -> None:
    code, output, report = interrupted_update(farm, tmp_path, "[op-01] Bring the fleet's Klipper commit: started")
    assert code == 130, output
    assert statuses(report) == {"op-01": "changed", "op-02": "not-run", "op-03": "not-run", "op-04": "not-run",
                                "op-05": "not-run"}
    assert report["interrupted"]["signal"] == "SIGINT" and report["exit_code"] == 130
    assert {a["host"] for a in report["attention"]} == {"op-02", "op-03", "op-04", "op-05"}
    assert f"ratos-fleet update {farm.inventory} --limit op-02" in output


def test_sigterm_during_the_flash_lets_the_transaction_finish_every_board(farm: RunningFarm, tmp_path: Path) -> None:
    code, output, report = interrupted_update(farm, tmp_path, "[op-02] Update Klipper and flash the boards: started",
                                              signal.SIGTERM)
    assert code == 130, output
    found = statuses(report)
    assert found["op-02"] == "changed" and found["op-03"] == "not-run" and found["op-04"] == "not-run"
    target = farm.info["versions"]["current"]["version"]
    op02 = next(p for p in report["printers"] if p["host"] == "op-02")
    assert [b["after_version"] for b in op02["boards"]] == [target, target]  # never half flashed
    assert "INTERRUPTED (SIGTERM)" in output


def test_sigint_between_printers_then_a_rerun_converges(farm: RunningFarm, tmp_path: Path) -> None:
    # a window of 1 (--batch-size, its former name): the signal as the first printer finishes
    code, output, report = interrupted_update(farm, tmp_path / "r1", "-- [1/5]")
    assert code == 130, output
    assert len(report["printers"]) == 5 and report["printers"][-1]["status"] == "not-run"
    assert all(p["status"] in ("converged", "changed", "not-run") for p in report["printers"])
    again = ratos_fleet("update", str(farm.inventory), "--batch-size", "1", "--report", str(tmp_path / "r2"))
    assert again.returncode == 3, again.stdout + again.stderr  # op-04 prints, op-05 held: pending, not failed
    final = json.loads((tmp_path / "r2/report.json").read_text())
    assert (statuses(final)["op-04"], statuses(final)["op-05"]) == ("busy", "held")
    assert all(s in ("converged", "changed") for h, s in statuses(final).items() if h not in ("op-04", "op-05"))
    status = ratos_fleet("status", str(farm.inventory), "--limit", "op-0[123]")
    assert status.returncode == 0, status.stdout + status.stderr


def test_an_exit_code_per_outcome(farm: RunningFarm, tmp_path: Path) -> None:
    # runs after the updates above: op-01..03 converged, op-04 printing
    converged = ratos_fleet("update", str(farm.inventory), "--limit", "op-01", "--report", str(tmp_path / "a"))
    assert converged.returncode == 0, converged.stdout + converged.stderr
    busy = ratos_fleet("update", str(farm.inventory), "--limit", "op-04", "--report", str(tmp_path / "b"))
    assert busy.returncode == 3 and "when the printer is idle" in busy.stdout
    fatal = ratos_fleet("update", str(farm.inventory), "--limit", "op-04", "--fail-on-busy",
                        "--report", str(tmp_path / "c"))
    assert fatal.returncode == 1
    bad = ratos_fleet("update", str(farm.inventory), "--batch-size", "0")
    assert bad.returncode == 2
    plan = ratos_fleet("plan", str(farm.inventory), "--limit", "op-0[123]")
    assert plan.returncode == 0, plan.stdout + plan.stderr


def test_an_attended_flash_names_the_board_before_dfu_and_then_converges(farm: RunningFarm, tmp_path: Path) -> None:
    done = ratos_fleet("update", str(farm.inventory), "--limit", "op-05", "--attended-flash", "--yes",
                       "--report", str(tmp_path))
    assert done.returncode == 3, done.stdout + done.stderr  # changes made
    assert "op-05: mcu (btt-octopus-pro-h723, port 1-1.1)" in done.stderr  # named before the batch runs
    announced = done.stdout.index("[op-05] ENTERING DFU NOW (attended flash): mcu (btt-octopus-pro-h723")
    # the agent's phases arrive as they happen, the write with its bytes and percent
    entering = done.stdout.index("[op-05] flash mcu (btt-octopus-pro-h723): entering DFU on USB port 1-1.1")
    written = done.stdout.index("[op-05] flash mcu (btt-octopus-pro-h723): write 100% (")
    verify = done.stdout.index("[op-05] verify: klippy as ready as before, every flashed MCU on its new version")
    assert announced < entering < written < verify < done.stdout.index("[op-05] Update Klipper and flash the boards: done")
    percent_lines = [line for line in done.stdout.splitlines() if "[op-05] flash mcu" in line and "% (" in line]
    assert 1 <= len(percent_lines) <= 11, percent_lines
    status = ratos_fleet("status", str(farm.inventory), "--limit", "op-05")
    assert status.returncode == 0, status.stdout


def test_the_demo_fits_120_columns(tmp_path: Path) -> None:
    done = subprocess.run([str(VENV_BIN / "ratos-fleet"), "demo"], capture_output=True, text=True, timeout=900,
                          check=False, env={"COLUMNS": "120", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    wide = [line for line in (done.stdout + done.stderr).splitlines() if len(line) > 120]
    assert wide == []
    assert "behind the pin: vcore-01, vcore-02, vcore-03, vminion-01, vminion-02" in done.stdout


def test_a_second_sigint_stops_at_once_and_still_writes_the_report(farm: RunningFarm, tmp_path: Path) -> None:
    farm.ssh("op-04", "sudo ratos-sim-knob print=stop")  # the printing printer finished its job
    argv = [str(VENV_BIN / "ratos-fleet"), "update", str(farm.inventory), "--limit", "op-04", "--report",
            str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    output = []
    for line in proc.stdout:
        output.append(line)
        if "[op-04] Update Klipper and flash the boards: started" in line:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=300)
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 130 and "Traceback" not in err, "".join(output) + err
    report = json.loads((tmp_path / "report.json").read_text())
    entry = report["printers"][0]
    assert entry["status"] == "failed" and "stopped at once" in entry["reason"], entry
    assert report["interrupted"] is not None and report["exit_code"] == 130
