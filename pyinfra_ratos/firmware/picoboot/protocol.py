"""PICOBOOT commands and status, and UF2 -> flash pages. Pure Python (struct only).

Sources (see ../shared/bootloaders-can.md section 5): ``boot/picoboot.h`` and the BOOTSEL ROM's
``usb_boot_device.c``/``async_task.c`` (pico-bootrom-rp2040), ``boot/uf2.h``, and how Klipper's
``lib/rp2040_flash/main.c`` filters UF2 blocks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = 0x431FD10B
COMMAND_SIZE = 32
# command ids (bit 7: the data phase runs device -> host)
EXCLUSIVE_ACCESS, REBOOT, FLASH_ERASE, READ, WRITE, EXIT_XIP, ENTER_CMD_XIP, EXEC, VECTORIZE_FLASH = (
    0x01, 0x02, 0x03, 0x84, 0x05, 0x06, 0x07, 0x08, 0x09)
NOT_EXCLUSIVE, EXCLUSIVE, EXCLUSIVE_AND_EJECT = 0, 1, 2
# control requests on the PICOBOOT interface
IF_RESET, IF_CMD_STATUS = 0x41, 0x42
IF_RESET_TYPE, IF_CMD_STATUS_TYPE = 0x41, 0xC1
ENDPOINT_OUT, ENDPOINT_IN = 0x03, 0x84
PICOBOOT_CLASS = 0xFF
BOOTSEL_IDS = {(0x2E8A, 0x0003): "rp2040", (0x2E8A, 0x000F): "rp2350"}

FLASH_START, FLASH_END = 0x10000000, 0x12000000
FLASH_PAGE, FLASH_SECTOR = 256, 4096

STATUS_TEXT = {
    0: "ok", 1: "unknown command", 2: "invalid command length", 3: "invalid transfer length",
    4: "invalid address", 5: "bad alignment", 6: "interleaved write", 7: "rebooting", 8: "unknown error",
}

UF2_MAGIC_START0, UF2_MAGIC_START1, UF2_MAGIC_END = 0x0A324655, 0x9E5D5157, 0x0AB16F30
UF2_FLAG_NOT_MAIN_FLASH, UF2_FLAG_FAMILY_ID_PRESENT = 0x1, 0x2000
RP2040_FAMILY_ID = 0xE48BFF56


class PicobootError(RuntimeError):
    """A PICOBOOT exchange that failed; says which command and, when known, the device's status."""


# (command id) -> (bCmdSize, args format); the transfer length is derived from the arguments
_LAYOUT = {
    EXCLUSIVE_ACCESS: (1, "<B"), REBOOT: (12, "<III"), FLASH_ERASE: (8, "<II"), READ: (8, "<II"),
    WRITE: (8, "<II"), EXIT_XIP: (0, ""), ENTER_CMD_XIP: (0, ""), EXEC: (4, "<I"), VECTORIZE_FLASH: (4, "<I"),
}


def command(token: int, command_id: int, *args: int) -> bytes:
    """The 32-byte command packet: magic, token, id, argument size, transfer length, arguments."""
    if command_id not in _LAYOUT:
        raise ValueError(f"unknown PICOBOOT command {command_id:#04x}")
    size, layout = _LAYOUT[command_id]
    packed = struct.pack(layout, *args) if layout else b""
    transfer = args[1] if command_id in (READ, WRITE) else 0
    return struct.pack("<IIBBHI", MAGIC, token, command_id, size, 0, transfer) + packed.ljust(16, b"\0")


def transfer_length(packet: bytes) -> int:
    return struct.unpack_from("<I", packet, 12)[0]


@dataclass(frozen=True)
class Status:
    token: int
    code: int
    command_id: int
    in_progress: bool

    @property
    def text(self) -> str:
        return STATUS_TEXT.get(self.code, f"status {self.code}")


def parse_status(data: bytes) -> Status:
    """The 16-byte answer of IF_CMD_STATUS: token, status code, command id, in progress."""
    if len(data) < 16:
        raise PicobootError(f"command status is {len(data)} bytes, expected 16")
    token, code, command_id, busy = struct.unpack_from("<IIBB", data)
    return Status(token, code, command_id, bool(busy))


def uf2_pages(data: bytes) -> dict[int, bytes]:
    """The 256-byte flash pages a UF2 file writes (address -> bytes), as the ROM and rp2040_flash
    take them: RP2040 family, main flash, 256-byte payloads at 256-aligned flash addresses. Other
    blocks are skipped, as they do; a file with none, or with damaged magics, is refused."""
    if len(data) % 512:
        raise PicobootError(f"UF2 file size {len(data)} is not a multiple of 512")
    pages: dict[int, bytes] = {}
    for offset in range(0, len(data), 512):
        start0, start1, flags, address, size, _number, _total, family = struct.unpack_from("<8I", data, offset)
        if (start0, start1) != (UF2_MAGIC_START0, UF2_MAGIC_START1) or \
                struct.unpack_from("<I", data, offset + 508)[0] != UF2_MAGIC_END:
            raise PicobootError(f"UF2 block at file offset {offset} has bad magic numbers")
        if flags & UF2_FLAG_NOT_MAIN_FLASH or not flags & UF2_FLAG_FAMILY_ID_PRESENT \
                or family != RP2040_FAMILY_ID or size != FLASH_PAGE or address % FLASH_PAGE \
                or not FLASH_START <= address <= FLASH_END - FLASH_PAGE:
            continue
        pages[address] = data[offset + 32:offset + 32 + FLASH_PAGE]
    if not pages:
        raise PicobootError("the UF2 file has no RP2040 flash page")
    return dict(sorted(pages.items()))


def sectors_of(pages: dict[int, bytes]) -> list[int]:
    """The 4 KiB sectors the pages touch (each erased once before writing)."""
    return sorted({address - address % FLASH_SECTOR for address in pages})


def image_of(pages: dict[int, bytes]) -> tuple[int, bytes]:
    """(first address, the flat bytes from it to the last page; gaps read as erased 0xFF)."""
    first = min(pages)
    flat = bytearray(b"\xff" * (max(pages) + FLASH_PAGE - first))
    for address, page in pages.items():
        flat[address - first:address - first + FLASH_PAGE] = page
    return first, bytes(flat)
