"""The pyusb DfuSe client on a virtual Pi: copied into a venv like a provisioned Pi gets it, run
with sudo over SSH against emulated H723, F446 and G0B1 boards, verified by reading back."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pyinfra_ratos
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.sim import farm as sim_farm

from .conftest import RunningFarm, start_farm

PI = "dfu-lab"
SCENARIO = f"""
[[pi]]
name = "{PI}"
[[pi.boards]]
board = "btt-octopus-pro-h723-11"
mode = "dfu"
port = "1-1.1"
[[pi.boards]]
board = "btt-octopus-pro-446"
mcu_name = "second"
mode = "dfu"
port = "1-1.2"
[[pi.boards]]
board = "btt-skr-mini-e3-30"
mcu_name = "third"
mode = "dfu"
port = "1-1.3"
[[pi.boards]]
board = "btt-octopus-pro-h723-11"
mcu_name = "fourth"
mode = "dfu"
port = "1-1.4"
faults = ["corrupt-write"]
"""
FLASH_BASE = 0x08000000
PROFILES = {  # port -> board id
    "1-1.1": "btt-octopus-pro-h723-11",
    "1-1.2": "btt-octopus-pro-446",
    "1-1.3": "btt-skr-mini-e3-30",
}
MCU_NAMES = {"1-1.1": "mcu", "1-1.2": "second", "1-1.3": "third", "1-1.4": "fourth"}


def _scp_tar(lab: RunningFarm, source_dir: Path, member: str, target: str) -> None:
    """``tar`` a directory of the controller into ``target`` on the Pi, over the real ssh."""
    pi = lab.pi(PI)
    tar = subprocess.Popen(["tar", "-C", str(source_dir), "--exclude=__pycache__", "-cf", "-", member],
                           stdout=subprocess.PIPE)
    subprocess.run(
        ["ssh", "-i", str(lab.state / "id_ed25519"), "-o", f"UserKnownHostsFile={lab.state / 'known_hosts'}",
         "-o", "BatchMode=yes", "-p", str(lab.info["ssh_port"]), f"pi@{pi['address']}", f"tar -C {target} -xf -"],
        stdin=tar.stdout, check=True, timeout=60,
    )
    tar.wait()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    import usb

    state = tmp_path_factory.mktemp("farm-dfu-pyusb")
    scenario = state.parent / "dfu-pyusb.toml"
    scenario.write_text(SCENARIO)
    running = start_farm(scenario, state)
    try:
        # what the provision deploy does: a venv with pyusb and this one package, nothing else
        running.ssh(PI, "python3 -m venv --without-pip ~/venv")
        site = running.ssh(PI, "ls -d ~/venv/lib/python3*/site-packages").stdout.strip()
        _scp_tar(running, Path(usb.__file__).parent.parent, "usb", site)
        _scp_tar(running, Path(pyinfra_ratos.__file__).parent.parent, "pyinfra_ratos/firmware/dfu", site)
        yield running
    finally:
        sim_farm.down(state)


@pytest.fixture(scope="module")
def builds(lab: RunningFarm) -> dict[str, tuple[str, bytes, str]]:
    """Each board's firmware built with the Pi's own ~/klipper: board id -> (path, bytes, version)."""
    catalog = load_catalog()
    out = {}
    for board in sorted(set(PROFILES.values())):
        directory = f"/tmp/build-{board}"
        lab.ssh(PI, f"cat > /tmp/{board}.config <<'EOF'\n{catalog[board].kconfig}\nEOF\n"
                    f"cd ~/klipper && make KCONFIG_CONFIG=/tmp/{board}.config OUT={directory}/ olddefconfig >/dev/null"
                    f" && make KCONFIG_CONFIG=/tmp/{board}.config OUT={directory}/ >/dev/null")
        image = base64.b64decode(lab.ssh(PI, f"base64 -w0 {directory}/klipper.bin").stdout)
        version = json.loads(lab.ssh(PI, f"cat {directory}/klipper.dict").stdout)["version"]
        out[board] = (f"{directory}/klipper.bin", image, version)
    return out


def run_client(lab: RunningFarm, *argv: str) -> tuple[int, dict[str, Any], str]:
    done = lab.ssh(PI, "sudo ~/venv/bin/python -m pyinfra_ratos.firmware.dfu " + " ".join(argv) + " 2>/tmp/dfu.err",
                   check=False)
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else {}, lab.ssh(PI, "cat /tmp/dfu.err").stdout


def flash_bin(lab: RunningFarm, port: str) -> bytes:
    return (lab.upper(PI) / "var/lib/ratos-sim/usb" / port / "flash.bin").read_bytes()


def events(lab: RunningFarm, port: str, *kinds: str) -> list[dict[str, Any]]:
    path = lab.upper(PI) / "var/lib/ratos-sim/usb/events.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines())
            if e["port"] == port and e["event"] in kinds]


def mcu_firmware(lab: RunningFarm, name: str, timeout: float = 15.0) -> dict[str, Any] | None:
    """The firmware the Pi's shared state says MCU ``name`` runs, once it is back (None if not)."""
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads((lab.upper(PI) / "var/lib/ratos-sim/state.json").read_text())
        mcu = next(m for m in state["mcus"] if m["name"] == name)
        if mcu["present"] or time.monotonic() > deadline:
            return mcu["firmware"] if mcu["present"] else None
        time.sleep(0.2)


