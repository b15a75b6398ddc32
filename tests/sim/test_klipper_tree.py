"""The stand-in ~/klipper: Kconfig resolution, firmware files and versions, as Klipper does them."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from pyinfra_ratos.firmware.catalog import Board, load_catalog
from pyinfra_ratos.firmware.image import strip_elf
from pyinfra_ratos.sim.klipper_repo import build_firmware, create_template_repo

CATALOG = load_catalog()
H723 = CATALOG["btt-octopus-pro-h723-11"]
SUFFIX = r"-\d{8}_\d{6}-" + re.escape(socket.gethostname())
# make's children must not pick up a developer's global git configuration (safe.directory=*)
GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("template") / "klipper"
    return repo, create_template_repo(repo)


@pytest.fixture()
def checkout(template: tuple[Path, dict], tmp_path: Path) -> Path:
    """A private clone at HEAD, free to be dirtied."""
    tree = tmp_path / "klipper"
    subprocess.run(["git", "clone", "-q", str(template[0]), str(tree)], check=True, env=GIT_ENV)
    return tree


def make(tree: Path, config: Path, out: Path, *targets: str, env: dict | None = None) -> str:
    result = subprocess.run(
        ["make", f"KCONFIG_CONFIG={config}", f"OUT={out}/", *targets], cwd=tree, env=env or GIT_ENV,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=True,
    )
    return result.stdout


def resolve(tree: Path, fragment: str, tmp_path: Path, env: dict | None = None) -> tuple[dict[str, str], str]:
    config = tmp_path / "board.config"
    config.write_text(fragment)
    output = make(tree, config, tmp_path / "out", "olddefconfig", env=env)
    values = dict(re.findall(r"^CONFIG_(\w+)=(.*)$", config.read_text(), re.MULTILINE))
    return values, output


def image_dict(image: bytes) -> dict:
    start = image.index(b"\x78\xda")
    return json.loads(zlib.decompressobj().decompress(image[start:]))


def test_template_history_is_the_same_on_every_run(template: tuple[Path, dict], tmp_path: Path) -> None:
    again = create_template_repo(tmp_path / "again")
    assert again == template[1]
    assert template[1]["old"]["version"] == "v0.12.0-0-g" + template[1]["old"]["commit"][:7]
    assert re.fullmatch(r"v0\.13\.0-3-g[0-9a-f]{7,}", template[1]["current"]["version"])
    origin = subprocess.run(["git", "remote", "get-url", "origin"], cwd=template[0], text=True,
                            stdout=subprocess.PIPE, check=True, env=GIT_ENV).stdout.strip()
    assert origin == "https://github.com/Klipper3d/klipper.git"


@pytest.mark.parametrize("board", CATALOG.values(), ids=CATALOG.keys())
def test_olddefconfig_derives_the_catalog_facts(checkout: Path, tmp_path: Path, board: Board) -> None:
    values, _ = resolve(checkout, board.kconfig, tmp_path)
    if board.mcu == "linux":
        # like Klipper: the Linux MCU has no MCU symbol, its firmware reports "linux"
        assert values["MACH_LINUX"] == "y" and "MCU" not in values
        return
    assert values["MCU"] == f'"{board.mcu}"'
    assert int(values["FLASH_APPLICATION_ADDRESS"], 16) == board.app_address
    if board.is_stm32:
        assert int(values["CLOCK_REF_FREQ"]) == board.crystal
    if board.interface == "usb":
        assert values["USBSERIAL"] == "y"
        assert values["USB_SERIAL_NUMBER"] == f'"{board.id}"'
    if board.interface == "can":
        assert values["CANBUS"] == "y" and "USBSERIAL" not in values


def test_low_level_options_off_drops_the_25m_crystal(checkout: Path, tmp_path: Path) -> None:
    fragment = H723.kconfig.replace("CONFIG_LOW_LEVEL_OPTIONS=y\n", "")
    values, output = resolve(checkout, fragment, tmp_path)
    assert values["CLOCK_REF_FREQ"] == "8000000"
    assert "STM32_CLOCK_REF_25M" not in values
    assert values["USB_SERIAL_NUMBER_CHIPID"] == "y"  # the board id serial is lost too
    assert "warning" not in output  # silently, as in Klipper


def test_derived_symbols_cannot_be_set(checkout: Path, tmp_path: Path) -> None:
    values, _ = resolve(checkout, "CONFIG_MCU=\"stm32h723xx\"\nCONFIG_FLASH_APPLICATION_ADDRESS=0x8020000\n", tmp_path)
    assert values["MCU"] == '"atmega2560"'
    assert "FLASH_APPLICATION_ADDRESS" not in values


def test_a_misspelled_symbol_is_dropped(checkout: Path, tmp_path: Path) -> None:
    fragment = H723.kconfig.replace("CONFIG_STM32_FLASH_START_20000=y", "CONFIG_STM32_FLASH_STRAT_20000=y")
    values, _ = resolve(checkout, fragment, tmp_path)
    assert "STM32_FLASH_STRAT_20000" not in values
    assert values["FLASH_APPLICATION_ADDRESS"] == "0x8020000"  # first visible offset for the H723
    # kconfiglib only says so when asked, exactly as with Klipper's vendored copy
    _, output = resolve(checkout, fragment, tmp_path, env={**GIT_ENV, "KCONFIG_WARN_UNDEF_ASSIGN": "y"})
    assert "undefined symbol STM32_FLASH_STRAT_20000" in output


def test_old_rp2040_fragment_falls_back_to_avr(checkout: Path, tmp_path: Path) -> None:
    values, _ = resolve(checkout, "CONFIG_MACH_RP2040=y\nCONFIG_RPXXXX_USB=y\n", tmp_path)
    assert values["MCU"] == '"atmega2560"'


def test_missing_kconfig_config_silently_builds_the_avr_default(checkout: Path, tmp_path: Path) -> None:
    config, out = tmp_path / "absent.config", tmp_path / "out"
    output = make(checkout, config, out)
    assert "Using default symbol values" in output
    assert "CONFIG_MACH_atmega2560=y" in config.read_text()
    assert json.loads((out / "klipper.dict").read_text())["config"]["MCU"] == "atmega2560"
    assert (out / "klipper.elf.hex").read_text().endswith(":00000001FF\n")


def test_stm32_build_embeds_klipper_dict_in_a_bootable_bin(checkout: Path, tmp_path: Path) -> None:
    config, out = tmp_path / "h723.config", tmp_path / "out"
    config.write_text(H723.kconfig)
    make(checkout, config, out, "olddefconfig")
    output = make(checkout, config, out, "-j2")
    assert f"  Creating bin file {out}/klipper.bin" in output
    assert f"  Linking {out}/klipper.elf" in output
    image, raw_dict = (out / "klipper.bin").read_bytes(), (out / "klipper.dict").read_bytes()
    stack, reset = struct.unpack_from("<II", image)
    assert 0x20000000 <= stack <= 0x3FFFFFFF
    # as in real Klipper images, the reset handler lies ~30 KiB into the image, marked there with
    # its own linked address (what the emulator checks)
    handler = (reset & ~1) - H723.app_address
    assert reset & 1 and 30 * 1024 <= handler <= 32 * 1024
    assert image[handler:handler + 8] == b"KRST" + struct.pack("<I", reset & ~1)
    assert image.count(b"KRST") == 1
    assert len(image) % 8 == 0 and 40 * 1024 <= len(image) <= 56 * 1024
    start = image.index(b"\x78\xda")
    assert zlib.decompressobj().decompress(image[start:]) == raw_dict
    info = json.loads(raw_dict)
    assert info["app"] == "Klipper" and info["config"]["MCU"] == "stm32h723xx"
    assert info["config"]["CLOCK_REF_FREQ"] == 25_000_000
    assert info["version"] == subprocess.run(
        ["git", "describe", "--always", "--tags", "--long", "--dirty"], cwd=checkout, env=GIT_ENV,
        stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    elf = (out / "klipper.elf").read_bytes()
    assert elf[:5] == b"\x7fELF\x01" and struct.unpack_from("<H", elf, 18)[0] == 40  # ELF32, ARM
    assert image in elf


def test_rp2040_without_bootloader_gives_uf2_blocks(checkout: Path, tmp_path: Path) -> None:
    pico = CATALOG["rpi-pico"]
    config, out = tmp_path / "pico.config", tmp_path / "out"
    config.write_text(pico.kconfig)
    make(checkout, config, out, "olddefconfig")
    make(checkout, config, out)
    assert not (out / "klipper.bin").exists()
    uf2 = (out / "klipper.uf2").read_bytes()
    assert len(uf2) % 512 == 0
    flash = bytearray()
    for offset in range(0, len(uf2), 512):
        magic0, magic1, flags, address, size, number, total, family = struct.unpack_from("<8I", uf2, offset)
        assert (magic0, magic1, flags, size, family) == (0x0A324655, 0x9E5D5157, 0x2000, 256, 0xE48BFF56)
        assert (address, number, total) == (0x10000000 + 256 * number, offset // 512, len(uf2) // 512)
        flash += uf2[offset + 32:offset + 32 + 256]
    stack, reset = struct.unpack_from("<II", flash, pico.app_address - 0x10000000)
    handler = (reset & ~1) - 0x10000000
    assert flash[handler:handler + 8] == b"KRST" + struct.pack("<I", reset & ~1)
    assert 30 * 1024 <= (reset & ~1) - pico.app_address and 0x20000000 <= stack <= 0x3FFFFFFF
    assert image_dict(bytes(flash))["config"]["MCU"] == "rp2040"


def test_linux_mcu_is_an_elf_carrying_its_dict(template: tuple[Path, dict], tmp_path: Path) -> None:
    out = build_firmware(template[0], "HEAD", CATALOG["rpi"].kconfig, tmp_path)
    assert sorted(path.name for path in out.iterdir()) == ["klipper.dict", "klipper.elf"]
    assert image_dict((out / "klipper.elf").read_bytes())["config"]["MCU"] == "linux"


def test_linux_elf_build_id_covers_the_debug_info_and_stripping_clears_it(template: tuple[Path, dict],
                                                                         tmp_path: Path) -> None:
    # Debian's ld hashes the whole output into the GNU build id: two build directories, two ids
    elves = [(build_firmware(template[0], "HEAD", CATALOG["rpi"].kconfig, tmp_path / name) / "klipper.elf")
             .read_bytes() for name in ("a", "b")]
    notes = [elf[elf.index(b"GNU\0") + 4:elf.index(b"GNU\0") + 24] for elf in elves]
    assert notes[0] != notes[1] and notes[0] != bytes(20)
    stripped = [strip_elf(elf) for elf in elves]
    assert stripped[0] == stripped[1] and len(stripped[0]) < len(elves[0])
    assert image_dict(stripped[0])["config"]["MCU"] == "linux"


def test_same_commit_and_config_give_identical_bytes(template: tuple[Path, dict], tmp_path: Path) -> None:
    first = build_firmware(template[0], "HEAD", H723.kconfig, tmp_path / "a")
    second = build_firmware(template[0], "HEAD", H723.kconfig, tmp_path / "b")
    for name in ("klipper.bin", "klipper.dict"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    # like -ggdb3, the ELF's debug strings name the build directory: equal once stripped
    elves = [(out / "klipper.elf").read_bytes() for out in (first, second)]
    assert elves[0] != elves[1] and str(first).encode() in elves[0]
    assert strip_elf(elves[0]) == strip_elf(elves[1])
    other = build_firmware(template[0], "HEAD", CATALOG["btt-kraken"].kconfig, tmp_path / "a")
    assert (other / "klipper.bin").read_bytes() != (first / "klipper.bin").read_bytes()


def test_old_and_current_builds_differ_in_version_and_protocol(template: tuple[Path, dict], tmp_path: Path) -> None:
    repo, versions = template
    old = json.loads((build_firmware(repo, versions["old"]["commit"], H723.kconfig, tmp_path) / "klipper.dict").read_text())
    new = json.loads((build_firmware(repo, versions["current"]["commit"], H723.kconfig, tmp_path) / "klipper.dict").read_text())
    assert (old["version"], new["version"]) == (versions["old"]["version"], versions["current"]["version"])
    assert "queue_step oid=%c interval=%u count=%hu add=%hi" in old["commands"]
    assert "queue_step oid=%c interval=%u count=%hu add=%hi" not in new["commands"]


def test_dirty_tree_version_gets_dirty_and_a_timestamp_host_suffix(checkout: Path, tmp_path: Path) -> None:
    with open(checkout / "src" / "sched.c", "a") as handle:
        handle.write("// local change\n")
    config, out = tmp_path / "h723.config", tmp_path / "out"
    config.write_text(H723.kconfig)
    make(checkout, config, out, "olddefconfig")
    output = make(checkout, config, out)
    version = json.loads((out / "klipper.dict").read_text())["version"]
    assert re.fullmatch(r"v0\.13\.0-3-g[0-9a-f]+-dirty" + SUFFIX, version)
    assert f"Version: {version}" in output


def test_without_git_the_version_is_a_question_mark(checkout: Path, tmp_path: Path) -> None:
    shutil.rmtree(checkout / ".git")
    config, out = tmp_path / "h723.config", tmp_path / "out"
    config.write_text(H723.kconfig)
    make(checkout, config, out, "olddefconfig")
    make(checkout, config, out)
    assert re.fullmatch(r"\?" + SUFFIX, json.loads((out / "klipper.dict").read_text())["version"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own the checkout as another user")
def test_git_refusing_a_foreign_checkout_gives_a_question_mark(checkout: Path, tmp_path: Path) -> None:
    subprocess.run(["chown", "-R", "65534:65534", str(checkout)], check=True)
    config, out = tmp_path / "h723.config", tmp_path / "out"
    config.write_text(H723.kconfig)
    make(checkout, config, out, "olddefconfig")
    make(checkout, config, out)
    assert re.fullmatch(r"\?" + SUFFIX, json.loads((out / "klipper.dict").read_text())["version"])


def test_unchanged_rebuild_does_nothing_and_clean_targets_remove_outputs(checkout: Path, tmp_path: Path) -> None:
    config, out = tmp_path / "h723.config", tmp_path / "out"
    config.write_text(H723.kconfig)
    make(checkout, config, out, "olddefconfig")
    make(checkout, config, out)
    assert "Nothing to be done" in make(checkout, config, out)
    make(checkout, config, out, "clean")
    assert not out.exists()
    (checkout / ".config").write_text(H723.kconfig)
    subprocess.run(["make", "distclean"], cwd=checkout, check=True, stdout=subprocess.PIPE)
    assert not (checkout / ".config").exists()


def test_builds_leave_the_checkout_clean(checkout: Path, tmp_path: Path) -> None:
    subprocess.run(["make", "olddefconfig"], cwd=checkout, check=True, stdout=subprocess.PIPE, env=GIT_ENV)
    subprocess.run(["make"], cwd=checkout, check=True, stdout=subprocess.PIPE, env=GIT_ENV)
    assert (checkout / "out" / "klipper.elf.hex").exists()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=checkout, env=GIT_ENV,
                            stdout=subprocess.PIPE, text=True, check=True).stdout
    assert status == ""


def test_the_emulator_starts_an_image_only_where_it_was_linked(template: tuple[Path, dict], tmp_path: Path) -> None:
    from pyinfra_ratos.sim.usb.firmware import boots
    ebb, manta = CATALOG["btt-ebb36-12"], CATALOG["btt-manta-m8p-11"]
    for board, other in ((ebb, manta), (manta, ebb)):
        image = (build_firmware(template[0], "HEAD", board.kconfig, tmp_path / board.id) / "klipper.bin").read_bytes()
        assert boots(image, board.app_address, board.mcu)["config"]["MCU"] == board.mcu
        # the reset handler lies inside the image at both addresses, but holds other code there
        assert boots(image, other.app_address, board.mcu) is None
