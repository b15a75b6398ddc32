"""One PICOBOOT flash with read-back, over any transport (pyusb's, or the farm's device model).

The order is rp2040_flash's (reset the interface, exclusive access, exit XIP, erase each touched
4 KiB sector, write each 256-byte page, reboot) plus what it lacks: every written page is read back
through PICOBOOT READ and compared before the reboot, so a bad write leaves the board in BOOTSEL
(nothing half-written boots) and says which page differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .protocol import (
    ENDPOINT_IN, ENDPOINT_OUT, EXCLUSIVE, EXCLUSIVE_ACCESS, EXIT_XIP, FLASH_ERASE, FLASH_PAGE, FLASH_SECTOR,
    IF_CMD_STATUS, IF_CMD_STATUS_TYPE, IF_RESET, IF_RESET_TYPE, READ, REBOOT, WRITE, PicobootError, command,
    parse_status, sectors_of,
)

NAMES = {EXCLUSIVE_ACCESS: "EXCLUSIVE_ACCESS", EXIT_XIP: "EXIT_XIP", FLASH_ERASE: "FLASH_ERASE", READ: "READ",
         WRITE: "WRITE", REBOOT: "REBOOT"}
COMMAND_TIMEOUT_MS, DATA_TIMEOUT_MS, ACK_TIMEOUT_MS = 3000, 10000, 3000


class Transport(Protocol):
    """Bulk endpoints and control transfers of the PICOBOOT interface; errors raise OSError."""

    interface: int

    def bulk_out(self, endpoint: int, data: bytes, timeout_ms: int) -> int: ...
    def bulk_in(self, endpoint: int, length: int, timeout_ms: int) -> bytes: ...
    def control(self, request_type: int, request: int, value: int, index: int, data_or_length: bytes | int,
                timeout_ms: int) -> bytes: ...
    def clear_halt(self, endpoint: int) -> None: ...


@dataclass
class FlashResult:
    pages: int
    sectors: int
    bytes_written: int
    bytes_read_back: int
    seconds: float
    read_back: bool


class Picoboot:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.token = 0

    # --- the exchange -------------------------------------------------------------------------
    def reset(self) -> None:
        for endpoint in (ENDPOINT_OUT, ENDPOINT_IN):
            self.transport.clear_halt(endpoint)
        self.transport.control(IF_RESET_TYPE, IF_RESET, 0, self.transport.interface, b"", COMMAND_TIMEOUT_MS)

    def status(self):
        return parse_status(self.transport.control(IF_CMD_STATUS_TYPE, IF_CMD_STATUS, 0, self.transport.interface,
                                                   16, COMMAND_TIMEOUT_MS))

    def run(self, command_id: int, *args: int, data: bytes = b"", read: int = 0) -> bytes:
        """One command: the packet, its data phase, the acknowledgement in the other direction."""
        self.token += 1
        packet = command(self.token, command_id, *args)
        name = NAMES.get(command_id, f"{command_id:#04x}")
        try:
            self.transport.bulk_out(ENDPOINT_OUT, packet, COMMAND_TIMEOUT_MS)
            received = b""
            if read:
                received = bytes(self.transport.bulk_in(ENDPOINT_IN, read, DATA_TIMEOUT_MS))
                self.transport.bulk_out(ENDPOINT_OUT, b"", ACK_TIMEOUT_MS)  # the host's acknowledgement
            else:
                if data:
                    self.transport.bulk_out(ENDPOINT_OUT, data, DATA_TIMEOUT_MS)
                self.transport.bulk_in(ENDPOINT_IN, 1, ACK_TIMEOUT_MS if data else DATA_TIMEOUT_MS)
        except OSError as error:
            raise PicobootError(f"{name} {self._args(args)}failed: {self._why(error)}") from error
        if read and len(received) != read:
            raise PicobootError(f"{name} {self._args(args)}returned {len(received)} of {read} bytes")
        return received

    @staticmethod
    def _args(args: tuple[int, ...]) -> str:
        return f"at {args[0]:#010x} " if args and command_id_has_address(args) else ""

    def _why(self, error: OSError) -> str:
        try:
            status = self.status()
            self.reset()  # un-stall, so the board can be asked again (or rebooted)
        except OSError:
            return f"{error} (the device did not answer the status request)"
        return f"{error}; device status: {status.text} (code {status.code})"

    # --- a flash ------------------------------------------------------------------------------
    def read(self, address: int, size: int) -> bytes:
        return self.run(READ, address, size, read=size)

    def flash(self, pages: dict[int, bytes], progress: Callable[[str], None] = lambda _: None) -> FlashResult:
        """Erase, write and read back ``pages`` (from :func:`~.protocol.uf2_pages`); raises on any
        failure or difference, before the reboot."""
        started = time.monotonic()
        sectors = sectors_of(pages)
        progress("Resetting interface")
        self.reset()
        progress("Locking")
        self.run(EXCLUSIVE_ACCESS, EXCLUSIVE)
        progress("Exiting XIP mode")
        self.run(EXIT_XIP)
        progress(f"Erasing {len(sectors)} sectors")
        for sector in sectors:
            self.run(FLASH_ERASE, sector, FLASH_SECTOR)
        progress(f"Flashing {len(pages)} pages")
        shown = -1
        for count, (address, page) in enumerate(pages.items(), 1):
            self.run(WRITE, address, FLASH_PAGE, data=page)
            if count * 100 // len(pages) != shown:  # the printer agent passes these on (one per percent)
                shown = count * 100 // len(pages)
                progress(f"progress download {count * FLASH_PAGE} {len(pages) * FLASH_PAGE}")
        progress("Reading back")
        progress(f"progress verify 0 {len(pages) * FLASH_PAGE}")
        read_bytes = 0
        for sector in sectors:  # one READ per sector: 16 pages a round trip
            wanted = [(a, p) for a, p in pages.items() if sector <= a < sector + FLASH_SECTOR]
            first, last = wanted[0][0], wanted[-1][0] + FLASH_PAGE
            got = self.read(first, last - first)
            read_bytes += len(got)
            for address, page in wanted:
                if got[address - first:address - first + FLASH_PAGE] != page:
                    raise PicobootError(f"read-back differs at page {address:#010x}: the board stays in BOOTSEL")
        return FlashResult(len(pages), len(sectors), len(pages) * FLASH_PAGE, read_bytes,
                           time.monotonic() - started, True)

    def reboot(self, delay_ms: int = 500) -> None:
        """Boot the flashed application (PC 0: a normal boot) after ``delay_ms``."""
        self.run(REBOOT, 0, 0, delay_ms)


def command_id_has_address(args: tuple[int, ...]) -> bool:
    return len(args) >= 2
