"""One DfuSe flash: plan, erase the covered sectors, download, read back and compare, then leave.

The board only leaves DFU when the read-back equals the image: a bad flash stays in the ROM
bootloader, ready for a re-flash, instead of booting garbage.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .errors import EXIT_OK, DeviceNotFound, DfuFailure, LeaveFailed, PlanRefused, VerifyFailed
from .memory import MemoryMap, sectors_to_erase
from .protocol import DfuSe

LEAVE_TIMEOUT_S = 5.0


@dataclass
class FlashResult:
    """The machine-readable outcome; :meth:`to_json` is the CLI's final stdout line."""

    ok: bool = False
    port: str | None = None
    serial: str | None = None
    address: int = 0
    bytes: int = 0
    sha256: str = ""
    sectors_erased: list[int] = field(default_factory=list)
    read_back_ok: bool | None = None  # None: read-back did not run
    mismatch_address: int | None = None
    mismatched_bytes: int = 0
    left: bool | None = None  # None: not asked to leave (or never got there)
    duration_s: float = 0.0
    phases_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    failure: str | None = None  # the failure class (errors.*.kind)
    exit_code: int = EXIT_OK

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["address"] = f"{self.address:#010x}"
        out["sectors_erased"] = [f"{a:#010x}" for a in self.sectors_erased]
        if self.mismatch_address is not None:
            out["mismatch_address"] = f"{self.mismatch_address:#010x}"
        return out

    def failed(self, failure: DfuFailure) -> FlashResult:
        self.ok, self.error, self.failure, self.exit_code = False, str(failure), failure.kind, failure.exit_code
        return self


def first_difference(expected: bytes, actual: bytes) -> tuple[int | None, int]:
    """(offset of the first differing byte or None, number of differing bytes)."""
    if expected == actual:
        return None, 0
    diffs = [i for i, (a, b) in enumerate(zip(expected, actual)) if a != b]
    diffs += list(range(min(len(expected), len(actual)), max(len(expected), len(actual))))
    return diffs[0], len(diffs)


def flash_image(dfuse: DfuSe, memory: MemoryMap, image: bytes, address: int, protect_below: int,
                result: FlashResult, leave: bool = True,
                confirm_left: Callable[[], bool] | None = None, leave_timeout_s: float = LEAVE_TIMEOUT_S,
                log: Callable[[str], None] = lambda _: None) -> FlashResult:
    """Flash through a claimed DfuSe interface; failures raise :class:`DfuFailure` subclasses."""
    board = dfuse.board
    sectors = sectors_to_erase(memory, address, len(image), protect_below, board)

    def phase(name: str, began: float) -> None:
        result.phases_s[name] = round(time.monotonic() - began, 3)

    began = time.monotonic()
    dfuse.ensure_idle()
    for sector in sectors:
        log(f"erase {sector.address:#010x} ({sector.size // 1024} KiB)")
        dfuse.erase(sector.address)
        result.sectors_erased.append(sector.address)
    phase("erase", began)

    began = time.monotonic()
    log(f"download {len(image)} bytes at {address:#010x} in blocks of {dfuse.transfer_size}")
    shown = [-1]

    def written(done: int) -> None:
        # ``progress download DONE TOTAL`` lines (the printer agent passes them on), one per percent
        if done * 100 // max(1, len(image)) != shown[0]:
            shown[0] = done * 100 // max(1, len(image))
            log(f"progress download {done} {len(image)}")

    dfuse.download(address, image, written)
    phase("download", began)

    began = time.monotonic()
    log("read back and compare")
    log(f"progress verify 0 {len(image)}")
    offset, count = first_difference(image, dfuse.upload(address, len(image)))
    phase("verify", began)
    result.read_back_ok = offset is None
    if offset is not None:
        result.mismatch_address, result.mismatched_bytes = address + offset, count
        raise VerifyFailed(f"{board}: read-back differs from the image at {address + offset:#010x} "
                           f"({count} byte(s) differ); the board stays in DFU for a re-flash",
                           address + offset)
    if leave:
        began = time.monotonic()
        log(f"leave DFU, start the application at {address:#010x}")
        dfuse.leave(address)
        result.left = confirm_left() if confirm_left else True
        phase("leave", began)
        if not result.left:
            raise LeaveFailed(f"{board}: flash verified, but the board did not leave DFU: still (or again) "
                              f"in DFU on its port within {leave_timeout_s:g} s of the leave request "
                              f"to {address:#010x}", address)
    result.ok = True
    return result


