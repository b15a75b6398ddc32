"""The Linux host MCU on armhf and arm64 Pis: one ``ratos-fleet update`` installs the ELF for each
Pi's CPU, Moonraker reports the new version, and a second update changes nothing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinfra_ratos.firmware.arch import ARCHES
from pyinfra_ratos.firmware.image import elf_header

from .conftest import VENV_BIN, RunningFarm, running_farm

SCENARIO = Path(__file__).parent / "scenarios" / "hostmcu-lab.toml"
PIS = {"mcu-armhf": "armhf", "mcu-arm64": "aarch64"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIO, "farm-hostmcu") as running:
        yield running


def ratos_fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "ratos-fleet"), *args], capture_output=True, text=True, timeout=900)


def pistate(lab: RunningFarm, pi: str) -> dict:
    return json.loads((lab.upper(pi) / "var/lib/ratos-sim/state.json").read_text())


def installed(lab: RunningFarm, pi: str) -> Path:
    return lab.upper(pi) / "usr/local/bin/klipper_mcu"


def test_each_pi_gets_a_host_mcu_for_its_own_cpu_in_one_update_and_a_rerun_is_a_no_op(
        lab: RunningFarm, tmp_path: Path) -> None:
    current = lab.info["versions"]["current"]["version"]
    for pi, arch in PIS.items():
        assert lab.ssh(pi, "uname -m").stdout.strip() == {"armhf": "armv7l", "aarch64": "aarch64"}[arch]
    first = ratos_fleet("update", str(lab.inventory), "--limit", "pis", "--report", str(tmp_path / "one"))
    assert first.returncode == 3, first.stdout + first.stderr  # no failure, changes made
    stamps = {}
    for pi, arch in PIS.items():
        binary = installed(lab, pi).read_bytes()
        machine, elf_class, _flags = elf_header(binary)
        assert (machine, elf_class) == (ARCHES[arch].elf_machine, ARCHES[arch].elf_class), pi
        # the bytes installed are the artifact's, filed under an identity naming the Pi's CPU
        artifacts = lab.state / "pis" / pi / "home/pi/printer_data/firmware"
        (artifact,) = [d for d in artifacts.iterdir() if d.name.endswith(f"-{arch}")]
        assert (artifact / "klipper.elf").read_bytes() == binary
        query = lab.ssh(pi, "curl -s 'http://127.0.0.1:7125/printer/objects/query?mcu%20rpi'").stdout
        assert json.loads(query)["result"]["status"]["mcu rpi"]["mcu_version"] == current
        state = pistate(lab, pi)
        assert state["services"]["klipper-mcu"] == "active" and state["services"]["klipper"] == "active"
        stamps[pi] = (installed(lab, pi).stat().st_mtime_ns, state["klippy_pid"])
    again = ratos_fleet("update", str(lab.inventory), "--limit", "pis", "--report", str(tmp_path / "two"))
    assert again.returncode == 0, again.stdout + again.stderr
    for pi in PIS:
        assert (installed(lab, pi).stat().st_mtime_ns, pistate(lab, pi)["klippy_pid"]) == stamps[pi], again.stdout


def test_a_pi_building_its_own_host_mcu_builds_it_for_its_cpu_and_names_it(lab: RunningFarm, tmp_path: Path) -> None:
    pi = "mcu-pibuild"
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        f"exec(open({str(lab.inventory)!r}).read())\n"
        "workbench = [(n, {**d, 'firmware_build': 'pi', 'klipper_source': None}) for n, d in workbench]\n"
    )
    deploy = Path(__file__).parents[2] / "deploys" / "firmware.py"
    out = lab.pyinfra(str(deploy), "--limit", pi, check=False, inventory=inventory).stdout
    machine, elf_class, _flags = elf_header(installed(lab, pi).read_bytes())
    assert (machine, elf_class) == (ARCHES["aarch64"].elf_machine, 2), out
    artifacts = lab.state / "pis" / pi / "home/pi/printer_data/firmware"
    (built,) = [d for d in artifacts.iterdir() if not d.name.startswith(".")]
    assert built.name.endswith("-aarch64") and (built / "klipper.elf").read_bytes() == installed(lab, pi).read_bytes()
    assert pistate(lab, pi)["services"]["klipper-mcu"] == "active"
