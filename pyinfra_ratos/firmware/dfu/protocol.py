"""DFU 1.1 class requests with the ST DfuSe extensions (AN3156), over any control-transfer transport.

Stdlib only. The transport is anything with pyusb's ``ctrl_transfer`` signature whose failures are
already :class:`~.errors.TransferFailed` (see ``device.UsbTransport``), so the protocol is tested
against the emulator's state machine in-process too.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from .errors import Stalled, StatusError, TimedOut, TransferFailed

DETACH, DNLOAD, UPLOAD, GETSTATUS, CLRSTATUS, GETSTATE, ABORT = range(7)
OUT, IN = 0x21, 0xA1  # class request to the interface, host-to-device / device-to-host

STATES = ("appIDLE", "appDETACH", "dfuIDLE", "dfuDNLOAD-SYNC", "dfuDNBUSY", "dfuDNLOAD-IDLE",
          "dfuMANIFEST-SYNC", "dfuMANIFEST", "dfuMANIFEST-WAIT-RESET", "dfuUPLOAD-IDLE", "dfuERROR")
DFU_IDLE, DNLOAD_SYNC, DNBUSY, DNLOAD_IDLE = 2, 3, 4, 5
MANIFEST_SYNC, MANIFEST, UPLOAD_IDLE, DFU_ERROR = 6, 7, 9, 10

STATUSES = {
    0: ("OK", "no error"),
    1: ("errTARGET", "file is not targeted for this device (DfuSe: protected or non-erasable area)"),
    2: ("errFILE", "file fails a vendor-specific check"),
    3: ("errWRITE", "device is unable to write memory"),
    4: ("errERASE", "memory erase failed"),
    5: ("errCHECK_ERASED", "memory erase check failed"),
    6: ("errPROG", "program memory failed (target not erased?)"),
    7: ("errVERIFY", "programmed memory failed verification"),
    8: ("errADDRESS", "address out of range"),
    9: ("errNOTDONE", "download ended before all data was received"),
    10: ("errFIRMWARE", "firmware is corrupt, cannot return to run-time mode"),
    11: ("errVENDOR", "vendor-specific error"),
    12: ("errUSBR", "unexpected USB reset"),
    13: ("errPOR", "unexpected power on reset"),
    14: ("errUNKNOWN", "unknown error"),
    15: ("errSTALLEDPKT", "device stalled an unexpected request"),
}

SET_ADDRESS, ERASE = 0x21, 0x41  # DfuSe commands, sent as DNLOAD block 0
DATA_BLOCK = 2  # DfuSe: address = pointer + (block - 2) * wTransferSize
COMMAND_DEADLINE_S = 30.0  # a 128 KiB H7 sector erases in ~2 s; a hung busy state must not hang us
CONTROL_TIMEOUT_MS = 5000
WINDOW_BLOCKS = 0x4000  # blocks per address pointer, well inside wValue's 16 bits


class Transport(Protocol):
    def ctrl_transfer(self, bmRequestType: int, bRequest: int, wValue: int = 0, wIndex: int = 0,
                      data_or_wLength: bytes | int | None = None, timeout: int | None = None) -> bytes | int: ...


@dataclass(frozen=True)
class Status:
    status: int
    poll_ms: int
    state: int

    @property
    def status_name(self) -> str:
        return STATUSES.get(self.status, (f"status {self.status}", ""))[0]

    @property
    def state_name(self) -> str:
        return STATES[self.state] if 0 <= self.state < len(STATES) else f"state {self.state}"

    def describe(self) -> str:
        return f"{self.status_name} ({STATUSES.get(self.status, ('', 'unknown'))[1]}), {self.state_name}"


class DfuSe:
    """One claimed DfuSe interface. Every error names ``board`` and the flash address concerned."""

    def __init__(self, transport: Transport, board: str, transfer_size: int, interface: int = 0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.transport = transport
        self.board = board
        self.transfer_size = transfer_size
        self.interface = interface
        self.sleep = sleep

    # --- single requests ------------------------------------------------------------------------
    def _out(self, request: int, value: int, data: bytes, what: str, address: int | None) -> None:
        try:
            self.transport.ctrl_transfer(OUT, request, value, self.interface, data, CONTROL_TIMEOUT_MS)
        except Stalled:
            self._explain_stall(what, address)

    def _in(self, request: int, value: int, length: int, what: str, address: int | None) -> bytes:
        try:
            return bytes(self.transport.ctrl_transfer(IN, request, value, self.interface, length, CONTROL_TIMEOUT_MS))
        except Stalled:
            self._explain_stall(what, address)
            raise  # unreachable: _explain_stall always raises

    def _explain_stall(self, what: str, address: int | None) -> None:
        """A stalled request: read the DFU status the device set, clear it, and raise naming both."""
        where = f" at {address:#010x}" if address is not None else ""
        try:
            status = self.get_status()
        except TransferFailed as exc:
            raise Stalled(f"{self.board}: {what}{where} stalled, and GETSTATUS failed too: {exc}", address) from None
        self.clear()
        raise StatusError(f"{self.board}: {what}{where} stalled: {status.describe()}", address,
                          status.status_name)

    def get_status(self) -> Status:
        try:
            raw = bytes(self.transport.ctrl_transfer(IN, GETSTATUS, 0, self.interface, 6, CONTROL_TIMEOUT_MS))
        except TransferFailed as exc:
            raise type(exc)(f"{self.board}: GETSTATUS failed: {exc}", exc.address) from None
        if len(raw) < 6:
            raise TransferFailed(f"{self.board}: GETSTATUS answered {len(raw)} bytes, not 6")
        return Status(raw[0], int.from_bytes(raw[1:4], "little"), raw[4])

    def clear(self) -> None:
        try:
            self.transport.ctrl_transfer(OUT, CLRSTATUS, 0, self.interface, b"", CONTROL_TIMEOUT_MS)
        except Stalled:
            pass  # nothing to clear

    def abort(self) -> None:
        self.transport.ctrl_transfer(OUT, ABORT, 0, self.interface, b"", CONTROL_TIMEOUT_MS)

    def ensure_idle(self) -> None:
        """Bring the interface to dfuIDLE whatever a previous run left (error, download, upload)."""
        status = self.get_status()
        if status.state == DFU_ERROR:
            self.clear()
        elif status.state != DFU_IDLE:
            self.abort()
        status = self.get_status()
        if status.state != DFU_IDLE:
            raise StatusError(f"{self.board}: cannot reach dfuIDLE: {status.describe()}", None, status.status_name)

    # --- DfuSe operations -------------------------------------------------------------------------
    def _complete(self, what: str, address: int) -> None:
        """Poll GETSTATUS through the busy states of a download; raise on any error status."""
        deadline = time.monotonic() + COMMAND_DEADLINE_S
        while True:
            status = self.get_status()
            if status.state not in (DNLOAD_SYNC, DNBUSY) or status.status != 0:
                break
            if time.monotonic() > deadline:
                raise TimedOut(f"{self.board}: {what} at {address:#010x} still busy after "
                               f"{COMMAND_DEADLINE_S:.0f} s", address)
            self.sleep(status.poll_ms / 1000)
        if status.status != 0 or status.state != DNLOAD_IDLE:
            self.clear()
            raise StatusError(f"{self.board}: {what} at {address:#010x} failed: {status.describe()}",
                              address, status.status_name)

    def set_address(self, address: int) -> None:
        self._out(DNLOAD, 0, struct.pack("<BI", SET_ADDRESS, address), "set address", address)
        self._complete("set address", address)

    def erase(self, address: int) -> None:
        self._out(DNLOAD, 0, struct.pack("<BI", ERASE, address), "erase of the sector", address)
        self._complete("erase of the sector", address)

    def _windows(self, address: int, length: int) -> list[tuple[int, int]]:
        """(address, length) spans addressable from one pointer: wValue (the block) is 16 bits."""
        span = WINDOW_BLOCKS * self.transfer_size
        return [(address + start, min(span, length - start)) for start in range(0, length, span)]

    def download(self, address: int, data: bytes, progress: Callable[[int], None] | None = None) -> None:
        """Program ``data`` at ``address`` (already erased), one wTransferSize block at a time;
        ``progress`` is told the bytes written so far after each block."""
        size = self.transfer_size
        for base, length in self._windows(address, len(data)):
            self.set_address(base)
            for offset in range(0, length, size):
                where = base + offset
                chunk = data[where - address: where - address + min(size, length - offset)]
                self._out(DNLOAD, DATA_BLOCK + offset // size, chunk, "write", where)
                self._complete("write", where)
                if progress is not None:
                    progress(where - address + len(chunk))

    def upload(self, address: int, length: int) -> bytes:
        """Read ``length`` bytes at ``address`` (DfuSe UPLOAD, blocks of wTransferSize)."""
        size = self.transfer_size
        chunks = []
        for base, span in self._windows(address, length):
            self.set_address(base)
            self.abort()  # UPLOAD is only accepted from dfuIDLE
            for offset in range(0, span, size):
                want = min(size, span - offset)
                chunk = self._in(UPLOAD, DATA_BLOCK + offset // size, want, "read-back", base + offset)
                if len(chunk) != want:
                    raise TransferFailed(f"{self.board}: read-back at {base + offset:#010x} returned "
                                         f"{len(chunk)} bytes, not {want}", base + offset)
                chunks.append(chunk)
            self.abort()
        return b"".join(chunks)

    def leave(self, address: int) -> None:
        """DfuSe leave: jump to ``address``. The MCU may reset before answering: that is success."""
        self.set_address(address)
        try:
            self.transport.ctrl_transfer(OUT, DNLOAD, DATA_BLOCK, self.interface, b"", CONTROL_TIMEOUT_MS)
            self.get_status()  # the ROM leaves on this status request (dfuMANIFEST)
        except TransferFailed:
            pass  # reset before the last status: the request was received
        reset = getattr(self.transport, "reset", None)
        if reset is not None:
            reset()  # as dfu-util -R: a ROM still lingering on the bus starts the application now
