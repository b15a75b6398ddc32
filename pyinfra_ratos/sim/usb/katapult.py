"""An emulated Katapult bootloader: the device side of Katapult's serial protocol on a board's tty.

Written from the facts in ``shared/bootloaders-can.md`` §1 (katapult ``src/command.c``,
``src/flashcmd.c``, ``src/stm32/flash.c``), independently of the host client in
``pyinfra_ratos.firmware.katapult``, so each tests the other. Stdlib only (the emulator runs it
under Debian's python3).

What it copies from the firmware: the frame parser (header, length byte in words, trailer, CRC,
one NACK per loss of sync), the commands CONNECT, SEND_BLOCK, SEND_EOF, REQUEST_BLOCK, COMPLETE
(anything else: a command error), STM32 write rules (a block at a flash page start erases the page
unless it is erased already; an identical block resent is acknowledged; other data on written
flash away from a page start, or below the application start, is an error), a read-back compare
after each write, and the jump to the application ~100 ms after COMPLETE's ACK.

Fault knobs (the board's ``faults``): ``katapult-transfer-error`` / ``katapult-transfer-error@N``
(block N of a write, 3 by default, is answered with a command error on its first
``ERROR_TRIES`` tries in the emulator's run: as many as flashtool makes, a transfer that breaks once), ``katapult-wrong-start``
(CONNECT reports, and the device enforces, another application start than the board's).
"""

from __future__ import annotations

import struct
from typing import Callable

from .firmware import ERASED, Flash

PROTO_VERSION = 0x00010100  # 1.1.0
ACK, NACK, CMD_ERROR = 0xA0, 0xF1, 0xF2
MESSAGE_MIN, MESSAGE_MAX = 8, 128
DEFAULT_ERROR_BLOCK = 3
ERROR_TRIES = 3  # flashtool's tries of one SEND_BLOCK
BLOCK_SIZE = 64  # every Katapult port's Kconfig BLOCK_SIZE
COMPLETE_S = 0.1  # COMPLETE's ACK -> the jump to the application


