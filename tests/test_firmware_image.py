"""Reading version, MCU and load address from firmware bytes, and refusing images that do not fit."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import zlib
from pathlib import Path

import pytest

from pyinfra_ratos.firmware.catalog import Board, load_catalog
from pyinfra_ratos.firmware.image import check_image_for_board, find_dictionary, inspect_image
from pyinfra_ratos.sim.klipper_repo import build_firmware, create_template_repo

CATALOG = load_catalog()
H723 = CATALOG["btt-octopus-pro-h723-11"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory):
    """Build any catalog board with the fake Klipper tree at HEAD; (OUT folder, version)."""
    root = tmp_path_factory.mktemp("images")
    version = create_template_repo(root / "klipper")["current"]["version"]

    def build(board: Board) -> Path:
        return build_firmware(root / "klipper", "HEAD", board.kconfig, root / "work")
    build.version = version  # type: ignore[attr-defined]
    return build


def firmware(builds, board: Board) -> bytes:
    return (builds(board) / board.firmware_file).read_bytes()


def kind(board: Board) -> str:
    return board.firmware_file.rsplit(".", 1)[1]


def problems(data: bytes, image_kind: str, board: Board) -> list[str]:
    return check_image_for_board(inspect_image(data, image_kind), board)


# ---------------------------------------------------------------- real builds

def test_bin_reveals_version_mcu_and_the_exact_dictionary(builds) -> None:
    out = builds(H723)
    data = (out / "klipper.bin").read_bytes()
    info = inspect_image(data, "bin")
    assert info.dictionary == json.loads((out / "klipper.dict").read_bytes())
    assert (info.version, info.mcu) == (builds.version, "stm32h723xx")
    assert info.build_versions.startswith("gcc: ")
    assert info.config["CLOCK_REF_FREQ"] == 25_000_000
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    # a .bin does not say where it loads; its reset handler lies ~30 KiB in, as in real images
    assert info.app_address is None and 30 * 1024 <= info.reset_vector - H723.app_address < info.size
    assert info.vector_in_range(0x08020000) and not info.vector_in_range(0x08008000)


# the host MCU built natively here is an x86-64 program: tests/test_host_mcu_arch.py checks it per Pi
MCU_BOARDS = {board_id: board for board_id, board in CATALOG.items() if board.interface != "linux"}


@pytest.mark.parametrize("board", MCU_BOARDS.values(), ids=MCU_BOARDS.keys())
def test_every_catalog_build_fits_its_board(builds, board: Board) -> None:
    assert problems(firmware(builds, board), kind(board), board) == []


def test_uf2_blocks_flatten_to_the_image_and_its_base(builds) -> None:
    pico = CATALOG["rpi-pico"]
    info = inspect_image(firmware(builds, pico), "uf2")
    # no bootloader: boot stage 2 first, the application's vector table 256 bytes later
    assert (info.base_address, info.app_address) == (0x10000000, 0x10000100)
    assert info.mcu == "rp2040" and info.defects == ()


def test_elf_load_segment_gives_the_application_address(builds) -> None:
    info = inspect_image((builds(H723) / "klipper.elf").read_bytes(), "elf")
    assert info.app_address == H723.app_address and info.mcu == "stm32h723xx"


def test_linux_elf_carries_the_host_mcu_dictionary(builds) -> None:
    rpi = CATALOG["rpi"]
    info = inspect_image(firmware(builds, rpi), "elf")
    assert (info.mcu, info.version) == ("linux", builds.version)


# ---------------------------------------------------------------- rule 3: wrong image for the board

def test_image_for_another_mcu_is_refused(builds) -> None:
    skr3 = CATALOG["btt-skr-3"]  # H743 at the same address as the H723
    found = problems(firmware(builds, H723), "bin", skr3)
    assert len(found) == 1
    assert "btt-skr-3" in found[0] and "stm32h723xx" in found[0] and "stm32h743xx" in found[0]


def test_image_linked_for_another_bootloader_offset_is_refused_by_its_config(builds) -> None:
    ebb = CATALOG["btt-ebb36-12"]      # G0B1 without bootloader, 0x08000000
    manta = CATALOG["btt-manta-m8p-11"]  # G0B1 behind an 8 KiB bootloader, 0x08002000
    info = inspect_image(firmware(builds, ebb), "bin")
    # the handler ~30 KiB in lies inside the image at either address: the bytes cannot tell
    assert check_image_for_board(info, manta) == []
    found = check_image_for_board(info, manta, linked_at=0x08000000)
    assert len(found) == 1 and "btt-manta-m8p-11" in found[0]
    assert "linked for 0x08000000" in found[0] and "0x08002000" in found[0]
    assert check_image_for_board(info, ebb, linked_at=0x08000000) == []


def test_uf2_loading_at_another_address_is_refused(builds) -> None:
    pico = CATALOG["rpi-pico"]
    with_bootloader = dataclasses.replace(pico, app_address=0x10004000)
    found = problems(firmware(builds, pico), "uf2", with_bootloader)
    assert any("linked for 0x10000100" in problem and "0x10004000" in problem for problem in found)


def test_a_uf2_whose_config_names_another_address_does_not_belong_to_it(builds) -> None:
    pico = CATALOG["rpi-pico"]
    found = check_image_for_board(inspect_image(firmware(builds, pico), "uf2"), pico, linked_at=0x10004000)
    assert any("loads at 0x10000100 but its config links it for 0x10004000" in problem for problem in found)


# ---------------------------------------------------------------- a real-layout image

def real_layout_g0b1_bin(linked_at: int, version: str = "v0.13.0-730-g84104bbbd") -> bytes:
    """A .bin laid out as Klipper's STM32 images are (made here, no Klipper code): the Cortex-M
    vector table (stack top, reset and 46 more vectors pointing at a default handler), .text with
    the reset handler ~30 KiB in, then .rodata holding the zlib-compressed data dictionary."""
    dictionary = json.dumps({"app": "Klipper", "version": version, "build_versions": "gcc: 13.2.1",
                             "config": {"MCU": "stm32g0b1xx", "CLOCK_FREQ": 64000000}}).encode()
    reset_handler = linked_at + 0x7804  # ~30 KiB into the image, as measured on real builds
    default_handler = linked_at + 0x7880
    vectors = struct.pack("<II", 0x20024000, reset_handler | 1) + struct.pack("<I", default_handler | 1) * 46
    text = bytearray(vectors.ljust(0x9C00, b"\x00"))  # ~39 KiB of code: the handler is not near its end
    text[0x7804:0x7808] = b"\x72\xb6\x00\xbf"  # cpsid i; nop: thumb code, not a marker of ours
    image = bytes(text) + b"\x00" * 64 + zlib.compress(dictionary, 9)
    return image + b"\xff" * (-len(image) % 8)


def test_a_real_layout_bin_gives_its_dictionary_but_not_its_address() -> None:
    ebb, manta = CATALOG["btt-ebb36-12"], CATALOG["btt-manta-m8p-11"]
    for linked_at, board, other in ((0x08000000, ebb, manta), (0x08002000, manta, ebb)):
        info = inspect_image(real_layout_g0b1_bin(linked_at), "bin")
        assert (info.mcu, info.version, info.app_address) == ("stm32g0b1xx", "v0.13.0-730-g84104bbbd", None)
        # 0 and 8 KiB both put the handler inside the image: the vector check alone passes both
        assert info.vector_in_range(0x08000000) and info.vector_in_range(0x08002000)
        assert check_image_for_board(info, other) == []
        # the resolved config stored with the artifact settles it
        assert check_image_for_board(info, board, linked_at=linked_at) == []
        assert any(f"linked for {linked_at:#010x}" in problem
                   for problem in check_image_for_board(info, other, linked_at=linked_at))


def test_reset_vector_patched_elsewhere_is_refused(builds) -> None:
    data = bytearray(firmware(builds, H723))
    struct.pack_into("<I", data, 4, 0x08000101)
    assert any("reset vector 0x08000101" in problem for problem in problems(bytes(data), "bin", H723))


def test_stack_pointer_outside_ram_is_not_bootable(builds) -> None:
    data = bytearray(firmware(builds, H723))
    struct.pack_into("<I", data, 0, 0x08001000)
    assert any("stack pointer 0x8001000" in problem for problem in problems(bytes(data), "bin", H723))


def test_image_without_a_dictionary_is_refused(builds) -> None:
    data = firmware(builds, H723)
    start = data.index(b"\x78\xda")
    blank = data[:start] + b"\0" * (len(data) - start)
    found = problems(blank, "bin", H723)
    assert inspect_image(blank, "bin").version is None
    assert any("no Klipper data dictionary" in problem and H723.id in problem for problem in found)


def test_truncated_bin_loses_its_dictionary(builds) -> None:
    data = firmware(builds, H723)
    assert find_dictionary(data[:-64]) is None
    assert any("no Klipper data dictionary" in problem for problem in problems(data[:-64], "bin", H723))


def test_truncated_uf2_is_reported(builds) -> None:
    pico = CATALOG["rpi-pico"]
    data = firmware(builds, pico)
    found = problems(data[:-512], "uf2", pico)
    assert any("blocks (truncated" in problem for problem in found)


def test_image_larger_than_the_flash_is_refused(builds) -> None:
    data = firmware(builds, H723) + b"\0" * (1024 * 1024)
    assert any("past the end of flash" in problem for problem in problems(data, "bin", H723))


def test_a_chance_zlib_header_in_code_is_skipped(builds) -> None:
    data = bytearray(firmware(builds, H723))
    data[64:70] = b"\x78\xda\x01\x02\x03\x04"  # looks like a stream start, inflates to nothing
    assert inspect_image(bytes(data), "bin").mcu == "stm32h723xx"


def test_not_an_elf_is_a_defect_not_a_crash() -> None:
    info = inspect_image(b"hello", "elf")
    assert info.dictionary is None and "not an ELF file" in info.defects


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="hex"):
        inspect_image(b"", "hex")
