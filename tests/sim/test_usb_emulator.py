"""The USB board emulator seen through the real lsusb, dfu-util, pyusb and a 1200-baud request."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pyinfra_ratos.sim import pistate, usb

H723_APP = 0x08020000
H723_UID = "29001A001151313531383332"
DFU = "0483:df11"

pytestmark = pytest.mark.skipif(
    not (shutil.which("umockdev-wrapper") and shutil.which("dfu-util") and shutil.which("lsusb")),
    reason="needs umockdev, dfu-util and usbutils",
)


def klipper_bin(version: str, mcu: str, app: int) -> bytes:
    """A minimal image following the fake firmware contract (vectors, filler, zlib dictionary)."""
    dictionary = {"app": "Klipper", "build_versions": "gcc: (test) 12.2.1 binutils: (test) 2.40",
                  "commands": {}, "config": {"MCU": mcu, "CLOCK_FREQ": 400000000},
                  "enumerations": {}, "license": "GNU GPLv3", "responses": {}, "version": version}
    filler, block = b"", hashlib.sha256(f"{version}{mcu}".encode()).digest()
    while len(filler) < 16384:
        block = hashlib.sha256(block).digest()
        filler += block
    body = struct.pack("<II", 0x20020000, app + 0x101) + filler
    body += zlib.compress(json.dumps(dictionary, sort_keys=True, separators=(",", ":")).encode(), 9)
    return body + bytes(-len(body) % 8)


def h723(port: str, mode: str, serial: str, image: str | None, mcu_name: str, faults: list[str]) -> dict:
    return {"port": port, "board": "btt-octopus-pro-h723-11", "mcu": "stm32h723xx", "mode": mode,
            "serial": serial, "app_address": hex(H723_APP), "image": image, "bootloader": "BTT-BL",
            "faults": faults, "mcu_name": mcu_name}


@dataclass
class Pi:
    root: str
    state_dir: str
    bus_dir: str
    pistate: str
    pid_file: str

    @property
    def env(self) -> dict[str, str]:
        return usb.client_env(self.bus_dir)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60, cwd=self.root)

    def dfu_util(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.run("dfu-util", *argv)

    def mcu(self, name: str) -> dict:
        return next(m for m in pistate.load(self.pistate)["mcus"] if m["name"] == name)

    def flash(self, port: str, address: int, length: int) -> bytes:
        with open(os.path.join(self.state_dir, port, "flash.bin"), "rb") as handle:
            handle.seek(address - 0x08000000)
            return handle.read(length)


@pytest.fixture
def images(tmp_path) -> dict[str, str]:
    paths = {}
    for name, version in (("old", "v0.12.0-0-g0d67d9c45"), ("new", "v0.13.0-3-g1a2b3c4d5")):
        paths[name] = str(tmp_path / f"{name}.bin")
        with open(paths[name], "wb") as handle:
            handle.write(klipper_bin(version, "stm32h723xx", H723_APP))
    return paths


@pytest.fixture
def farm(tmp_path) -> Iterator:
    started: list[Pi] = []

    def start(boards: list[dict]) -> Pi:
        # the bus dir must be short: umockdev's unix sockets live under it
        root = tempfile.mkdtemp(prefix="usb", dir="/tmp")
        pi = Pi(root, os.path.join(root, "state"), root + ".bus",
                os.path.join(root, "state.json"), os.path.join(root, "emu.pid"))
        pistate.save({"mcus": [{"name": b["mcu_name"], "board": b["board"], "port": b["port"],
                                "present": False, "firmware": None} for b in boards]}, pi.pistate)
        spec = os.path.join(root, "boards.json")
        with open(spec, "w") as handle:
            json.dump({"boards": boards}, handle)
        began = time.monotonic()
        usb.start(spec, pi.state_dir, pi.bus_dir, pi.pid_file, pi.pistate)
        print(f"emulator up in {time.monotonic() - began:.2f} s")
        started.append(pi)
        return pi

    yield start
    for pi in started:
        usb.stop(pi.pid_file)
        assert not os.path.exists(pi.bus_dir), "SIGTERM leaves no bus behind"
        shutil.rmtree(pi.root, ignore_errors=True)


def lsusb_boards(pi: Pi) -> list[str]:
    """`lsusb` lines of the boards (the Pi's hubs are listed too, as on hardware)."""
    lines = pi.run("lsusb").stdout.splitlines()
    return sorted(line.split(": ", 1)[1] for line in lines if "1d6b:" not in line and "2109:3431" not in line)


def test_lsusb_and_pyusb_see_exactly_the_boards(farm, images):
    pi = farm([h723("1-1.3", "klipper", H723_UID, images["old"], "mcu", []),
               h723("1-1.4", "dfu", "29001A001151313531383333", None, "toolboard", [])])
    assert lsusb_boards(pi) == ["ID 0483:df11 STMicroelectronics STM32  BOOTLOADER",
                                "ID 1d50:614e Klipper stm32h723xx"]
    verbose = pi.run("lsusb", "-v", "-d", DFU).stdout
    assert "bcdDFUVersion                   1.1a" in verbose
    assert "wTransferSize                    1024 bytes" in verbose
    assert "@Internal Flash   /0x08000000/8*128Kg" in verbose
    assert f"iSerial                 3 {H723_UID}" in pi.run("lsusb", "-v", "-d", "1d50:614e").stdout
    script = ("import usb.core, usb.util\n"
              "for d in usb.core.find(find_all=True):\n"
              "    print(f'{d.idVendor:04x}:{d.idProduct:04x}', d.bus, d.port_numbers,"
              " usb.util.get_string(d, d.iSerialNumber))\n")
    seen = pi.run(sys.executable, "-c", script).stdout.splitlines()
    assert f"1d50:614e 1 (1, 3) {H723_UID}" in seen
    assert any(line.startswith("0483:df11 1 (1, 4) ") for line in seen)
    # the Klipper board has its tty and the udev links
    by_id = f"/dev/serial/by-id/usb-Klipper_stm32h723xx_{H723_UID}-if00"
    links = pi.run("ls", "-l", by_id, "/dev/serial/by-path/").stdout
    assert "-> ../../ttyACM0" in links and "usb-0:1.3:1.0 -> ../../ttyACM0" in links
    sysfs = pi.run("cat", "/sys/bus/usb/devices/1-1.3/idVendor", "/sys/bus/usb/devices/1-1.3/serial",
                   "/sys/bus/usb/devices/1-1.4:1.0/interface").stdout
    assert sysfs == f"1d50\n{H723_UID}\n@Internal Flash   /0x08000000/8*128Kg\n"
    assert pi.mcu("mcu")["present"] is True
    assert pi.mcu("mcu")["firmware"]["version"] == "v0.12.0-0-g0d67d9c45"


def test_dfu_util_flashes_byte_identically_and_board_returns_as_klipper(farm, images):
    pi = farm([h723("1-1.3", "dfu", H723_UID, images["old"], "mcu", [])])
    began = time.monotonic()
    result = pi.dfu_util("-d", f",{DFU}", "-R", "-a", "0", "-s", f"{H723_APP:#x}:leave", "-D", images["new"])
    print(f"flash took {time.monotonic() - began:.2f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "File downloaded successfully" in result.stdout
    new = open(images["new"], "rb").read()
    assert pi.flash("1-1.3", H723_APP, len(new)) == new
    assert pi.flash("1-1.3", 0x08000000, 6) == b"BTT-BL"  # bootloader sector untouched
    erased = [e["sector"] for e in usb.events(pi.state_dir) if e["event"] == "erase"]
    assert erased == [1]
    entry = usb.wait_for_mode(pi.state_dir, "1-1.3", "klipper")
    assert entry["version"] == "v0.13.0-3-g1a2b3c4d5"
    assert lsusb_boards(pi) == ["ID 1d50:614e Klipper stm32h723xx"]
    assert pi.mcu("mcu")["present"] is True
    assert pi.mcu("mcu")["firmware"]["version"] == "v0.13.0-3-g1a2b3c4d5"


ENTER_BOOTLOADER = """
import fcntl, struct, sys, termios
with open(sys.argv[1], "rb") as f:
    fd = f.fileno()
    fcntl.ioctl(fd, termios.TIOCMBIS, struct.pack("I", termios.TIOCM_DTR))
    t = termios.tcgetattr(fd)
    t[4] = t[5] = termios.B1200
    termios.tcsetattr(fd, termios.TCSANOW, t)
    fcntl.ioctl(fd, termios.TIOCMBIC, struct.pack("I", termios.TIOCM_DTR))
"""


def test_1200_baud_request_moves_a_klipper_board_to_dfu_on_the_same_port(farm, images):
    pi = farm([h723("1-1.3", "klipper", H723_UID, images["old"], "mcu", [])])
    before = usb.boards(pi.state_dir)["1-1.3"]["devnum"]
    by_path = "/dev/serial/by-path/platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.3:1.0"
    result = pi.run(sys.executable, "-c", ENTER_BOOTLOADER, by_path)
    assert result.returncode == 0, result.stderr
    entry = usb.wait_for_mode(pi.state_dir, "1-1.3", "dfu")
    assert entry["devnum"] != before
    assert pi.mcu("mcu")["present"] is False
    listing = pi.dfu_util("-l").stdout
    assert 'path="1-1.3"' in listing and "0483:df11" in listing


def test_ignore_bootloader_request_keeps_klipper_running(farm, images):
    pi = farm([h723("1-1.3", "klipper", H723_UID, images["old"], "mcu", ["ignore-bootloader-request"])])
    tty = f"/dev/serial/by-id/usb-Klipper_stm32h723xx_{H723_UID}-if00"
    assert pi.run(sys.executable, "-c", ENTER_BOOTLOADER, tty).returncode == 0
    time.sleep(1.5)
    assert usb.boards(pi.state_dir)["1-1.3"]["mode"] == "klipper"


def flash_new(pi: Pi, image: str, *select: str) -> subprocess.CompletedProcess[str]:
    return pi.dfu_util(*(select or ("-d", f",{DFU}")), "-R", "-a", "0",
                       "-s", f"{H723_APP:#x}:leave", "-D", image)


def test_dfu_exit_74_after_a_complete_flash(farm, images):
    pi = farm([h723("1-1.3", "dfu", H723_UID, None, "mcu", ["dfu-exit-74"])])
    result = flash_new(pi, images["new"])
    assert result.returncode == 74
    assert "File downloaded successfully" in result.stdout
    assert "Error during download get_status" in result.stderr
    assert usb.wait_for_mode(pi.state_dir, "1-1.3", "klipper")["version"] == "v0.13.0-3-g1a2b3c4d5"


def test_dfu_exit_251_when_the_device_vanishes_before_detach(farm, images):
    pi = farm([h723("1-1.3", "dfu", H723_UID, None, "mcu", ["dfu-exit-251"])])
    result = flash_new(pi, images["new"])
    assert result.returncode == 251
    assert "File downloaded successfully" in result.stdout
    assert "can't detach" in result.stderr
    assert usb.wait_for_mode(pi.state_dir, "1-1.3", "klipper")["version"] == "v0.13.0-3-g1a2b3c4d5"


def test_no_reenumerate_leaves_the_port_empty(farm, images):
    pi = farm([h723("1-1.3", "dfu", H723_UID, None, "mcu", ["no-reenumerate"])])
    assert flash_new(pi, images["new"]).returncode == 0
    time.sleep(1.5)
    assert usb.boards(pi.state_dir)["1-1.3"]["mode"] == "absent"
    assert lsusb_boards(pi) == []


def test_stuck_dfu_ignores_leave(farm, images):
    pi = farm([h723("1-1.3", "dfu", H723_UID, None, "mcu", ["stuck-dfu"])])
    result = flash_new(pi, images["new"])
    assert "File downloaded successfully" in result.stdout
    time.sleep(1.5)
    assert usb.boards(pi.state_dir)["1-1.3"]["mode"] == "dfu"
    assert pi.mcu("mcu")["present"] is False


def test_blank_flash_does_not_come_back_as_klipper(farm, images, tmp_path):
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(klipper_bin("v0.13.0-3-g1a2b3c4d5", "stm32f446xx", H723_APP))
    pi = farm([h723("1-1.3", "dfu", H723_UID, None, "mcu", [])])
    assert flash_new(pi, str(wrong)).returncode == 0
    assert usb.wait_for_mode(pi.state_dir, "1-1.3", "absent")["devnum"] is None


def test_slow_erase_announces_realistic_poll_timeouts(farm, images):
    pi = farm([h723("1-1.3", "dfu", H723_UID, None, "mcu", ["slow-erase"])])
    began = time.monotonic()
    assert flash_new(pi, images["new"]).returncode == 0
    print(f"slow-erase flash took {time.monotonic() - began:.2f} s")


def test_two_boards_in_dfu_need_a_port(farm, images):
    pi = farm([h723("1-1.3", "dfu", H723_UID, None, "mcu", []),
               h723("1-1.4", "dfu", "29001A001151313531383333", None, "toolboard", [])])
    refused = flash_new(pi, images["new"])
    assert refused.returncode != 0
    assert "More than one DFU capable USB device found!" in refused.stderr
    result = flash_new(pi, images["new"], "-p", "1-1.4")
    assert result.returncode == 0, result.stderr
    assert usb.wait_for_mode(pi.state_dir, "1-1.4", "klipper")["version"] == "v0.13.0-3-g1a2b3c4d5"
    assert usb.boards(pi.state_dir)["1-1.3"]["mode"] == "dfu"
    assert pi.flash("1-1.3", H723_APP, 8) == b"\xff" * 8
