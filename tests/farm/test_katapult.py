"""Katapult over USB on the virtual farm: `ratos-fleet update` through the emulated Katapult, real SSH."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import RunningFarm, running_farm

SCENARIO = Path(__file__).parent / "scenarios" / "katapult-lab.toml"
FAULTY = {"kat-xfer", "kat-start", "kat-gone", "kat-deaf"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIO, "farm-katapult") as running:
        yield running


@pytest.fixture(scope="module")
def first_update(lab: RunningFarm, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return lab.first_update(tmp_path_factory.mktemp("katapult-report"), max_failed="1")


def flashed(lab: RunningFarm, pi: str, address: int, length: int) -> bytes:
    data = (lab.usb_dir(pi) / "1-1.1" / "flash.bin").read_bytes()
    return data[address - 0x08000000:address - 0x08000000 + length]


def test_a_katapult_board_converges_through_katapult_and_the_rerun_is_a_no_op(lab: RunningFarm, first_update: dict,
                                                                            tmp_path: Path) -> None:
    entry = first_update["kat-ok"]
    assert entry["status"] == "changed" and entry["klipper_restarted"], entry
    board = entry["boards"][0]
    assert (board["method"], board["after_version"], board["read_back"]) == ("katapult", lab.version("current"), True)
    seen = [e["event"] for e in lab.usb_events("kat-ok")]
    assert "bootloader-request" in seen and "katapult-connect" in seen and "katapult-complete" in seen
    pid = lab.klippy_pid("kat-ok")
    again = lab.update(tmp_path, "kat-ok", max_failed="1")
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = {p["host"]: p for p in json.loads((tmp_path / "report.json").read_text())["printers"]}["kat-ok"]
    assert rerun["status"] == "converged", rerun
    assert lab.klippy_pid("kat-ok") == pid  # nothing was restarted


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
    assert "katapult-transfer-error" in [e["event"] for e in lab.usb_events("kat-xfer")]
    again = lab.update(tmp_path, "kat-xfer", max_failed="1")
    assert again.returncode == 3, again.stdout + again.stderr  # no failure, changes made
    rerun = {p["host"]: p for p in json.loads((tmp_path / "report.json").read_text())["printers"]}["kat-xfer"]
    assert rerun["status"] == "changed" and rerun["boards"][0]["after_version"] == lab.version("current"), rerun


def test_a_wrong_start_address_is_refused_before_any_write(lab: RunningFarm, first_update: dict) -> None:
    entry = first_update["kat-start"]
    board = entry["boards"][0]
    assert entry["status"] == "failed", entry
    assert "starts applications at 0x08008000, the image is linked for 0x08002000" in board["reason"], board
    assert "refused before writing anything; the board was sent back to its firmware" in board["reason"]
    seen = [e["event"] for e in lab.usb_events("kat-start")]
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
