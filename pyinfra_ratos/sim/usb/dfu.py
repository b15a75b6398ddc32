"""The STM32 ROM DfuSe state machine (DFU 1.1 + ST extensions, AN3156) over a sector-accurate flash.

Stdlib only. Transport-free: the emulator feeds it class requests and acts on what it returns.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .firmware import Flash

APP_IDLE, DFU_IDLE, DNLOAD_SYNC, DNBUSY, DNLOAD_IDLE = 0, 2, 3, 4, 5
MANIFEST_SYNC, MANIFEST, UPLOAD_IDLE, DFU_ERROR = 6, 7, 9, 10

STATUS = {
    "OK": 0, "errTARGET": 1, "errWRITE": 3, "errERASE": 4, "errPROG": 6,
    "errADDRESS": 8, "errUNKNOWN": 14, "errSTALLEDPKT": 15,
}
DETACH, DNLOAD, UPLOAD, GETSTATUS, CLRSTATUS, GETSTATE, ABORT = range(7)

# Poll timeouts (ms) the ROM announces: tiny by default so tests run fast, realistic with slow-erase.
ERASE_MS_PER_KIB = 0.05
SLOW_ERASE_MS_PER_KIB = 12  # H7: ~1.5 s per 128 KiB sector
WRITE_MS = 1


class Stall(Exception):
    """The device answers the request with a STALL handshake."""


class CorruptWrite:
    """Fault ``corrupt-write``: one flipped byte in what gets programmed, once per emulator run.

    Armed by the first sector erase; the 3rd data block programmed after it has its first byte
    inverted (the ROM still answers OK, as a marginal flash cell would). Only that one write is
    hit, so a second flash of the same image repairs the board: deterministic for tests.
    """

    NTH_BLOCK = 3

    def __init__(self) -> None:
        self.writes: int | None = None  # None: no erase yet; -1: already fired

    def erased(self) -> None:
        if self.writes is None:
            self.writes = 0

    def apply(self, data: bytes) -> bytes:
        if self.writes is None or self.writes < 0 or not data:
            return data
        self.writes += 1
        if self.writes < self.NTH_BLOCK:
            return data
        self.writes = -1
        return bytes([data[0] ^ 0xFF]) + data[1:]


class DfuSe:
    def __init__(self, flash: Flash, transfer_size: int, slow_erase: bool,
                 log: Callable[..., None]) -> None:
        self.flash = flash
        self.transfer_size = transfer_size
        self.slow_erase = slow_erase
        self.log = log
        self.alt = 0
        self.state = DFU_IDLE
        self.status = STATUS["OK"]
        self.poll_ms = 0
        self.address = flash.base
        self.pending: tuple[int, bytes] | None = None
        self.after_busy = (DNLOAD_IDLE, STATUS["OK"])
        self.on_leave: Callable[[], None] = lambda: None  # manifest reported: the ROM jumps
        self.on_leave_request: Callable[[], None] = lambda: None  # zero-length DNLOAD received
        self.corrupt: CorruptWrite | None = None  # fault corrupt-write, shared by the board's sessions

    # --- requests -----------------------------------------------------------------------------
    def request(self, request: int, value: int, data: bytes, length: int) -> bytes:
        """One class request to the interface; IN data returned, Stall raised like the ROM does."""
        if request == GETSTATUS:
            return self._getstatus()
        if request == GETSTATE:
            return bytes([self.state])
        if request == CLRSTATUS:
            if self.state == DFU_ERROR:
                self.state, self.status = DFU_IDLE, STATUS["OK"]
            return b""
        if request == ABORT:
            if self.state in (DFU_IDLE, DNLOAD_SYNC, DNLOAD_IDLE, MANIFEST_SYNC, UPLOAD_IDLE):
                self.state = DFU_IDLE
            return b""
        if request == DNLOAD:
            return self._dnload(value, data)
        if request == UPLOAD:
            return self._upload(value, length)
        if request == DETACH:
            return b""
        raise Stall()

    def _fail(self, status: str) -> None:
        self.state, self.status = DFU_ERROR, STATUS[status]
        raise Stall()

    def _dnload(self, block: int, data: bytes) -> bytes:
        if self.state not in (DFU_IDLE, DNLOAD_IDLE):
            self._fail("errSTALLEDPKT")
        if not data:
            self.state = MANIFEST_SYNC
            self.log("leave-request", address=self.address)
            self.on_leave_request()
            return b""
        self.pending = (block, data)
        self.state = DNLOAD_SYNC
        return b""

    def _getstatus(self) -> bytes:
        if self.state == DNLOAD_SYNC and self.pending is not None:
            block, data = self.pending
            self.pending = None
            self.after_busy = self._execute(block, data)
            self.state = DNBUSY
        elif self.state == DNBUSY:
            self.state, self.status = self.after_busy
            self.poll_ms = 0
        elif self.state == MANIFEST_SYNC:
            self.state = MANIFEST
            self.poll_ms = 0
            reply = struct.pack("<B", self.status) + self.poll_ms.to_bytes(3, "little")
            self.on_leave()
            return reply + bytes([MANIFEST, 0])
        return struct.pack("<B", self.status) + self.poll_ms.to_bytes(3, "little") + bytes([self.state, 0])

    def _execute(self, block: int, data: bytes) -> tuple[int, int]:
        """Run a download; returns the (state, status) reported once the busy time is over."""
        self.poll_ms = WRITE_MS
        ok = (DNLOAD_IDLE, STATUS["OK"])
        if block == 0:
            return self._command(data)
        if self.alt != 0:
            return DFU_ERROR, STATUS["errWRITE"]
        address = self.address + (block - 2) * self.transfer_size
        programmed = self.corrupt.apply(data) if self.corrupt is not None else data
        if programmed != data:
            self.log("corrupt-write", address=address, was=data[0], now=programmed[0])
        error = self.flash.program(address, programmed)
        self.log("write", address=address, length=len(data), error=error)
        return ok if error is None else (DFU_ERROR, STATUS[error])

    def _command(self, data: bytes) -> tuple[int, int]:
        ok = (DNLOAD_IDLE, STATUS["OK"])
        if data[0] == 0x21 and len(data) == 5:
            self.address = int.from_bytes(data[1:5], "little")
            return ok
        if data[0] == 0x41 and len(data) == 1:
            self.flash.mass_erase()
            self.poll_ms = self._erase_ms(self.flash.size)
            self.log("mass-erase")
            return ok
        if data[0] == 0x41 and len(data) == 5:
            address = int.from_bytes(data[1:5], "little")
            found = self.flash.sector_at(address)
            if found is None:
                return DFU_ERROR, STATUS["errADDRESS"]
            index, sector = found
            if not sector.erasable:
                self.log("erase-refused", sector=index, address=sector.address)
                return DFU_ERROR, STATUS["errTARGET"]
            self.flash.erase(index)
            if self.corrupt is not None:
                self.corrupt.erased()
            self.poll_ms = self._erase_ms(sector.size)
            self.log("erase", sector=index, address=sector.address, size=sector.size)
            return ok
        if data[0] == 0x92:  # read unprotect: the ROM mass-erases
            self.flash.mass_erase()
            self.log("mass-erase")
            return ok
        return DFU_ERROR, STATUS["errUNKNOWN"]

    def _erase_ms(self, size: int) -> int:
        per_kib = SLOW_ERASE_MS_PER_KIB if self.slow_erase else ERASE_MS_PER_KIB
        return int(per_kib * size / 1024)

    def _upload(self, block: int, length: int) -> bytes:
        if self.state not in (DFU_IDLE, UPLOAD_IDLE):
            self._fail("errSTALLEDPKT")
        self.state = UPLOAD_IDLE
        if block == 0:
            return bytes([0x00, 0x21, 0x41, 0x92])[:length]
        if self.alt != 0:
            return bytes(length)
        address = self.address + (block - 2) * self.transfer_size
        found = self.flash.sector_at(address)
        if found is None or not found[1].readable:
            self._fail("errADDRESS")
        end = min(address + length, self.flash.base + self.flash.size)
        if end - address < length:
            self.state = DFU_IDLE  # DFU 1.1: a short frame ends the upload
        return self.flash.read(address, end - address)
