"""The project's own PICOBOOT client for RP2040 boards in BOOTSEL (2e8a:0003): stdlib + pyusb.

``protocol``: the wire format (32-byte commands, the 16-byte status, UF2 blocks -> flash pages), pure.
``client``: one flash over a transport (bulk OUT 0x03 / IN 0x84 and control transfers on the
PICOBOOT interface): reset the interface, take exclusive access, leave XIP, erase the touched 4 KiB
sectors, write each 256-byte page, **read every page back and compare** (Klipper's rp2040_flash
does not), then reboot. ``usb``: the pyusb transport, the device chosen by USB port path.
Facts and sources: ../shared/bootloaders-can.md section 5 (pico-bootrom-rp2040, picoboot.h, uf2.h).
"""

from __future__ import annotations

from .protocol import (  # noqa: F401
    FLASH_PAGE, FLASH_SECTOR, PicobootError, Status, command, parse_status, uf2_pages,
)
