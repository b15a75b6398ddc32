"""The device side of PICOBOOT: an RP2040 BOOTSEL ROM's flash and command handling, with fault knobs.

Modelled on pico-bootrom-rp2040 (``usb_boot_device.c``, ``async_task.c``; ../shared/bootloaders-
can.md section 5): 32-byte commands with magic and token on bulk OUT 0x03, data in the command's
direction, the acknowledgement the other way (a zero-length packet on IN after an OUT command), a
16-byte status on the interface's control request 0x42, 0x41 resetting the interface. A bad packet
stalls both endpoints; a failed task sets the status and stalls. Flash: 2 MiB at 0x10000000, 4 KiB
erase sectors that fill 0xFF, 256-byte page writes that only clear bits (as NOR flash programs).

Self-contained (struct only): the farm's USB handler runs it on a Pi where only the sim is copied.
It is also a transport for the client directly (:meth:`Bootrom.bulk_out` and friends), for unit
tests and the bench. Faults (the scenario's ``faults``): ``transfer-error-block-N`` (the N-th WRITE,
counting from 1, fails: status INVALID_ADDRESS... as a flash error would, endpoint stalled),
``no-return-after-leave`` (REBOOT accepted, the board never boots: gone from USB),
``corrupt-write`` (the first WRITE silently flips a bit: only a read-back notices).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

MAGIC = 0x431FD10B
FLASH_BASE, FLASH_SIZE, SECTOR, PAGE = 0x10000000, 2 * 1024 * 1024, 4096, 256
OK, UNKNOWN_CMD, INVALID_CMD_LENGTH, INVALID_TRANSFER_LENGTH, INVALID_ADDRESS, BAD_ALIGNMENT = 0, 1, 2, 3, 4, 5
UNKNOWN_ERROR = 8
SIZES = {0x01: 1, 0x02: 12, 0x03: 8, 0x84: 8, 0x05: 8, 0x06: 0, 0x07: 0, 0x08: 4, 0x09: 4}


class Stall(OSError):
    """What the host sees on a stalled endpoint (libusb: LIBUSB_ERROR_PIPE)."""

    def __init__(self, what: str) -> None:
        super().__init__(32, f"Pipe error (endpoint stalled: {what})")


@dataclass
class Bootrom:
    faults: tuple[str, ...] = ()
    interface: int = 1
    flash: bytearray = field(default_factory=lambda: bytearray(b"\xff" * FLASH_SIZE))
    token: int = 0
    status: int = OK
    command_id: int = 0
    stalled: bool = False
    exclusive: int = 0
    pending: tuple[int, int, int] | None = None  # (command id, address, remaining) of a data phase
    ack_due: bool = False
    writes: int = 0
    rebooted: bool = False
    events: list[tuple] = field(default_factory=list)

    # --- control requests on the PICOBOOT interface -------------------------------------------
    def control(self, request_type: int, request: int, value: int, index: int, data_or_length, timeout_ms: int = 0):
        if (request_type, request) == (0x41, 0x41):
            self.stalled, self.pending, self.ack_due, self.exclusive = False, None, False, 0
            return b""
        if (request_type, request) == (0xC1, 0x42):
            return struct.pack("<IIBB6x", self.token, self.status, self.command_id, 0)
        raise Stall(f"control request {request_type:#04x}/{request:#04x}")

    def clear_halt(self, endpoint: int) -> None:
        self.stalled = False

    # --- bulk endpoints -----------------------------------------------------------------------
    def bulk_out(self, endpoint: int, data: bytes, timeout_ms: int = 0) -> int:
        if self.stalled:
            raise Stall("OUT")
        data = bytes(data)
        if self.pending is not None and self.pending[0] == 0x05:
            return self._write_data(data)
        if self.pending is not None and self.pending[0] == 0x84:
            raise self._fail(INVALID_TRANSFER_LENGTH, "data OUT during a READ")
        if self.ack_due and not data:  # the host's acknowledgement of a READ
            self.ack_due = False
            return 0
        return self._command(data)

    def bulk_in(self, endpoint: int, length: int, timeout_ms: int = 0) -> bytes:
        if self.stalled:
            raise Stall("IN")
        if self.pending is not None and self.pending[0] == 0x84:
            _, address, remaining = self.pending
            chunk = min(length, remaining)
            self.pending = (0x84, address + chunk, remaining - chunk) if remaining > chunk else None
            self.ack_due = self.pending is None
            return self.read(address, chunk)
        if self.ack_due:  # the zero-length packet closing an OUT command
            self.ack_due = False
            return b""
        raise Stall("IN with nothing to send")

    # --- commands -----------------------------------------------------------------------------
    def _fail(self, code: int, what: str) -> Stall:
        self.status, self.stalled, self.pending, self.ack_due = code, True, None, False
        self.events.append(("error", self.command_id, code, what))
        return Stall(what)

    def _command(self, packet: bytes) -> int:
        if len(packet) != 32 or struct.unpack_from("<I", packet)[0] != MAGIC:
            raise self._fail(UNKNOWN_ERROR, "bad command packet")
        _magic, token, command_id, size, _pad, transfer = struct.unpack_from("<IIBBHI", packet)
        args = packet[16:]
        self.token, self.command_id, self.status = token, command_id, OK
        self.events.append(("command", command_id))
        if command_id not in SIZES:
            raise self._fail(UNKNOWN_CMD, f"command {command_id:#04x}")
        if size != SIZES[command_id]:
            raise self._fail(INVALID_CMD_LENGTH, f"command {command_id:#04x} size {size}")
        if command_id in (0x03, 0x84, 0x05):
            address, length = struct.unpack_from("<II", args)
            if transfer != (0 if command_id == 0x03 else length):
                raise self._fail(INVALID_TRANSFER_LENGTH, f"transfer {transfer} for {length}")
            if not (FLASH_BASE <= address and address + length <= FLASH_BASE + FLASH_SIZE):
                raise self._fail(INVALID_ADDRESS, f"{address:#x}+{length}")
            unit = SECTOR if command_id == 0x03 else PAGE
            if address % unit or (command_id != 0x84 and length % unit):
                raise self._fail(BAD_ALIGNMENT, f"{address:#x}+{length}")
            if command_id == 0x03:
                self.erase(address, length)
                self.events.append(("erase", address, length))
            else:
                self.pending = (command_id, address, length)
                return len(packet)
        elif transfer:
            raise self._fail(INVALID_TRANSFER_LENGTH, f"transfer {transfer} for command {command_id:#04x}")
        elif command_id == 0x01:
            self.exclusive = args[0]
        elif command_id == 0x02:
            self.rebooted = True
            self.events.append(("reboot", struct.unpack_from("<I", args, 8)[0]))
            self.on_reboot()
        self.ack_due = True
        return len(packet)

    def _write_data(self, data: bytes) -> int:
        _, address, remaining = self.pending  # type: ignore[misc]
        if len(data) > remaining:
            raise self._fail(INVALID_TRANSFER_LENGTH, "more data than announced")
        if not self.exclusive:
            raise self._fail(6, "write without exclusive access (interleaved with mass storage)")
        self.writes += 1
        failing = [int(m.group(1)) for f in self.faults if (m := re.fullmatch(r"transfer-error-block-(\d+)", f))]
        if self.writes in failing:
            raise self._fail(INVALID_ADDRESS, f"flash error in write {self.writes} at {address:#x}")
        if "corrupt-write" in self.faults and self.writes == 1:
            data = bytes([data[0] ^ 0x01]) + data[1:]
        problem = self.program(address, data)
        if problem:
            raise self._fail(UNKNOWN_ERROR, problem)
        left = remaining - len(data)
        self.pending = (0x05, address + len(data), left) if left else None
        if not left:
            self.events.append(("write", address + len(data) - remaining, remaining))
            self.ack_due = True
        return len(data)

    # --- the flash (the farm's emulator overrides these with the board's flash file) ----------
    def read(self, address: int, size: int) -> bytes:
        return bytes(self.flash[address - FLASH_BASE:address - FLASH_BASE + size])

    def erase(self, address: int, length: int) -> None:
        self.flash[address - FLASH_BASE:address - FLASH_BASE + length] = b"\xff" * length

    def program(self, address: int, data: bytes) -> str | None:
        offset = address - FLASH_BASE
        # NOR flash: programming only clears bits
        self.flash[offset:offset + len(data)] = bytes(a & b for a, b in zip(self.flash[offset:offset + len(data)], data))
        return None

    def on_reboot(self) -> None:
        """The watchdog reboot the ROM schedules (the emulator re-enumerates the board)."""

    @property
    def boots(self) -> bool:
        """Whether the board came back after REBOOT (``no-return-after-leave``: it never does)."""
        return self.rebooted and "no-return-after-leave" not in self.faults
