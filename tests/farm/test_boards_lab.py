"""Issue 18's acceptance on the virtual farm, real SSH: a Katapult USB board, RP2040 boards over
PICOBOOT and the Linux host MCU on armhf and aarch64 Pis converge in one ``ratos-fleet update``; the
bytes each board holds are the artifact's; the re-run is a no-op; each PICOBOOT fault knob ends as
failed with Klipper restarted and the board's state named."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinfra_ratos.firmware.arch import ARCHES
from pyinfra_ratos.firmware.image import elf_header
from pyinfra_ratos.firmware.picoboot.protocol import FLASH_START, image_of, uf2_pages

from .conftest import RunningFarm, running_farm
from .test_katapult import flashed

SCENARIO = Path(__file__).parent / "scenarios" / "boards-lab.toml"
CONVERGING = {"mix-armhf": "armhf", "mix-arm64": "aarch64"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIO, "farm-boards") as running:
        yield running


@pytest.fixture(scope="module")
def first_update(lab: RunningFarm, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return lab.first_update(tmp_path_factory.mktemp("boards-report"), max_failed="1")


def artifact(lab: RunningFarm, pi: str, name: str) -> bytes:
    (path,) = sorted((lab.state / "pis" / pi / "home/pi/printer_data/firmware").glob(f"*/{name}"))
    return path.read_bytes()


def pico_flash(lab: RunningFarm, pi: str, port: str = "1-1.1") -> bytes:
    return (lab.usb_dir(pi) / port / "flash.bin").read_bytes()


def test_every_kind_of_board_converges_in_one_update_with_the_artifacts_bytes(lab: RunningFarm,
                                                                              first_update: dict) -> None:
    for pi, arch in CONVERGING.items():
        entry = first_update[pi]
        assert entry["status"] == "changed" and entry["klipper_restarted"], entry
        methods = {b["mcu_name"]: (b["method"], b["after_version"]) for b in entry["boards"]}
        assert methods["rpi"] == ("linux", lab.version("current")), entry
        binary = (lab.upper(pi) / "usr/local/bin/klipper_mcu").read_bytes()
        assert elf_header(binary)[:2] == (ARCHES[arch].elf_machine, ARCHES[arch].elf_class), pi
    assert {b["mcu_name"]: b["method"] for b in first_update["mix-armhf"]["boards"]}["mcu"] == "katapult"
    image = artifact(lab, "mix-armhf", "klipper.bin")
    assert flashed(lab, "mix-armhf", 0x08020000, len(image)) == image
    pico = {b["mcu_name"]: b for b in first_update["mix-arm64"]["boards"]}["mcu"]
    assert (pico["method"], pico["after_version"], pico["read_back"]) == ("rp2040", lab.version("current"), True), pico
    first, flat = image_of(uf2_pages(artifact(lab, "mix-arm64", "klipper.uf2")))
    assert first == FLASH_START and pico_flash(lab, "mix-arm64")[:len(flat)] == flat
    seen = [e["event"] for e in lab.usb_events("mix-arm64")]
    assert "bootloader-request" in seen and "picoboot-reboot" in seen


def test_the_rerun_is_a_no_op(lab: RunningFarm, first_update: dict, tmp_path: Path) -> None:
    pids = {pi: lab.klippy_pid(pi) for pi in CONVERGING}
    again = lab.update(tmp_path, *CONVERGING, max_failed="1")
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = {p["host"]: p for p in json.loads((tmp_path / "report.json").read_text())["printers"]}
    assert {pi: rerun[pi]["status"] for pi in CONVERGING} == dict.fromkeys(CONVERGING, "converged")
    assert {pi: lab.klippy_pid(pi) for pi in CONVERGING} == pids  # nothing was restarted


def test_a_picoboot_transfer_error_rolls_back_and_the_mended_board_converges(lab: RunningFarm, first_update: dict,
                                                                              tmp_path: Path) -> None:
    entry = first_update["pico-xfer"]
    board = entry["boards"][0]
    assert entry["status"] == "failed" and board["rolled_back"] is True, entry
    assert "WRITE at 0x10000400" in board["reason"], board
    assert entry["klipper_restarted"] and board["after_version"] == board["before_version"]
    lab.ssh("pico-xfer", "sudo truncate -s 0 /var/lib/ratos-sim/usb/1-1.1/faults || "  # the board is mended
                         "sudo touch /var/lib/ratos-sim/usb/1-1.1/faults")
    again = lab.update(tmp_path, "pico-xfer", max_failed="1")
    assert again.returncode == 3, again.stdout + again.stderr  # no failure, changes made
    rerun = {p["host"]: p for p in json.loads((tmp_path / "report.json").read_text())["printers"]}["pico-xfer"]
    assert rerun["status"] == "changed" and rerun["boards"][0]["after_version"] == lab.version("current"), rerun


def test_a_pico_that_never_returns_after_the_reboot_needs_attention_and_is_named(lab: RunningFarm,
                                                                                  first_update: dict) -> None:
    entry = first_update["pico-gone"]
    board = entry["boards"][0]
    assert entry["status"] == "failed", entry
    assert "did not come back as Klipper" in board["reason"], board
    assert "NEEDS ATTENTION" in entry["reason"] and "is not on USB" in entry["reason"], entry
    assert entry["klipper_restarted"]


def test_an_ignored_bootsel_request_fails_with_klipper_running_the_old_firmware(lab: RunningFarm,
                                                                                first_update: dict) -> None:
    entry = first_update["pico-deaf"]
    board = entry["boards"][0]
    assert entry["status"] == "failed", entry
    assert "did not enter BOOTSEL" in board["reason"] and "bootloader request was ignored" in board["reason"]
    assert entry["klipper_restarted"] and board["after_version"] == board["before_version"]
