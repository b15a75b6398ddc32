"""Emulated boards on the virtual Pis, seen over SSH through the real lsusb, dfu-util and pyusb."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinfra_ratos.firmware.catalog import load_catalog

from .conftest import BOOTLOADER_REQUEST, RunningFarm, running_farm

SCENARIO = Path(__file__).parent / "scenarios" / "usb-lab.toml"
H723 = "btt-octopus-pro-h723-11"
FLASH_BASE = 0x08000000
H723_APP = 0x08020000
H723_SECTOR = 128 * 1024


PYUSB_LIST = """
import json, usb.core
print(json.dumps(sorted(
    ["%04x:%04x" % (d.idVendor, d.idProduct), "%d-%s" % (d.bus, ".".join(map(str, d.port_numbers or ())))]
    for d in usb.core.find(find_all=True))))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIO, "farm-usb") as running:
        yield running


def build_on_pi(lab: RunningFarm, pi: str, board: str) -> tuple[str, bytes, str]:
    """Build ``board``'s firmware with the Pi's own ~/klipper; (path on the Pi, bytes, version)."""
    fragment = load_catalog()[board].kconfig
    out = f"/tmp/build-{board}"
    lab.ssh(
        pi,
        f"cat > /tmp/{board}.config <<'EOF'\n{fragment}\nEOF\n"
        f"cd ~/klipper && make KCONFIG_CONFIG=/tmp/{board}.config OUT={out}/ olddefconfig >/dev/null"
        f" && make KCONFIG_CONFIG=/tmp/{board}.config OUT={out}/ >/dev/null",
    )
    image = base64.b64decode(lab.ssh(pi, f"base64 -w0 {out}/klipper.bin").stdout)
    version = json.loads(lab.ssh(pi, f"cat {out}/klipper.dict").stdout)["version"]
    return f"{out}/klipper.bin", image, version


def flash_contents(lab: RunningFarm, pi: str, port: str) -> bytes:
    return (lab.upper(pi) / "var/lib/ratos-sim/usb" / port / "flash.bin").read_bytes()


def moonraker_mcu(lab: RunningFarm, pi: str, name: str) -> dict:
    query = "mcu" if name == "mcu" else f"mcu%20{name}"
    answer = json.loads(lab.ssh(pi, f"curl -s '127.0.0.1:7125/printer/objects/query?{query}'").stdout)
    return answer["result"]["status"][name if name == "mcu" else f"mcu {name}"]


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def lsusb_ids(lab: RunningFarm, pi: str) -> list[str]:
    out = lab.ssh(pi, "lsusb").stdout
    return sorted(re.findall(r"ID ([0-9a-f]{4}:[0-9a-f]{4})", out))


HUBS = ["1d6b:0002", "2109:3431"]  # the Pi 4's root hub and its VL805 hub


def test_lsusb_on_each_pi_lists_exactly_its_own_boards(lab: RunningFarm) -> None:
    assert lsusb_ids(lab, "usb-single") == sorted(HUBS + ["0483:df11"])
    assert lsusb_ids(lab, "usb-klipper") == sorted(HUBS + ["1d50:614e", "1d50:614e", "1d50:6177"])
    assert lsusb_ids(lab, "usb-pair") == sorted(HUBS + ["0483:df11", "0483:df11"])
    listing = lab.ssh("usb-klipper", "lsusb").stdout
    assert "1d50:614e Klipper stm32h723xx" in listing and "1d50:614e Klipper stm32f446xx" in listing
    links = lab.ssh("usb-klipper", "ls /dev/serial/by-id/").stdout.split()
    assert f"usb-Klipper_stm32h723xx_{H723}-if00" in links
    assert "usb-katapult_stm32g0b1xx_4E2D1A6B3C7F9E01-if00" in links
    assert any(re.fullmatch(r"usb-Klipper_stm32f446xx_[0-9A-F]{24}-if00", link) for link in links)