def crc16(data: bytes) -> int:
    """Klipper's crc16_ccitt (src/generic/crc16_ccitt.c), bit by bit."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def response(code: int, words: bytes = b"") -> bytes:
    words += b"\x00" * (-len(words) % 4)
    body = bytes([code, len(words) // 4]) + words
    return b"\x01\x88" + body + struct.pack("<H", crc16(body)) + b"\x99\x03"


def wrong_start(start: int) -> int:
    """The start a Katapult built with another offset reports: its default 32 KiB, or 8 KiB."""
    return 0x08008000 if start != 0x08008000 else 0x08002000


class KatapultDevice:
    """One bootloader session's protocol state on top of the board's flash."""

    def __init__(self, flash: Flash, start: int, mcu: str, version: str, block_size: int,
                 faults: Callable[[], list[str]], log: Callable[..., None], on_complete: Callable[[], None],
                 error_spent: Callable[[], bool], spend_error: Callable[[], None]) -> None:
        self.flash = flash
        self.mcu, self.version, self.block_size = mcu, version, block_size
        self.faults = faults
        self.start = wrong_start(start) if "katapult-wrong-start" in faults() else start
        self.log = log
        self.on_complete = on_complete
        self.error_spent, self.spend_error = error_spent, spend_error
        self.buffer = b""
        self.need_sync = False
        self.nacked = False
        self.pages: set[int] = set()
        self.completed = False

    # --- framing (command_find_block) -------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Bytes from the host in, bytes to the host out."""
        self.buffer += data
        out = b""
        while self.buffer:
            if self.need_sync:
                at = self.buffer.find(b"\x01", 1)
                if at < 0:
                    self.buffer = b""
                    break
                self.buffer = self.buffer[at:]
                self.need_sync = False
            if self.buffer[0] != 0x01 or (len(self.buffer) > 1 and self.buffer[1] != 0x88):
                out += self._lost_sync()
                continue
            if len(self.buffer) < MESSAGE_MIN:
                break
            length = 4 * self.buffer[3] + 8
            if length > MESSAGE_MAX:
                out += self._lost_sync()
                continue
            if len(self.buffer) < length:
                break
            frame = self.buffer[:length]
            if frame[-2:] != b"\x99\x03" or struct.unpack("<H", frame[-4:-2])[0] != crc16(frame[2:-4]):
                out += self._lost_sync()
                continue
            self.buffer = self.buffer[length:]
            self.nacked = False
            out += self.dispatch(frame[2], frame[4:-4])
        return out

    def _lost_sync(self) -> bytes:
        self.need_sync = True
        if self.nacked:
            return b""
        self.nacked = True
        self.log("katapult-nack")
        return response(NACK)

    # --- commands (flashcmd.c) --------------------------------------------------------------------
    def dispatch(self, command: int, payload: bytes) -> bytes:
        echo = struct.pack("<I", command)
        if command == 0x11:
            return self.connect(echo)
        if command == 0x12 and len(payload) == 4 + self.block_size:
            return self.send_block(echo, struct.unpack_from("<I", payload)[0], payload[4:])
        if command == 0x13:
            self.log("katapult-eof", pages=len(self.pages))
            return response(ACK, echo + struct.pack("<I", len(self.pages)))
        if command == 0x14 and len(payload) == 4:
            address = struct.unpack("<I", payload)[0]
            data = self.flash.read(address, self.block_size) if self._inside(address) else b"\x00" * self.block_size
            return response(ACK, echo + payload + data.ljust(self.block_size, b"\x00"))
        if command == 0x15:
            if not self.completed:
                self.completed = True
                self.log("katapult-complete")
                self.on_complete()
            return response(ACK, echo)
        return response(CMD_ERROR)

    def connect(self, echo: bytes) -> bytes:
        def padded(text: str) -> bytes:
            raw = text.encode()
            return raw + b"\x00" * (-len(raw) % 4)
        self.log("katapult-connect", start=self.start)
        return response(ACK, echo + struct.pack("<III", PROTO_VERSION, self.start, self.block_size)
                        + padded(self.mcu) + b"\x00" * 4 + padded(self.version))

    def _inside(self, address: int) -> bool:
        return self.flash.base <= address and address + self.block_size <= self.flash.base + self.flash.size

    def _error_block(self) -> int | None:
        for fault in self.faults():
            name, _, block = fault.partition("@")
            if name == "katapult-transfer-error":
                return int(block) if block.isdigit() else DEFAULT_ERROR_BLOCK
        return None

    def send_block(self, echo: bytes, address: int, data: bytes) -> bytes:
        if address < self.start or not self._inside(address) or (address - self.start) % self.block_size:
            self.log("katapult-write-refused", address=address)
            return response(CMD_ERROR)
        index = (address - self.start) // self.block_size
        if index == self._error_block() and not self.error_spent():
            self.spend_error()
            self.log("katapult-transfer-error", block=index)
            return response(CMD_ERROR)
        found = self.flash.sector_at(address)
        assert found is not None  # _inside
        number, sector = found
        current = self.flash.read(address, self.block_size)
        if address == sector.address:
            if self.flash.read(sector.address, sector.size) != bytes([ERASED]) * sector.size:
                self.flash.erase(number)
                self.log("katapult-erase", address=sector.address, size=sector.size)
        elif current == data:
            return response(ACK, echo + struct.pack("<I", address))  # a resend: nothing to do
        elif current != bytes([ERASED]) * self.block_size:
            self.log("katapult-write-refused", address=address, why="out of order")
            return response(CMD_ERROR)
        if self.flash.program(address, data) or self.flash.read(address, self.block_size) != data:
            return response(CMD_ERROR)
        self.pages.add(number)
        return response(ACK, echo + struct.pack("<I", address))

