"""Failure classes of a DfuSe flash, each with its own exit status (see the package docstring)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1     # a bug or an unexpected exception
EXIT_USAGE = 2        # bad command line (argparse's own status)


class DfuFailure(Exception):
    """Base class: ``kind`` names the failure class in the JSON result, ``exit_code`` is its status."""

    kind = "internal"
    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, address: int | None = None) -> None:
        super().__init__(message)
        self.address = address


class PlanRefused(DfuFailure):
    """The image cannot go where asked (outside the map, protected or non-erasable sector, unreadable
    file, device without upload): refused before any USB write."""

    kind = "refused"
    exit_code = 3


class DeviceNotFound(DfuFailure):
    """No usable DfuSe device where asked: nothing on the port, not in DFU, several matches, no access."""

    kind = "device"
    exit_code = 4


class TransferFailed(DfuFailure):
    """The USB request itself failed: STALL, timeout, the device vanished, I/O error."""

    kind = "usb"
    exit_code = 5


class Stalled(TransferFailed):
    pass


class TimedOut(TransferFailed):
    pass


class Gone(TransferFailed):
    pass


class StatusError(DfuFailure):
    """The device reported a DFU error status (errPROG, errADDRESS, errWRITE, errERASE, ...)."""

    kind = "dfu-status"
    exit_code = 6

    def __init__(self, message: str, address: int | None = None, status: str = "") -> None:
        super().__init__(message, address)
        self.status = status


class VerifyFailed(DfuFailure):
    """Read-back differs from the image: the board is left in DFU for a re-flash."""

    kind = "verify"
    exit_code = 7


class LeaveFailed(DfuFailure):
    """The flash verified, but the board was still in DFU on its port after the leave request."""

    kind = "leave"
    exit_code = 8


EXIT_CODES = {cls.kind: cls.exit_code for cls in
              (DfuFailure, PlanRefused, DeviceNotFound, TransferFailed, StatusError, VerifyFailed, LeaveFailed)}
