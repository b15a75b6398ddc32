"""Katapult over USB on the virtual farm: `ratos-fleet update` through the emulated Katapult, real SSH."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinfra_ratos.sim import farm as sim_farm

from .conftest import VENV_BIN, RunningFarm, start_farm

SCENARIO = Path(__file__).parent / "scenarios" / "katapult-lab.toml"
FAULTY = {"kat-xfer", "kat-start", "kat-gone", "kat-deaf"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    state = tmp_path_factory.mktemp("farm-katapult")
    running = start_farm(SCENARIO, state)
    try:
        yield running
    finally:
        sim_farm.down(state)


@pytest.fixture(scope="module")
def first_update(lab: RunningFarm, tmp_path_factory: pytest.TempPathFactory) -> dict:
    report = tmp_path_factory.mktemp("katapult-report")
    pids = {pi["name"]: klippy_pid(lab, pi["name"]) for pi in lab.info["pis"]}
    result = update(lab, report)
    assert result.returncode == 1, result.stderr  # the faulty Pis failed
    printers = {p["host"]: p for p in json.loads((report / "report.json").read_text())["printers"]}
    for name, entry in printers.items():  # Klipper was stopped for the flash and runs again, everywhere
        entry["klipper_restarted"] = klippy_pid(lab, name) not in (pids[name], 0, None)
    return printers


def update(lab: RunningFarm, report: Path, *limit: str) -> subprocess.CompletedProcess[str]:
    args = [str(VENV_BIN / "ratos-fleet"), "update", str(lab.inventory), "--max-failed", "1", "--report", str(report)]
    for name in limit:
        args += ["--limit", name]
    return subprocess.run(args, capture_output=True, text=True, timeout=900)


def usb_dir(lab: RunningFarm, pi: str) -> Path:
    return lab.upper(pi) / "var/lib/ratos-sim/usb"


def events(lab: RunningFarm, pi: str) -> list[dict]:
    path = usb_dir(lab, pi) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def flashed(lab: RunningFarm, pi: str, address: int, length: int) -> bytes:
    data = (usb_dir(lab, pi) / "1-1.1" / "flash.bin").read_bytes()
    return data[address - 0x08000000:address - 0x08000000 + length]


def klippy_pid(lab: RunningFarm, pi: str) -> int:
    return json.loads((lab.upper(pi) / "var/lib/ratos-sim/state.json").read_text())["klippy_pid"]


def current(lab: RunningFarm) -> str:
    return lab.info["versions"]["current"]["version"]


def test_a_katapult_board_converges_through_katapult_and_the_rerun_is_a_no_op(lab: RunningFarm, first_update: dict,
                                                                            tmp_path: Path) -> None:
    entry = first_update["kat-ok"]
    assert entry["status"] == "changed" and entry["klipper_restarted"], entry
    board = entry["boards"][0]
    assert (board["method"], board["after_version"], board["read_back"]) == ("katapult", current(lab), True)
    seen = [e["event"] for e in events(lab, "kat-ok")]
    assert "bootloader-request" in seen and "katapult-connect" in seen and "katapult-complete" in seen
    pid = klippy_pid(lab, "kat-ok")
    again = update(lab, tmp_path, "kat-ok")
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = {p["host"]: p for p in json.loads((tmp_path / "report.json").read_text())["printers"]}["kat-ok"]
    assert rerun["status"] == "converged", rerun
    assert klippy_pid(lab, "kat-ok") == pid  # nothing was restarted


def test_the_flashed_bytes_are_the_artifact(lab: RunningFarm, first_update: dict) -> None:
    shipped = sorted((lab.state / "pis" / "kat-ok" / "home/pi/printer_data/firmware").glob("*/klipper.bin"))
    assert len(shipped) == 1, shipped  # the one artifact shipped for the one board
    data = shipped[0].read_bytes()
    assert first_update["kat-ok"]["boards"][0]["after_version"] in shipped[0].parent.name
    assert flashed(lab, "kat-ok", 0x08020000, len(data)) == data


def test_a_transfer_error_rolls_back_and_the_rerun_converges(lab: RunningFarm, first_update: dict,
                                                             tmp_path: Path) -> None:
    entry = first_update["kat-xfer"]
    board = entry["boards"][0]
    assert entry["status"] == "failed" and board["action"] == "failed", entry
    assert "block 5 of the image" in board["reason"] and board["rolled_back"] is True, board
    assert entry["klipper_restarted"] and board["after_version"] == board["before_version"]
    assert "rolled back to the previous Klipper and firmware" in entry["reason"]
    assert "katapult-transfer-error" in [e["event"] for e in events(lab, "kat-xfer")]
    again = update(lab, tmp_path, "kat-xfer")
    assert again.returncode == 3, again.stdout + again.stderr  # no failure, changes made
    rerun = {p["host"]: p for p in json.loads((tmp_path / "report.json").read_text())["printers"]}["kat-xfer"]
    assert rerun["status"] == "changed" and rerun["boards"][0]["after_version"] == current(lab), rerun


def test_a_wrong_start_address_is_refused_before_any_write(lab: RunningFarm, first_update: dict) -> None:
    entry = first_update["kat-start"]
    board = entry["boards"][0]
    assert entry["status"] == "failed", entry
    assert "starts applications at 0x08008000, the image is linked for 0x08002000" in board["reason"], board
    assert "refused before writing anything; the board was sent back to its firmware" in board["reason"]
    seen = [e["event"] for e in events(lab, "kat-start")]
    assert "katapult-connect" in seen and not any(e.startswith(("katapult-erase", "katapult-eof")) for e in seen)
    assert entry["klipper_restarted"] and board["after_version"] == board["before_version"]


def test_a_board_that_never_comes_back_needs_attention_and_is_named(lab: RunningFarm, first_update: dict) -> None:
    entry = first_update["kat-gone"]
    board = entry["boards"][0]
    assert entry["status"] == "failed", entry
    assert "did not come back as Klipper" in board["reason"], board
    assert "NEEDS ATTENTION" in entry["reason"] and "is not on USB" in entry["reason"], entry
    assert entry["klipper_restarted"]


def test_an_ignored_request_fails_with_klipper_running_the_old_firmware(lab: RunningFarm, first_update: dict) -> None:
    entry = first_update["kat-deaf"]
    board = entry["boards"][0]
    assert entry["status"] == "failed", entry
    assert "did not enter Katapult" in board["reason"] and "bootloader request was ignored" in board["reason"]
    assert entry["klipper_restarted"] and board["after_version"] == board["before_version"]