def load_device_module() -> Any:
    """The pyusb side, imported only when needed so that planning and --help work without pyusb."""
    try:
        from . import device
    except ImportError as exc:
        raise DeviceNotFound(f"pyusb is not importable ({exc}): apt install python3-usb, "
                             "or pip install pyusb in this venv") from None
    return device


def _reported(result: FlashResult, who: str | None, work: Callable[[], None]) -> FlashResult:
    """Run ``work``; a failure goes into ``result`` (never a traceback instead of the JSON line)."""
    began = time.monotonic()
    try:
        work()
    except DfuFailure as failure:
        result.failed(failure)
    except Exception as exc:  # report, never a traceback instead of the JSON line
        result.failed(DfuFailure(f"{who}: unexpected {type(exc).__name__}: {exc}"))
    result.duration_s = round(time.monotonic() - began, 3)
    return result


def _open(device: Any, result: FlashResult, port: str | None, serial: str | None, name: str | None,
          wait_s: float, write: bool) -> tuple[Any, str, Any]:
    """(the device found, its label, its DFU functional descriptor), refusing a board whose DFU
    interface cannot read back (or, to ``write``, cannot download): no verified flash possible."""
    found = device.find_device(port, serial, wait_s)
    result.port, result.serial = found.port, found.serial
    board = found.label(name)
    fn = found.functional
    if fn is None or fn.transfer_size <= 0:
        raise PlanRefused(f"{board}: no usable DFU functional descriptor (wTransferSize)")
    if not fn.can_upload or (write and not fn.can_download):
        cannot = "download" if write and not fn.can_download else "upload"
        raise PlanRefused(f"{board}: the DFU interface cannot {cannot} "
                          f"(bmAttributes {fn.attributes:#04x}): "
                          + ("no verified flash possible" if write else "the old firmware cannot be read"))
    return found, board, fn


def flash(image_path: str, address: int, protect_below: int | None = None, port: str | None = None,
          serial: str | None = None, name: str | None = None, leave: bool = True, wait_s: float = 0.0,
          leave_timeout_s: float = LEAVE_TIMEOUT_S, log: Callable[[str], None] | None = None) -> FlashResult:
    """Find the board over pyusb and flash it; never raises for a flash failure (see ``result.error``)."""
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    result = FlashResult(port=port, serial=serial, address=address)

    def work() -> None:
        try:
            with open(image_path, "rb") as handle:
                image = handle.read()
        except OSError as exc:
            raise PlanRefused(f"{name or port or serial}: cannot read the image {image_path}: {exc.strerror}") from None
        result.bytes, result.sha256 = len(image), hashlib.sha256(image).hexdigest()
        device = load_device_module()
        found, board, fn = _open(device, result, port, serial, name, wait_s, write=True)
        memory = found.memory_map(0)
        protect = address if protect_below is None else protect_below
        sectors_to_erase(memory, address, len(image), protect, board)  # refuse before claiming
        say(f"{board}: {memory.name}, wTransferSize {fn.transfer_size}")
        with device.Claimed(found) as transport:
            dfuse = DfuSe(transport, board, fn.transfer_size, found.interface)
            flash_image(dfuse, memory, image, address, protect, result, leave,
                        lambda: device.wait_left(str(found.port), found.dev.address, leave_timeout_s),
                        leave_timeout_s, say)

    return _reported(result, name or port or serial, work)


def read(dest: str, address: int, length: int, port: str | None = None, serial: str | None = None,
         name: str | None = None, wait_s: float = 0.0) -> FlashResult:
    """Read ``length`` bytes of flash from ``address`` into ``dest`` (DfuSe UPLOAD); the board stays
    in DFU. The agent keeps what a board ran this way before writing over it, to restore it."""
    result = FlashResult(port=port, serial=serial, address=address)

    def work() -> None:
        device = load_device_module()
        found, board, fn = _open(device, result, port, serial, name, wait_s, write=False)
        with device.Claimed(found) as transport:
            dfuse = DfuSe(transport, board, fn.transfer_size, found.interface)
            dfuse.ensure_idle()
            data = dfuse.upload(address, length)
        with open(dest, "wb") as handle:
            handle.write(data)
        result.ok, result.bytes, result.sha256 = True, len(data), hashlib.sha256(data).hexdigest()

    return _reported(result, name or port or serial, work)
