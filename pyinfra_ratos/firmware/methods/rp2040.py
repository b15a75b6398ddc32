"""RP2040 over PICOBOOT: a board written in its BOOTSEL ROM (2e8a:0003) with the project's pyusb client.

From Klipper, the 1200-baud request (as Klipper's ``flash_usb.py`` sends it) reboots an RP2040
without a bootloader into BOOTSEL; it comes back on the same USB port path as a 2e8a:0003 device
(the ROM's serial is not unique per chip: boards are addressed by port). On the Pi the agent's
runner (``rp2040_pi.py``) runs ``python -m pyinfra_ratos.firmware.picoboot`` from the pyusb client
venv: it keeps a read of what the board ran (from the start of flash until an erased 64 KiB chunk,
so the rollback image is the board's own), writes the UF2's pages (erase, write, **read every page
back and compare**: Klipper's rp2040_flash does not), reboots the board and waits for it as Klipper
on the same port. Klipper's ``mcu_version`` is verified by the agent as for every method.
A board whose catalog names Katapult is flashed through Katapult instead (its own method).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.methods.base import FlashMethod, Options, bootloader_plan, register, usb_preflight
from pyinfra_ratos.firmware.steps import DFU_CLIENT_VENV, Artifact, FlashPlan

BOOTSEL_TIMEOUT_S = 10.0  # the ROM enumerates within a second of the reboot
FLASH_START = 0x10000000  # XIP flash: boot stage 2, then the application at 0x10000100
# what a rollback may have to put back: the read stops at the first erased 64 KiB chunk, and at
# the smallest flash of the catalog's RP2040 boards (2 MiB: the Pico's W25Q16)
CAPTURE_LIMIT = 2 * 1024 * 1024


@dataclass(frozen=True)
class WaitBootsel:
    """Wait for the board in BOOTSEL (2e8a:0003) on its USB port."""

    port: str
    timeout: float


@dataclass(frozen=True)
class PicobootWrite:
    """Write the UF2 ``image`` through PICOBOOT with read-back, from the client venv ``venv``;
    ``capture_limit``: the most of the old flash read first (from ``FLASH_START``) and kept."""

    port: str
    image: str
    venv: str = DFU_CLIENT_VENV
    capture_limit: int = CAPTURE_LIMIT


@register
class Rp2040(FlashMethod):
    name = "rp2040"
    modes = ("klipper", "rp2040-boot")
    interfaces = ("usb",)
    verifies = "read-back"
    pi_source = os.path.join(os.path.dirname(__file__), "rp2040_pi.py")

    def preflight(self, board: Board, entry: Mapping[str, Any]) -> str | None:
        return usb_preflight(board, entry, "is a BOOTSEL ROM")

    def steps(self, board: Board, entry: Mapping[str, Any] | None, mcu_name: str, artifact: Artifact,
              options: Options) -> FlashPlan:
        assert entry is not None  # modes: the plan found it on USB
        port = entry["port"]
        return bootloader_plan(board, entry, mcu_name, artifact, options, self.name,
                               WaitBootsel(port, BOOTSEL_TIMEOUT_S), PicobootWrite(port, artifact.path),
                               "through PICOBOOT (BOOTSEL)")