def test_lsusb_verbose_decodes_the_dfu_functional_descriptor(lab: RunningFarm) -> None:
    out = lab.ssh("usb-single", "sudo lsusb -v -d 0483:df11").stdout
    assert "Device Firmware Upgrade Interface Descriptor" in out
    assert re.search(r"bcdDFUVersion\s+1\.1a", out)
    assert re.search(r"wTransferSize\s+1024 bytes", out)
    assert "@Internal Flash   /0x08000000/4*128Kg" in out  # the H723ZET6 of the Octopus Pro: 512 KiB


def test_pyusb_in_a_venv_on_the_pi_enumerates_the_same_devices(lab: RunningFarm) -> None:
    import usb

    lab.ssh("usb-klipper", "python3 -m venv --without-pip ~/usbenv")
    site = lab.ssh("usb-klipper", "ls -d ~/usbenv/lib/python3*/site-packages").stdout.strip()
    pi = lab.pi("usb-klipper")
    tar = subprocess.Popen(["tar", "-C", str(Path(usb.__file__).parent.parent), "-cf", "-", "usb"], stdout=subprocess.PIPE)
    subprocess.run(
        ["ssh", "-i", str(lab.state / "id_ed25519"), "-o", f"UserKnownHostsFile={lab.state / 'known_hosts'}",
         "-o", "BatchMode=yes", f"pi@{pi['address']}", f"tar -C {site} -xf -"],
        stdin=tar.stdout, check=True, timeout=60,
    )
    tar.wait()
    found = json.loads(lab.ssh("usb-klipper", f"~/usbenv/bin/python -c '{PYUSB_LIST}'").stdout)
    assert sorted(vid_pid for vid_pid, _ in found) == lsusb_ids(lab, "usb-klipper")
    assert ["1d50:614e", "1-1.1"] in found and ["1d50:6177", "1-1.4"] in found


def test_sudo_dfu_util_sees_the_pis_bus_and_pi_alone_cannot_open_it(lab: RunningFarm) -> None:
    listed = lab.ssh("usb-single", "sudo dfu-util -l").stdout
    assert 'Found DFU: [0483:df11]' in listed and 'path="1-1.3"' in listed
    as_pi = lab.ssh("usb-single", "dfu-util -l 2>&1")
    assert "Cannot open DFU device 0483:df11 found on devnum" in as_pi.stdout
    assert "LIBUSB_ERROR_ACCESS" in as_pi.stdout


