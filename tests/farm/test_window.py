"""The rolling window of ``ratos-fleet update`` on the virtual farm (issue 20): the canary group
first and alone, then N printers in flight refilled in inventory order as each one finishes, and a
SIGINT with printers in flight lets every one of them finish and starts no other."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinfra_ratos.sim import farm as sim_farm

from .conftest import VENV_BIN, RunningFarm, start_farm

CANARIES = ("win-c1", "win-c2")
PRODUCTION = tuple(f"win-p{i}" for i in range(1, 7))


def scenario() -> str:
    pis = []
    for name in CANARIES + PRODUCTION:
        group = "canary" if name in CANARIES else "production"
        pis.append(f'[[pi]]\nname = "{name}"\ngroup = "{group}"\ncheckout = "old"\n'
                   f'[[pi.boards]]\nboard = "btt-octopus-pro-446"\nfirmware = "old"\n')
    return "\n".join(pis)


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    base = tmp_path_factory.mktemp("farm-window")
    (base / "window.toml").write_text(scenario())
    running = start_farm(base / "window.toml", base / "state")
    try:
        yield running
    finally:
        sim_farm.down(base / "state")


def statuses(report: dict) -> dict[str, str]:
    return {p["host"]: p["status"] for p in report["printers"]}


def test_sigint_with_printers_in_flight_finishes_them_and_starts_no_other(farm: RunningFarm, tmp_path: Path) -> None:
    """A window of 3 after the canaries: the signal comes as the first production printer starts
    its work, when the window has started three printers (it fills without yielding)."""
    argv = [str(VENV_BIN / "ratos-fleet"), "update", str(farm.inventory), "--max-in-flight", "3",
            "--report", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines, sent = [], False
    for line in proc.stdout:
        lines.append(line)
        if not sent and line.startswith("[win-p1] ") and "started" in line:
            proc.send_signal(signal.SIGINT)
            sent = True
    code = proc.wait(timeout=600)
    err = proc.stderr.read() if proc.stderr else ""
    output = "".join(lines) + err
    assert sent and code == 130 and "Traceback" not in err, output
    report = json.loads((tmp_path / "report.json").read_text())
    in_flight = {"win-p1", "win-p2", "win-p3"}
    assert set(report["window"]["printers"]) == {*CANARIES, *in_flight}  # started: the canaries and a full window
    assert report["window"]["peak_in_flight"] == 3
    found = statuses(report)
    assert all(found[name] == "changed" for name in (*CANARIES, *in_flight)), found  # finished, never abandoned
    assert all(found[name] == "not-run" for name in PRODUCTION[3:]), found
    assert report["interrupted"]["signal"] == "SIGINT" and report["exit_code"] == 130
    assert "INTERRUPTED (SIGINT)" in output
    assert f"ratos-fleet update {farm.inventory} --limit win-p4" in output


def test_the_canaries_run_alone_first_then_the_window_refills_in_inventory_order(farm: RunningFarm,
                                                                                  tmp_path: Path) -> None:
    done = subprocess.run([str(VENV_BIN / "ratos-fleet"), "update", str(farm.inventory), "--max-in-flight", "2",
                           "--report", str(tmp_path)], capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 3, done.stdout + done.stderr  # changes made: the printers the signal left
    report = json.loads((tmp_path / "report.json").read_text())
    slots = report["window"]["printers"]
    assert report["window"]["canary"] == list(CANARIES)
    # the canary group alone: every other printer starts after the last canary ended
    last_canary = max(slots[name]["end_s"] for name in CANARIES)
    assert all(slots[name]["start_s"] >= last_canary for name in PRODUCTION)
    assert all(slots[name]["batch"] == 1 for name in CANARIES) and all(slots[n]["batch"] == 2 for n in PRODUCTION)
    # the window: printers start in inventory order, never more than 2 in flight, and each one after
    # the first two starts only once an earlier one has finished (a refill, not a batch)
    order = sorted(PRODUCTION, key=lambda name: slots[name]["start_s"])
    assert order == list(PRODUCTION)
    assert report["window"]["peak_in_flight"] == 2 and all(slots[n]["in_flight"] <= 2 for n in PRODUCTION)
    for index, name in enumerate(PRODUCTION[2:], start=2):
        ended = sorted(slots[earlier]["end_s"] for earlier in PRODUCTION[:index])
        assert slots[name]["start_s"] >= ended[index - 2], (name, slots)
    assert all(status in ("changed", "converged") for status in statuses(report).values())
    assert "-- batch 1/2 (canary): 2 printers" in done.stdout
    assert "2/2 in flight" in done.stdout or "1/2 in flight" in done.stdout
