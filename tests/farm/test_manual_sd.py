"""An SD-card-only board on the farm: ``ratos-fleet update`` stages firmware.bin on the Pi, says what
to do, and leaves the printer's Klipper and board exactly as they were (they still match)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


from .conftest import VENV_BIN, RunningFarm, running_farm

SCENARIO = Path(__file__).parent / "scenarios" / "manual-sd-lab.toml"
PI = "sd-skr2"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIO, "farm-manual-sd") as running:
        yield running


def pistate(lab: RunningFarm) -> dict:
    return json.loads((lab.upper(PI) / "var/lib/ratos-sim/state.json").read_text())


def test_the_update_stages_firmware_bin_gives_the_procedure_and_keeps_klipper(lab: RunningFarm, tmp_path: Path) -> None:
    old = lab.info["versions"]["old"]
    head = lab.ssh(PI, "git -C ~/klipper rev-parse HEAD").stdout.strip()
    pid = pistate(lab)["klippy_pid"]
    result = subprocess.run([str(VENV_BIN / "ratos-fleet"), "update", str(lab.inventory), "--report", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "report.json").read_text())
    (printer,) = report["printers"]
    assert printer["status"] == "held", result.stdout + result.stderr  # pending until someone flashes it
    assert "firmware.bin" in printer["reason"] and "SD card" in printer["reason"] and "power" in printer["reason"]
    # Klipper did not move and was not restarted: host and board still speak one protocol
    assert lab.ssh(PI, "git -C ~/klipper rev-parse HEAD").stdout.strip() == head == old["commit"]
    assert pistate(lab)["klippy_pid"] == pid
    # the file is on the Pi under the name the bootloader reads, the bytes of the controller's artifact
    staged = lab.ssh(PI, "ls -d ~/printer_data/firmware/*/firmware.bin").stdout.split()
    assert len(staged) == 1 and staged[0].replace("/home/pi/", "~/") in printer["reason"]
    identity = staged[0].split("/")[-2]
    assert identity.startswith(lab.info["versions"]["current"]["version"] + "-")
    sha = lab.ssh(PI, f"sha256sum {staged[0]}").stdout.split()[0]
    # ready on the controller too: the same bytes in the farm's firmware cache
    controller = lab.state / "firmware-cache" / identity / "firmware.bin"
    assert hashlib.sha256(controller.read_bytes()).hexdigest() == sha
    # the board itself still runs the old build
    (mcu,) = pistate(lab)["mcus"]
    assert mcu["firmware"]["version"] == old["version"]
