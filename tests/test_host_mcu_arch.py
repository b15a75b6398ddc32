"""The Linux host MCU is built for the Pi's CPU (armhf or arm64), named by it, and refused elsewhere."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pyinfra_ratos.facts import remote
from pyinfra_ratos.facts.klipper import parse_klipper_host as parse_host
from pyinfra_ratos.firmware.arch import EM_AARCH64, EM_ARM, EM_X86_64, userland_arch
from pyinfra_ratos.firmware.builder import Builder, BuildError
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.firmware.image import check_image_for_board, inspect_image
from pyinfra_ratos.firmware.kconfig import render_fragment
from pyinfra_ratos.firmware.plan import Artifact, plan_flash
from pyinfra_ratos.sim.klipper_repo import build_firmware, create_template_repo

RPI = load_catalog()["rpi"]
IDLE = {"print_state": "standby", "idle_state": "Idle", "klippy_state": "ready", "busy": False}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("arch")
    commit = create_template_repo(root / "klipper")["current"]["commit"]
    builder = Builder(root / "klipper", root / "cache")
    return {arch: builder.build(commit, RPI, render_fragment(RPI), arch) for arch in ("armhf", "aarch64")} | {
        "native": build_firmware(root / "klipper", commit, RPI.kconfig, root / "native")}


@pytest.mark.parametrize(("machine", "bits", "arch"), [
    ("armv7l", 32, "armhf"),     # Raspberry Pi OS 32-bit on a Pi 2/3
    ("aarch64", 32, "armhf"),    # 32-bit Raspberry Pi OS booting the 64-bit kernel (Pi 4/5 default)
    ("aarch64", 64, "aarch64"),  # 64-bit Raspberry Pi OS
    ("armv6l", 32, None),        # Pi 1/Zero: Debian's armhf compiler targets ARMv7
    ("x86_64", 64, None),
])
def test_the_userland_decides_the_architecture_not_the_kernel(machine: str, bits: int, arch: str | None) -> None:
    assert userland_arch(machine, bits) == arch


def test_the_probe_reads_the_machine_without_another_ssh_command(tmp_path: Path) -> None:
    raw = remote.probe_klipper(str(tmp_path / "no-klipper"))
    assert raw["machine"] and raw["pointer_bits"] == struct.calcsize("P") * 8
    host = parse_host({**raw, "machine": "aarch64", "pointer_bits": 64})
    assert (host["machine"], host["arch"]) == ("aarch64", "aarch64")


def test_each_pi_architecture_gets_its_own_elf_and_identity(built) -> None:
    armhf, arm64 = built["armhf"], built["aarch64"]
    assert (armhf.image.elf_machine, armhf.image.elf_class) == (EM_ARM, 1)
    assert armhf.image.elf_flags & 0x400  # hard-float ABI
    assert (arm64.image.elf_machine, arm64.image.elf_class) == (EM_AARCH64, 2)
    assert armhf.identity.name.endswith("-armhf") and arm64.identity.name.endswith("-aarch64")
    assert armhf.identity.config_sha256 == arm64.identity.config_sha256  # same config, other CPU
    assert json.loads((arm64.directory / "identity.json").read_text())["target"] == "aarch64"
    # a 64-bit ELF carries its dictionary as well and is read without defects
    assert not arm64.image.defects and arm64.image.mcu == "linux" and arm64.image.version == armhf.identity.version


def test_a_native_controller_build_is_an_x86_64_program_the_pi_refuses(built) -> None:
    info = inspect_image((built["native"] / "klipper.elf").read_bytes(), "elf")
    assert info.elf_machine == EM_X86_64
    for arch in ("armhf", "aarch64"):
        assert any("x86-64" in problem and "would not start" in problem
                   for problem in check_image_for_board(info, RPI, host_arch=arch))


def test_the_image_check_wants_the_pis_own_machine_type(built) -> None:
    armhf, arm64 = built["armhf"].image, built["aarch64"].image
    assert check_image_for_board(armhf, RPI, host_arch="armhf") == []
    assert check_image_for_board(arm64, RPI, host_arch="aarch64") == []
    assert any("AArch64, ELF64" in p for p in check_image_for_board(arm64, RPI, host_arch="armhf"))
    assert any("ARM (32-bit), ELF32" in p for p in check_image_for_board(armhf, RPI, host_arch="aarch64"))
    assert any("architecture is unknown" in p for p in check_image_for_board(armhf, RPI))


def test_a_host_mcu_built_for_another_pi_is_refused_before_klipper_stops(built) -> None:
    arm64 = built["aarch64"]
    artifact = Artifact(arm64.identity, arm64.image, "/home/pi/printer_data/firmware/x/klipper.elf",
                        arm64.resolved_config)
    assert plan_flash(RPI, {}, None, IDLE, artifact, mcu_name="rpi", host_arch="aarch64").action == "flash"
    refused = plan_flash(RPI, {}, None, IDLE, artifact, mcu_name="rpi", host_arch="armhf")
    assert refused.refused and not refused.hold and "the Pi runs armhf" in refused.reason


def test_a_host_mcu_for_an_unknown_architecture_is_not_built() -> None:
    with pytest.raises(BuildError, match="architecture is unknown"):
        Builder("/nonexistent").build("0" * 40, RPI, render_fragment(RPI), None)