def test_list_run_by_root_on_the_pi_shows_every_board_in_dfu(lab: RunningFarm) -> None:
    status, listing, _ = run_client(lab, "list", "--json")
    assert status == 0
    maps = {d["port"]: d["alts"][0]["name"] for d in listing["devices"]}
    assert maps == {"1-1.1": "@Internal Flash   /0x08000000/4*128Kg",
                    "1-1.2": "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg",
                    "1-1.3": "@Internal Flash  /0x08000000/256*02Kg",
                    "1-1.4": "@Internal Flash   /0x08000000/4*128Kg"}


@pytest.mark.parametrize("port", sorted(PROFILES))
def test_pi_built_image_flashes_byte_identically_with_read_back(lab: RunningFarm, builds, port: str) -> None:
    board = load_catalog()[PROFILES[port]]
    path, image, version = builds[board.id]
    before = flash_bin(lab, port)
    status, result, stderr = run_client(lab, "flash", "--port", port, "--address", hex(board.app_address),
                                        "--protect-below", hex(board.app_address), "--image", path,
                                        "--name", board.id)
    assert status == 0, stderr
    assert result["ok"] and result["read_back_ok"] and result["left"]
    after = flash_bin(lab, port)
    start = board.app_address - FLASH_BASE
    assert after[start:start + len(image)] == image
    assert after[:start] == before[:start]  # the bootloader sectors are untouched
    erased = [e["address"] for e in events(lab, port, "erase")]
    assert erased == [int(a, 16) for a in result["sectors_erased"]]
    assert erased[0] == board.app_address and all(a < board.app_address + len(image) for a in erased)
    firmware = mcu_firmware(lab, MCU_NAMES[port])
    assert firmware is not None and firmware["version"] == version


def test_corrupted_write_is_caught_left_in_dfu_and_repaired_by_a_rerun(lab: RunningFarm, builds) -> None:
    path, image, version = builds["btt-octopus-pro-h723-11"]
    argv = ("flash", "--port", "1-1.4", "--address", "0x08020000", "--image", path, "--name", "fourth")
    status, result, _ = run_client(lab, *argv)
    assert status == 7 and result["failure"] == "verify" and result["read_back_ok"] is False
    assert result["mismatch_address"] == "0x08020800"
    assert "fourth on USB port 1-1.4: read-back differs from the image at 0x08020800" in result["error"]
    assert events(lab, "1-1.4", "leave-request") == []
    assert 'path="1-1.4"' in lab.ssh(PI, "sudo dfu-util -l").stdout  # still in DFU
    assert mcu_firmware(lab, "fourth", timeout=0) is None

    status, result, stderr = run_client(lab, *argv)
    assert status == 0, stderr
    assert result["read_back_ok"] and result["left"]
    assert flash_bin(lab, "1-1.4")[0x20000:0x20000 + len(image)] == image
    firmware = mcu_firmware(lab, "fourth")
    assert firmware is not None and firmware["version"] == version
