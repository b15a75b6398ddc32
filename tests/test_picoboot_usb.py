"""The PICOBOOT client over real pyusb/libusb against the farm's emulated RP2040 in BOOTSEL (umockdev):
the flash holds the UF2's pages, the board reboots into the new Klipper, and each fault knob fails
as it should with the board's state known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.firmware.picoboot.protocol import image_of, uf2_pages
from pyinfra_ratos.sim import usb
from pyinfra_ratos.sim.klipper_repo import build_firmware, create_template_repo

from test_dfu_client import Bus, bus, needs_emulator  # noqa: F401 - the emulated bus fixture

PICO = load_catalog()["rpi-pico"]


@pytest.fixture(scope="module")
def uf2(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes, str]:
    root = tmp_path_factory.mktemp("pico")
    version = create_template_repo(root / "klipper")["current"]["version"]
    out = build_firmware(root / "klipper", "HEAD", PICO.kconfig, root / "work")
    return str(out / "klipper.uf2"), (out / "klipper.uf2").read_bytes(), version


def bootsel(port: str, faults: list[str] = ()) -> dict[str, Any]:
    return {"port": port, "board": "rpi-pico", "mcu": "rp2040", "mode": "rp2040-boot", "app_address": hex(PICO.app_address),
            "serial": "E66138935F4B2C28", "image": None, "bootloader": "", "faults": list(faults), "mcu_name": None}


def picoboot(running: Bus, *argv: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run([sys.executable, "-m", "pyinfra_ratos.firmware.picoboot", *argv],
                          env=usb.client_env(running.bus_dir), capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else {}, done.stderr


@needs_emulator
def test_a_bootsel_pico_is_flashed_read_back_and_boots_the_new_klipper(bus, uf2) -> None:
    path, data, version = uf2
    running = bus(bootsel("1-1.3"))
    status, answer, err = picoboot(running, "flash", "--port", "1-1.3", "--image", path)
    assert status == 0 and answer["ok"] and answer["read_back_ok"], (answer, err)
    first, flat = image_of(uf2_pages(data))
    assert running.flash("1-1.3")[:len(flat)] == flat  # the emulator's flash holds the artifact's bytes
    assert usb.wait_for_mode(running.state_dir, "1-1.3", "klipper")["version"] == version


@needs_emulator
def test_a_transfer_error_in_block_n_fails_and_leaves_the_board_in_bootsel(bus, uf2) -> None:
    path, _, _ = uf2
    running = bus(bootsel("1-1.3", ["transfer-error-block-5"]))
    status, answer, _ = picoboot(running, "flash", "--port", "1-1.3", "--image", path)
    assert status == 1 and answer["failure"] == "transfer" and "WRITE at 0x10000400" in answer["error"]
    assert running.mode("1-1.3") == "rp2040-boot"


@needs_emulator
def test_a_board_that_never_returns_after_the_reboot_is_gone_from_usb(bus, uf2) -> None:
    path, _, _ = uf2
    running = bus(bootsel("1-1.3", ["no-return-after-leave"]))
    status, answer, _ = picoboot(running, "flash", "--port", "1-1.3", "--image", path)
    assert status == 0 and answer["read_back_ok"]  # written and read back right: the reboot is what fails
    usb.wait_for_mode(running.state_dir, "1-1.3", "absent")


@needs_emulator
def test_what_a_board_ran_is_read_until_erased_and_written_back_as_a_flat_image(bus, uf2, tmp_path: Path) -> None:
    path, data, version = uf2
    running = bus(bootsel("1-1.3"))
    assert picoboot(running, "flash", "--port", "1-1.3", "--image", path, "--no-reboot")[0] == 0
    kept = tmp_path / "kept.bin"
    status, answer, err = picoboot(running, "read", "--port", "1-1.3", "--length", str(2 * 1024 * 1024),
                                   "--out", str(kept), "--until-erased")
    _first, flat = image_of(uf2_pages(data))
    assert status == 0 and answer["length"] == 64 * 1024, (answer, err)  # stopped at the first erased 64 KiB
    assert kept.read_bytes()[:len(flat)] == flat
    (tmp_path / "other.bin").write_bytes(b"\0" * 4096)  # something else written over it
    assert picoboot(running, "flash", "--port", "1-1.3", "--image", str(tmp_path / "other.bin"), "--no-reboot")[0] == 0
    status, answer, err = picoboot(running, "flash", "--port", "1-1.3", "--image", str(kept))  # the rollback
    assert status == 0 and answer["read_back_ok"], (answer, err)
    assert running.flash("1-1.3")[:len(flat)] == flat
    assert usb.wait_for_mode(running.state_dir, "1-1.3", "klipper")["version"] == version
