"""The pyusb DfuSe client: memory-map planning, protocol errors against the emulator's ROM state
machine in-process, and the real CLI against emulated boards (umockdev, no root needed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pyinfra_ratos.firmware.dfu import PlanRefused, StatusError, TransferFailed, parse_memory_map, sectors_to_erase
from pyinfra_ratos.firmware.dfu.errors import Stalled, TimedOut
from pyinfra_ratos.firmware.dfu.flash import FlashResult, flash_image
from pyinfra_ratos.firmware.dfu.protocol import DfuSe
from pyinfra_ratos.sim import usb
from pyinfra_ratos.sim.usb import dfu as rom
from pyinfra_ratos.sim.usb.firmware import Flash, parse_flash_map

H723_MAP = "@Internal Flash   /0x08000000/8*128Kg"
F446_MAP = "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg"
G0B1_MAP = "@Internal Flash   /0x08000000/256*02Kg"
BASE = 0x08000000
KIB = 1024


def klipper_bin(version: str, mcu: str, app: int, size: int) -> bytes:
    """An image following the fake firmware contract, zero-padded to exactly ``size`` bytes."""
    dictionary = {"app": "Klipper", "build_versions": "gcc: (test) 12.2.1 binutils: (test) 2.40",
                  "commands": {}, "config": {"MCU": mcu, "CLOCK_FREQ": 64000000},
                  "enumerations": {}, "license": "GNU GPLv3", "responses": {}, "version": version}
    filler, block = b"", hashlib.sha256(f"{version}{mcu}".encode()).digest()
    while len(filler) < size // 2:
        block = hashlib.sha256(block).digest()
        filler += block
    body = struct.pack("<II", 0x20020000, app + 0x101) + filler
    body += zlib.compress(json.dumps(dictionary, sort_keys=True, separators=(",", ":")).encode(), 9)
    assert len(body) <= size
    return body + bytes(size - len(body))


# --- the plan: pure -------------------------------------------------------------------------------

def test_f446_map_has_mixed_sector_sizes_and_option_bytes_are_not_erasable() -> None:
    flash = parse_memory_map(F446_MAP)
    assert flash.name == "Internal Flash"
    assert [s.size // KIB for s in flash.sectors] == [16, 16, 16, 16, 64, 128, 128, 128]
    assert (flash.start, flash.end) == (BASE, BASE + 512 * KIB)
    option = parse_memory_map("@Option Bytes  /0x1FFFC000/01*016 e").sectors[0]
    assert (option.address, option.size, option.flags()) == (0x1FFFC000, 16, "r-w")


def test_an_image_erases_exactly_the_sectors_it_covers() -> None:
    f446 = parse_memory_map(F446_MAP)
    covered = sectors_to_erase(f446, 0x08008000, 40 * KIB, 0x08008000, "f446")
    assert [s.address for s in covered] == [0x08008000, 0x0800C000, 0x08010000]
    g0b1 = parse_memory_map(G0B1_MAP)
    assert len(sectors_to_erase(g0b1, 0x08002000, 24 * KIB, 0x08002000, "g0b1")) == 12
    assert [s.address for s in sectors_to_erase(parse_memory_map(H723_MAP), 0x08020000, 1, 0x08020000, "h")] \
        == [0x08020000]


@pytest.mark.parametrize("memory, address, length, protect, named", [
    (H723_MAP, 0x080F8000, 64 * KIB, 0x08020000, "0x08107fff"),         # runs off the end of flash
    (H723_MAP, 0x08000000, 32 * KIB, 0x08020000, "0x08020000"),         # over the bootloader
    (F446_MAP, 0x08009000, 4 * KIB, 0x08008800, "0x08008000"),          # its sector starts below
    ("@Internal Flash /0x08000000/1*128Kg,1*128Ka,6*128Kg", 0x08010000, 128 * KIB, 0x08000000, "0x08020000"),
    (H723_MAP, 0x08020000, 0, 0x08020000, "0x08020000"),                # empty image
])
def test_images_that_cannot_go_there_are_refused_naming_the_address(
        memory: str, address: int, length: int, protect: int, named: str) -> None:
    with pytest.raises(PlanRefused, match=named) as refused:
        sectors_to_erase(parse_memory_map(memory), address, length, protect, "btt-octopus")
    assert str(refused.value).startswith("btt-octopus: ")
    assert refused.value.exit_code == 3


# --- the protocol against the emulator's ROM, in-process ------------------------------------------

class RomTransport:
    """pyusb's ctrl_transfer, answered by the emulator's DfuSe state machine."""

    def __init__(self, machine: rom.DfuSe) -> None:
        self.machine = machine

    def ctrl_transfer(self, request_type: int, request: int, value: int = 0, index: int = 0,
                      data: Any = None, timeout: int | None = None) -> Any:
        try:
            if request_type & 0x80:
                return self.machine.request(request, value, b"", data)[:data]
            payload = bytes(data or b"")
            self.machine.request(request, value, payload, len(payload))
            return len(payload)
        except rom.Stall:
            raise Stalled("stall") from None


def rom_at(tmp_path: Any, memory: str = H723_MAP, image: bytes | None = None) -> tuple[DfuSe, Flash]:
    flash = Flash(str(tmp_path / "flash.bin"), parse_flash_map(memory))
    flash.create(b"BTT-BL", 0x08020000, image)
    machine = rom.DfuSe(flash, 1024, False, lambda *a, **k: None)
    return DfuSe(RomTransport(machine), "btt-octopus-pro-h723-11 on USB port 1-1.3", 1024, sleep=lambda _: None), flash


def test_a_sector_that_does_not_erase_surfaces_as_errprog_naming_board_and_address(tmp_path, monkeypatch) -> None:
    dfuse, flash = rom_at(tmp_path, image=b"\x00" * 4096)
    monkeypatch.setattr(Flash, "erase", lambda self, index: None)  # a worn sector: erase "succeeds"
    result = FlashResult(port="1-1.3", address=0x08020000)
    with pytest.raises(StatusError) as failed:
        flash_image(dfuse, parse_memory_map(H723_MAP), b"\x11" * 4096, 0x08020000, 0x08020000, result)
    assert failed.value.status == "errPROG" and failed.value.address == 0x08020000
    assert str(failed.value).startswith("btt-octopus-pro-h723-11 on USB port 1-1.3: write at 0x08020000")
    assert failed.value.exit_code == 6 and result.read_back_ok is None
    dfuse.ensure_idle()  # the error state was cleared for the next attempt


def test_a_stalled_read_outside_the_map_reports_the_rom_status(tmp_path) -> None:
    dfuse, _ = rom_at(tmp_path)
    with pytest.raises(StatusError, match=r"read-back at 0x08100000 stalled: errADDRESS") as failed:
        dfuse.upload(0x08100000, 16)
    assert failed.value.address == 0x08100000


def test_erasing_a_protected_sector_reports_errtarget(tmp_path) -> None:
    dfuse, _ = rom_at(tmp_path, memory="@Internal Flash /0x08000000/1*128Ka,7*128Kg")
    with pytest.raises(StatusError, match=r"erase of the sector at 0x08000000 failed: errTARGET"):
        dfuse.erase(0x08000000)


def test_a_timeout_is_a_usb_failure(tmp_path) -> None:
    class Silent:
        def ctrl_transfer(self, *args: Any, **kwargs: Any) -> Any:
            raise TimedOut("control request 3 timed out")

    dfuse = DfuSe(Silent(), "board on USB port 1-1.3", 1024)
    with pytest.raises(TransferFailed, match="board on USB port 1-1.3: GETSTATUS failed: .*timed out") as failed:
        flash_image(dfuse, parse_memory_map(H723_MAP), b"\x11" * 16, 0x08020000, 0x08020000,
                    FlashResult())
    assert failed.value.exit_code == 5


def test_read_back_catches_a_flipped_byte_and_does_not_leave(tmp_path) -> None:
    dfuse, _ = rom_at(tmp_path)
    dfuse.transport.machine.corrupt = rom.CorruptWrite()  # type: ignore[attr-defined]
    left = []
    dfuse.leave = left.append  # type: ignore[method-assign]
    result = FlashResult(address=0x08020000)
    image = bytes(range(256)) * 16
    with pytest.raises(Exception, match="read-back differs from the image at 0x08020800"):
        flash_image(dfuse, parse_memory_map(H723_MAP), image, 0x08020000, 0x08020000, result)
    assert (result.read_back_ok, result.mismatch_address, result.mismatched_bytes) == (False, 0x08020800, 1)
    assert left == [] and result.left is None


# --- the CLI against emulated boards (umockdev) ---------------------------------------------------

needs_emulator = pytest.mark.skipif(
    not (shutil.which("umockdev-wrapper") and os.path.exists(usb.PYTHON)),
    reason="needs umockdev and Debian's python3-gi",
)

BOARDS = {  # profile: (mcu, app address, flash map, image size, sectors the image covers)
    "h723": ("stm32h723xx", 0x08020000, H723_MAP, 36 * KIB, [1]),
    "f446": ("stm32f446xx", 0x08008000, F446_MAP, 40 * KIB, [2, 3, 4]),
    "g0b1": ("stm32g0b1xx", 0x08002000, G0B1_MAP, 23 * KIB + 512, list(range(4, 16))),
}


@dataclass
class Bus:
    root: str
    state_dir: str
    bus_dir: str
    pid_file: str

    def dfu(self, *argv: str) -> tuple[int, dict[str, Any], str]:
        """Run ``python -m pyinfra_ratos.firmware.dfu`` on the emulated bus: (status, final JSON line, stderr)."""
        done = subprocess.run([sys.executable, "-m", "pyinfra_ratos.firmware.dfu", *argv], env=usb.client_env(self.bus_dir),
                              capture_output=True, text=True, timeout=120)
        lines = done.stdout.strip().splitlines()
        return done.returncode, json.loads(lines[-1]) if lines else {}, done.stderr

    def flash(self, port: str, length: int | None = None) -> bytes:
        with open(os.path.join(self.state_dir, port, "flash.bin"), "rb") as handle:
            return handle.read() if length is None else handle.read(length)

    def events(self, *kinds: str) -> list[dict[str, Any]]:
        return [e for e in usb.events(self.state_dir) if e["event"] in kinds]

    def mode(self, port: str) -> str:
        return usb.boards(self.state_dir)[port]["mode"]


def board(profile: str, port: str, faults: list[str] = (), flash_map: str | None = None) -> dict[str, Any]:
    mcu, app, memory, _, _ = BOARDS[profile]
    return {"port": port, "board": profile, "mcu": mcu, "mode": "dfu", "app_address": hex(app),
            "serial": hashlib.sha256(port.encode()).hexdigest()[:24].upper(), "dfu_flash_map": flash_map or memory,
            "image": None, "bootloader": f"{profile} bootloader", "faults": list(faults), "mcu_name": None}


@pytest.fixture
def bus() -> Iterator[Any]:
    started: list[Bus] = []

    def start(*boards: dict[str, Any]) -> Bus:
        root = tempfile.mkdtemp(prefix="dfu", dir="/tmp")  # short: umockdev's sockets live under it
        running = Bus(root, os.path.join(root, "state"), root + ".bus", os.path.join(root, "emu.pid"))
        spec = os.path.join(root, "boards.json")
        with open(spec, "w") as handle:
            json.dump({"boards": list(boards)}, handle)
        usb.start(spec, running.state_dir, running.bus_dir, running.pid_file)
        started.append(running)
        return running

    yield start
    for running in started:
        usb.stop(running.pid_file)
        shutil.rmtree(running.root, ignore_errors=True)


@pytest.fixture
def image_of(tmp_path) -> Any:
    def make(profile: str, version: str = "v0.13.0-3-g1a2b3c4d5") -> tuple[str, bytes]:
        mcu, app, _, size, _ = BOARDS[profile]
        data = klipper_bin(version, mcu, app, size)
        path = tmp_path / f"{profile}-{version}.bin"
        path.write_bytes(data)
        return str(path), data
    return make


@needs_emulator
def test_list_shows_dfu_boards_by_port_with_their_memory_maps(bus) -> None:
    running = bus(board("h723", "1-1.3"), board("f446", "1-1.4"))
    status, listing, _ = running.dfu("list", "--json")
    assert status == 0
    by_port = {d["port"]: d for d in listing["devices"]}
    assert sorted(by_port) == ["1-1.3", "1-1.4"]
    assert by_port["1-1.4"]["alts"][0]["name"] == F446_MAP
    assert (by_port["1-1.4"]["transfer_size"], by_port["1-1.4"]["dfu_version"]) == (2048, "011a")
    text = subprocess.run([sys.executable, "-m", "pyinfra_ratos.firmware.dfu", "list"], env=usb.client_env(running.bus_dir),
                          capture_output=True, text=True).stdout
    assert "1-1.3  0483:df11" in text and "[0x08000000..0x080fffff, 8 sectors]" in text


@needs_emulator
@pytest.mark.parametrize("profile", sorted(BOARDS))
def test_flash_is_byte_identical_erases_only_covered_sectors_and_keeps_the_bootloader(bus, image_of, profile) -> None:
    mcu, app, _, _, covered = BOARDS[profile]
    running = bus(board(profile, "1-1.2"))
    path, image = image_of(profile)
    before = running.flash("1-1.2")
    status, result, stderr = running.dfu("flash", "--port", "1-1.2", "--address", hex(app), "--image", path,
                                         "--name", f"{profile} (mcu)")
    assert status == 0, stderr
    assert result["ok"] and result["read_back_ok"] and result["left"] and result["error"] is None
    assert (result["port"], result["address"], result["bytes"]) == ("1-1.2", f"{app:#010x}", len(image))
    after = running.flash("1-1.2")
    start = app - BASE
    assert after[start:start + len(image)] == image
    assert after[:start] == before[:start]  # bootloader sectors untouched
    sectors = parse_memory_map(BOARDS[profile][2]).sectors
    assert [e["sector"] for e in running.events("erase")] == covered
    assert result["sectors_erased"] == [f"{sectors[i].address:#010x}" for i in covered]
    end_of_erase = sectors[covered[-1]].end - BASE
    assert after[end_of_erase:] == before[end_of_erase:]  # nothing past the covered sectors either
    assert usb.wait_for_mode(running.state_dir, "1-1.2", "klipper")["version"] == "v0.13.0-3-g1a2b3c4d5"
    assert f"{profile} (mcu) on USB port 1-1.2" in stderr


@needs_emulator
def test_a_corrupted_write_is_caught_by_read_back_and_a_rerun_repairs_it(bus, image_of) -> None:
    running = bus(board("h723", "1-1.3", faults=["corrupt-write"]))
    path, image = image_of("h723")
    status, result, stderr = running.dfu("flash", "--port", "1-1.3", "--address", "0x08020000", "--image", path)
    assert status == 7
    assert (result["ok"], result["read_back_ok"], result["left"]) == (False, False, None)
    assert result["failure"] == "verify" and result["mismatch_address"] == "0x08020800"  # 3rd 1 KiB block
    assert "read-back differs from the image at 0x08020800" in result["error"]
    assert "on USB port 1-1.3" in result["error"]
    [corrupt] = running.events("corrupt-write")
    assert corrupt["address"] == 0x08020800
    assert running.events("leave-request") == [] and running.mode("1-1.3") == "dfu"  # never left
    assert running.flash("1-1.3")[0x20000:0x20000 + len(image)] != image

    status, result, stderr = running.dfu("flash", "--port", "1-1.3", "--address", "0x08020000", "--image", path)
    assert status == 0, stderr
    assert result["read_back_ok"] and result["left"]
    assert running.flash("1-1.3")[0x20000:0x20000 + len(image)] == image
    assert usb.wait_for_mode(running.state_dir, "1-1.3", "klipper")["version"] == "v0.13.0-3-g1a2b3c4d5"


@needs_emulator
@pytest.mark.parametrize("address, protect, flash_map, named", [
    ("0x080F8000", "0x08020000", H723_MAP, "lies outside"),
    ("0x08000000", "0x08020000", H723_MAP, "below the protected address 0x08020000"),
    ("0x08020000", "0x08020000", "@Internal Flash   /0x08000000/1*128Kg,1*128Ka,6*128Kg",
     "the sector at 0x08020000 is not erasable"),
])
def test_a_refused_image_touches_nothing(bus, image_of, address, protect, flash_map, named) -> None:
    running = bus(board("h723", "1-1.3", flash_map=flash_map))
    path, _ = image_of("h723")
    before = running.flash("1-1.3")
    status, result, _ = running.dfu("flash", "--port", "1-1.3", "--address", address, "--protect-below", protect,
                                    "--image", path)
    assert status == 3 and result["failure"] == "refused"
    assert named in result["error"] and "on USB port 1-1.3" in result["error"]
    assert running.events("erase", "write", "mass-erase", "leave-request") == []
    assert running.flash("1-1.3") == before


@needs_emulator
def test_two_boards_in_dfu_are_told_apart_by_port_or_serial(bus, image_of) -> None:
    running = bus(board("h723", "1-1.3"), board("h723", "1-1.4"))
    path, image = image_of("h723")
    status, result, stderr = running.dfu("flash", "--port", "1-1.4", "--address", "0x08020000", "--image", path,
                                         "--no-leave")
    assert status == 0, stderr
    assert result["left"] is None and running.mode("1-1.4") == "dfu"
    assert running.flash("1-1.4")[0x20000:0x20000 + len(image)] == image
    assert running.flash("1-1.3", 0x20008)[0x20000:] == b"\xff" * 8
    _, listing, _ = running.dfu("list", "--json")
    serial = next(d["serial"] for d in listing["devices"] if d["port"] == "1-1.3")
    status, result, stderr = running.dfu("flash", "--serial", serial, "--address", "0x08020000", "--image", path)
    assert status == 0, stderr
    assert result["port"] == "1-1.3" and result["serial"] == serial


@needs_emulator
def test_no_dfu_device_where_asked_is_a_device_failure_naming_the_port(bus, image_of) -> None:
    running = bus(board("h723", "1-1.3"))
    path, _ = image_of("h723")
    status, result, _ = running.dfu("flash", "--port", "1-1.9", "--address", "0x08020000", "--image", path)
    assert status == 4 and result["failure"] == "device"
    assert result["error"] == "no DFU device on USB port 1-1.9; DFU devices seen: 1-1.3 (0483:df11)"
    assert running.events("erase") == []


@needs_emulator
@pytest.mark.parametrize("fault", ["dfu-exit-74", "dfu-exit-251"])
def test_boards_that_reset_early_on_leave_are_reported_as_the_success_they_are(bus, image_of, fault) -> None:
    running = bus(board("h723", "1-1.3", faults=[fault]))
    path, _ = image_of("h723")
    status, result, stderr = running.dfu("flash", "--port", "1-1.3", "--address", "0x08020000", "--image", path)
    assert status == 0, stderr
    assert result["ok"] and result["read_back_ok"] and result["left"]
    assert usb.wait_for_mode(running.state_dir, "1-1.3", "klipper")["version"] == "v0.13.0-3-g1a2b3c4d5"


@needs_emulator
def test_a_board_stuck_in_dfu_after_leave_is_a_leave_failure(bus, image_of) -> None:
    running = bus(board("h723", "1-1.3", faults=["stuck-dfu"]))
    path, image = image_of("h723")
    status, result, _ = running.dfu("flash", "--port", "1-1.3", "--address", "0x08020000", "--image", path,
                                    "--leave-timeout", "3")
    assert status == 8
    assert (result["failure"], result["read_back_ok"], result["left"]) == ("leave", True, False)
    assert "did not leave DFU" in result["error"]
    assert running.flash("1-1.3")[0x20000:0x20000 + len(image)] == image
