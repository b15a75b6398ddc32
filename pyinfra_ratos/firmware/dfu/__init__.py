"""STM32 DfuSe flashing through pyusb, verified by reading the flash back before leaving DFU.

Self-contained: stdlib + pyusb only, no other project module, so the directory can be copied on
its own onto a Pi (``<venv>/lib/python3*/site-packages/pyinfra_ratos/dfu``) and run as root there
(usbfs is root-only). Protocols: USB DFU 1.1 and ST's DfuSe extensions (AN3156).

Command line (``python3 -m pyinfra_ratos.firmware.dfu``)::

    list [--json]
        DFU-mode devices by USB port path: id, serial, wTransferSize, bmAttributes and every alt
        setting's memory map (alt 0 = internal flash).

    flash (--port 1-1.3 | --serial S) --address 0x08020000 --image klipper.bin
          [--protect-below 0x08020000] [--name LABEL] [--no-leave] [--wait SECONDS]
          [--leave-timeout SECONDS]
        Find the DFU device on that port (or with that serial; --port wins when both are given and
        then the serial must match), refuse before any USB write an image that leaves the alt-0
        map or covers a sector that is non-erasable or starts below --protect-below (default: the
        image address), erase exactly the covered sectors, download, read back and compare, and
        only then leave DFU (jump to --address) and wait up to --leave-timeout for the DFU device
        to leave the port. A mismatch leaves the board in DFU. --wait waits that long for the
        device to appear on the port first. --name labels the board in every message.

Output: progress on stderr; ``flash`` ends with one JSON line on stdout::

    {"ok": true, "port": "1-1.3", "serial": "...", "address": "0x08020000", "bytes": 28672,
     "sha256": "...", "sectors_erased": ["0x08020000"], "read_back_ok": true,
     "mismatch_address": null, "mismatched_bytes": 0, "left": true, "duration_s": 0.41,
     "phases_s": {"erase": ..., "download": ..., "verify": ..., "leave": ...},
     "error": null, "failure": null, "exit_code": 0}

``read_back_ok`` is null when the read-back did not run, ``left`` null when not asked to leave.

Exit status (``failure`` in the JSON names the class):
    0  ok: written, read back identical, left DFU (or stayed, with --no-leave)
    1  internal: unexpected error (a bug)
    2  usage: bad command line
    3  refused: image unreadable/empty, outside the memory map, covering a non-erasable or
       protected sector, or a device without DFU upload; nothing was written
    4  device: no DFU device on the port / with the serial, not in DFU, ambiguous, no permission
    5  usb: a request stalled without a DFU status, timed out, or the device vanished mid-flash
    6  dfu-status: the device reported errPROG, errADDRESS, errWRITE, errERASE, errTARGET, ...
    7  verify: the read-back differs from the image (``mismatch_address``); board left in DFU
    8  leave: verified, but the board was still in DFU on its port after the leave request
"""

from __future__ import annotations

from .errors import (DeviceNotFound, DfuFailure, LeaveFailed, PlanRefused, StatusError, TransferFailed,
                     VerifyFailed)
from .flash import FlashResult, flash
from .memory import MemoryMap, Sector, parse_memory_map, sectors_to_erase

__all__ = [
    "DeviceNotFound", "DfuFailure", "FlashResult", "LeaveFailed", "MemoryMap", "PlanRefused", "Sector",
    "StatusError", "TransferFailed", "VerifyFailed", "flash", "parse_memory_map", "sectors_to_erase",
]
