"""The PICOBOOT client and UF2 reader, byte for byte (../shared/bootloaders-can.md section 5), and one
flash with read-back against the farm's BOOTSEL ROM model, with its fault knobs."""

from __future__ import annotations

import struct

import pytest

from pyinfra_ratos.firmware.picoboot.client import Picoboot
from pyinfra_ratos.firmware.picoboot.protocol import (
    EXCLUSIVE_ACCESS, FLASH_ERASE, READ, REBOOT, WRITE, PicobootError, command, image_of, parse_status, sectors_of,
    uf2_pages,
)
from pyinfra_ratos.sim.usb.picoboot import Bootrom


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(("packet", "expected"), [
    # magic 0x431FD10B, token, id, bCmdSize, 2 unused, dTransferLength, 16 bytes of arguments
    (command(1, EXCLUSIVE_ACCESS, 1), "0bd11f43 01000000 01 01 0000 00000000 01" + "00" * 15),
    (command(2, FLASH_ERASE, 0x10000000, 4096), "0bd11f43 02000000 03 08 0000 00000000 00000010 00100000" + "00" * 8),
    (command(3, WRITE, 0x10000100, 256), "0bd11f43 03000000 05 08 0000 00010000 00010010 00010000" + "00" * 8),
    (command(4, READ, 0x10000000, 4096), "0bd11f43 04000000 84 08 0000 00100000 00000010 00100000" + "00" * 8),
    (command(5, REBOOT, 0, 0, 500), "0bd11f43 05000000 02 0c 0000 00000000 00000000 00000000 f4010000" + "00" * 4),
])
def test_commands_are_the_32_bytes_picoboot_h_describes(packet: bytes, expected: str) -> None:
    assert len(packet) == 32 and packet == h(expected)


def test_the_status_answer_names_token_code_and_command() -> None:
    status = parse_status(h("05000000 04000000 05 00 000000000000"))
    assert (status.token, status.code, status.command_id, status.in_progress, status.text) == (
        5, 4, WRITE, False, "invalid address")


def uf2_block(address: int, payload: bytes, number: int = 0, total: int = 1, flags: int = 0x2000,
              family: int = 0xE48BFF56, size: int = 256) -> bytes:
    head = struct.pack("<8I", 0x0A324655, 0x9E5D5157, flags, address, size, number, total, family)
    return head + payload.ljust(476, b"\0") + struct.pack("<I", 0x0AB16F30)


def test_a_uf2_block_is_read_as_its_flash_page() -> None:
    block = uf2_block(0x10000100, bytes(range(256)))
    assert block[:32] == h("55 46 32 0a 57 51 5d 9e 00 20 00 00 00 01 00 10 00 01 00 00 00 00 00 00 "
                           "01 00 00 00 56 ff 8b e4") and block[-4:] == h("30 6f b1 0a") and len(block) == 512
    assert uf2_pages(block) == {0x10000100: bytes(range(256))}


def test_uf2_blocks_rp2040_flash_does_not_take_are_skipped_and_damage_is_refused() -> None:
    good = uf2_block(0x10000000, b"\x11" * 256)
    skipped = [uf2_block(0x10001000, b"\x22" * 256, flags=0x2001),           # NOT_MAIN_FLASH
               uf2_block(0x10002000, b"\x33" * 256, family=0xE48BFF59),      # RP2350 family
               uf2_block(0x20000000, b"\x44" * 256),                         # RAM
               uf2_block(0x10003080, b"\x55" * 256)]                         # not 256-aligned
    assert list(uf2_pages(good + b"".join(skipped))) == [0x10000000]
    with pytest.raises(PicobootError, match="bad magic"):
        uf2_pages(good[:-4] + b"\0\0\0\0")
    with pytest.raises(PicobootError, match="no RP2040 flash page"):
        uf2_pages(b"".join(skipped))


def image(pages: int = 40) -> dict[int, bytes]:
    return {0x10000000 + 256 * n: bytes((n + i) & 0xFF for i in range(256)) for n in range(pages)}


def test_a_flash_erases_writes_reads_back_and_the_flash_holds_the_image() -> None:
    rom = Bootrom()
    pages = image()
    result = Picoboot(rom).flash(pages)
    first, flat = image_of(pages)
    assert rom.read(first, len(flat)) == flat
    assert (result.pages, result.sectors, result.bytes_written, result.read_back) == (40, 3, 10240, True)
    assert [e[1] for e in rom.events if e[0] == "erase"] == sectors_of(pages) == [0x10000000, 0x10001000, 0x10002000]
    assert not rom.rebooted  # only once the caller asks


def test_a_flash_says_its_bytes_written_for_the_agents_progress() -> None:
    said: list[str] = []
    Picoboot(Bootrom()).flash(image(), progress=said.append)
    written = [line for line in said if line.startswith("progress download ")]
    assert len(written) == 40 and written[-1] == "progress download 10240 10240"  # one per percent at most
    assert "progress verify 0 10240" in said


def test_a_transfer_error_in_block_n_names_the_page_and_the_device_status() -> None:
    rom = Bootrom(faults=("transfer-error-block-7",))
    with pytest.raises(PicobootError, match=r"WRITE at 0x10000600 failed: .*invalid address \(code 4\)"):
        Picoboot(rom).flash(image())
    assert not rom.rebooted and not rom.stalled  # un-stalled: the board can be asked again, or rebooted


def test_a_silently_corrupted_page_is_caught_by_the_read_back_before_any_reboot() -> None:
    rom = Bootrom(faults=("corrupt-write",))
    with pytest.raises(PicobootError, match="read-back differs at page 0x10000000"):
        Picoboot(rom).flash(image())
    assert not rom.rebooted


def test_a_bad_packet_stalls_both_endpoints_until_the_interface_is_reset() -> None:
    rom = Bootrom()
    with pytest.raises(OSError):
        rom.bulk_out(0x03, b"\0" * 32)
    with pytest.raises(OSError):
        rom.bulk_in(0x84, 1)
    client = Picoboot(rom)
    client.reset()
    client.run(EXCLUSIVE_ACCESS, 1)
    assert client.status().code == 0