def test_dfu_util_flashes_a_pi_built_image_byte_identically(lab: RunningFarm) -> None:
    path, image, version = build_on_pi(lab, "usb-single", H723)
    assert moonraker_mcu(lab, "usb-single", "mcu") == {}  # in DFU: klippy cannot talk to it
    before = flash_contents(lab, "usb-single", "1-1.3")
    result = lab.ssh("usb-single", f"sudo dfu-util -d ,0483:df11 -R -a 0 -s 0x08020000:leave -D {path} 2>&1")
    assert "File downloaded successfully" in result.stdout
    after = flash_contents(lab, "usb-single", "1-1.3")
    start = H723_APP - FLASH_BASE
    assert after[start : start + len(image)] == image
    assert after[:start] == before[:start]  # the vendor bootloader sector is untouched
    erased = [e["sector"] for e in lab.usb_events("usb-single") if e["event"] == "erase"]
    assert erased == list(range(start // H723_SECTOR, (start + len(image) - 1) // H723_SECTOR + 1))
    # back as Klipper on the same port, reporting what the flashed bytes say
    links = wait_for(lambda: lab.ssh("usb-single", "ls /dev/serial/by-path/ 2>/dev/null", check=False).stdout, what="tty")
    assert "usb-0:1.3:1.0" in links
    mcu = wait_for(lambda: moonraker_mcu(lab, "usb-single", "mcu"), what="mcu back")
    assert mcu["mcu_version"] == version
    assert mcu["mcu_constants"]["MCU"] == "stm32h723xx"


def test_1200_baud_request_moves_a_klipper_board_to_dfu_on_the_same_port(lab: RunningFarm) -> None:
    tty = lab.ssh("usb-klipper", "ls /dev/serial/by-path/*usb-0:1.1:1.0").stdout.strip()
    lab.ssh("usb-klipper", f"python3 -c '{BOOTLOADER_REQUEST}' {tty}")
    listed = wait_for(lambda: "0483:df11" in lab.ssh("usb-klipper", "sudo dfu-util -l").stdout
                      and lab.ssh("usb-klipper", "sudo dfu-util -l").stdout, what="DFU")
    assert 'path="1-1.1"' in listed
    assert moonraker_mcu(lab, "usb-klipper", "mcu") == {}


def test_a_board_ignoring_the_bootloader_request_stays_klipper(lab: RunningFarm) -> None:
    tty = lab.ssh("usb-klipper", "ls /dev/serial/by-path/*usb-0:1.2:1.0").stdout.strip()
    lab.ssh("usb-klipper", f"python3 -c '{BOOTLOADER_REQUEST}' {tty}")
    time.sleep(2)  # longer than a board takes to re-enumerate
    assert lab.ssh("usb-klipper", f"test -e {tty} && echo there").stdout.strip() == "there"
    assert "1d50:614e Klipper stm32f446xx" in lab.ssh("usb-klipper", "lsusb").stdout


def test_two_boards_in_dfu_need_a_port_and_exit_status_faults_lie_like_dfu_util(lab: RunningFarm) -> None:
    path, image, version = build_on_pi(lab, "usb-pair", H723)
    both = lab.ssh("usb-pair", f"sudo dfu-util -d ,0483:df11 -a 0 -s 0x08020000:leave -D {path} 2>&1", check=False)
    assert both.returncode == 74
    assert "More than one DFU capable USB device found!" in both.stdout
    # dfu-exit-74: the MCU resets before the last status poll; the flash is complete
    first = lab.ssh("usb-pair", f"sudo dfu-util -p 1-1.1 -a 0 -s 0x08020000:leave -D {path} 2>&1", check=False)
    assert first.returncode == 74
    assert "File downloaded successfully" in first.stdout
    assert "Error during download get_status" in first.stdout
    start = H723_APP - FLASH_BASE
    assert flash_contents(lab, "usb-pair", "1-1.1")[start : start + len(image)] == image
    assert flash_contents(lab, "usb-pair", "1-1.2")[start : start + len(image)] != image  # not the other one
    # dfu-exit-251: the device vanishes after leave, -R cannot detach
    second = lab.ssh("usb-pair", f"sudo dfu-util -p 1-1.2 -R -a 0 -s 0x08020000:leave -D {path} 2>&1", check=False)
    assert second.returncode == 251
    assert "can't detach" in second.stdout
    for name in ("mcu", "second"):
        mcu = wait_for(lambda: moonraker_mcu(lab, "usb-pair", name), what=f"{name} back")
        assert mcu["mcu_version"] == version


def test_no_reenumerate_stuck_dfu_and_slow_erase(lab: RunningFarm) -> None:
    path, image, version = build_on_pi(lab, "usb-faults", H723)
    for port in ("1-1.1", "1-1.2", "1-1.3"):
        result = lab.ssh("usb-faults", f"sudo dfu-util -p {port} -a 0 -s 0x08020000:leave -D {path} 2>&1", check=False)
        assert "File downloaded successfully" in result.stdout, (port, result.stdout)
    time.sleep(2)
    listed = lab.ssh("usb-faults", "sudo dfu-util -l").stdout
    assert 'path="1-1.1"' not in listed  # no-reenumerate: gone from the bus
    assert 'path="1-1.2"' in listed  # stuck-dfu: still in DFU
    assert moonraker_mcu(lab, "usb-faults", "mcu") == {}
    # slow-erase: slow, but back as Klipper with the new image
    assert 'path="1-1.3"' not in listed
    assert "usb-0:1.3:1.0" in lab.ssh("usb-faults", "ls /dev/serial/by-path/").stdout
    state = json.loads((lab.upper("usb-faults") / "var/lib/ratos-sim/state.json").read_text())
    third = next(m for m in state["mcus"] if m["name"] == "third")
    assert third["present"] and third["firmware"]["version"] == version
