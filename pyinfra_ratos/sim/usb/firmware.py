"""What an emulated board's flash holds: the DfuSe flash map, a file-backed flash, and boot rules.

Stdlib only: the emulator process runs it under Debian's ``/usr/bin/python3``.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass
from typing import Any

ERASED = 0xFF


@dataclass(frozen=True)
class Sector:
    address: int
    size: int
    readable: bool
    erasable: bool
    writeable: bool

    @property
    def end(self) -> int:
        return self.address + self.size


def _flags(letter: str) -> tuple[bool, bool, bool]:
    # DfuSe memory type letters a..g are a 3-bit field: readable=1, erasable=2, writeable=4
    bits = ord(letter.lower()) - ord("a") + 1
    return bool(bits & 1), bool(bits & 2), bool(bits & 4)


def parse_flash_map(alt_name: str) -> list[Sector]:
    """Sectors described by a DfuSe alt string such as ``@Internal Flash  /0x08000000/04*016Kg,01*064Kg``."""
    parts = alt_name.split("/")
    if len(parts) < 3:
        raise ValueError(f"not a DfuSe memory layout: {alt_name!r}")
    address = int(parts[1].strip(), 0)
    sectors: list[Sector] = []
    for group in parts[2].split(","):
        match = re.fullmatch(r"\s*(\d+)\*\s*(\d+)\s*([ KMB]?)([a-g])\s*", group)
        if not match:
            raise ValueError(f"bad DfuSe sector group {group!r} in {alt_name!r}")
        count, size, unit, letter = match.groups()
        size_bytes = int(size) * {"K": 1024, "M": 1024 * 1024}.get(unit, 1)
        readable, erasable, writeable = _flags(letter)
        for _ in range(int(count)):
            sectors.append(Sector(address, size_bytes, readable, erasable, writeable))
            address += size_bytes
    return sectors


class Flash:
    """A flash array kept in a file so tests can compare bytes; sector rules as on real STM32 flash."""

    def __init__(self, path: str, sectors: list[Sector]) -> None:
        self.path = path
        self.sectors = sectors
        self.base = sectors[0].address
        self.size = sectors[-1].end - self.base

    def create(self, bootloader: bytes, app_address: int, image: bytes | None, image_address: int | None = None) -> None:
        """Write the initial contents: bootloader pattern below the app, the image at ``image_address``
        (default: the app address; an RP2040's flat image starts with boot stage 2 below it)."""
        data = bytearray([ERASED]) * self.size
        below = app_address - self.base
        if bootloader and below > 0:
            repeated = (bootloader * (below // len(bootloader) + 1))[:below]
            data[:below] = repeated
        if image:
            start = (app_address if image_address is None else image_address) - self.base
            data[start : start + len(image)] = image
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "wb") as handle:
            handle.write(data)

    def read(self, address: int, length: int) -> bytes:
        with open(self.path, "rb") as handle:
            handle.seek(address - self.base)
            return handle.read(length)

    def sector_at(self, address: int) -> tuple[int, Sector] | None:
        for index, sector in enumerate(self.sectors):
            if sector.address <= address < sector.end:
                return index, sector
        return None

    def erase(self, index: int) -> None:
        sector = self.sectors[index]
        with open(self.path, "r+b") as handle:
            handle.seek(sector.address - self.base)
            handle.write(bytes([ERASED]) * sector.size)

    def mass_erase(self) -> None:
        for index, sector in enumerate(self.sectors):
            if sector.erasable:
                self.erase(index)

    def program(self, address: int, data: bytes) -> str | None:
        """Write bytes; the DFU error name on failure (nothing written), None on success."""
        if not data:
            return None
        first, last = self.sector_at(address), self.sector_at(address + len(data) - 1)
        if first is None or last is None:
            return "errADDRESS"
        for index in range(first[0], last[0] + 1):
            if not self.sectors[index].writeable:
                return "errWRITE"
        if any(byte != ERASED for byte in self.read(address, len(data))):
            return "errPROG"
        with open(self.path, "r+b") as handle:
            handle.seek(address - self.base)
            handle.write(data)
        return None


def find_dictionary(image: bytes) -> dict[str, Any] | None:
    """The Klipper data dictionary embedded zlib-compressed in an image, or None."""
    start = image.find(b"\x78\xda")
    while start >= 0:
        try:
            decoded = json.loads(zlib.decompressobj().decompress(image[start:]))
        except (zlib.error, ValueError, UnicodeDecodeError):
            decoded = None
        if isinstance(decoded, dict) and decoded.get("app") == "Klipper":
            return decoded
        start = image.find(b"\x78\xda", start + 1)
    return None


RESET_MARK = b"KRST"  # the stand-in build's reset handler: the mark, then its own linked address


def boots(flash_at_app: bytes, app_address: int, mcu: str) -> dict[str, Any] | None:
    """The dictionary of the firmware that boots from these bytes (read at the app address), or None.

    The CPU jumps to the reset vector: the image starts only if the code there was linked for that
    address. Stand-in builds mark their handler (deep in the image, as in real Klipper); an image
    without the mark must have its handler at the app address + 0x101.
    """
    if len(flash_at_app) < 8:
        return None
    stack = int.from_bytes(flash_at_app[0:4], "little")
    handler = int.from_bytes(flash_at_app[4:8], "little") & ~1
    if not 0x20000000 <= stack <= 0x3FFFFFFF or not app_address <= handler < app_address + len(flash_at_app):
        return None
    if RESET_MARK in flash_at_app:
        at = handler - app_address
        if flash_at_app[at:at + 8] != RESET_MARK + handler.to_bytes(4, "little"):
            return None
    elif handler != app_address + 0x100:
        return None
    dictionary = find_dictionary(flash_at_app)
    if dictionary is None or dictionary.get("config", {}).get("MCU") != mcu:
        return None
    return dictionary


def firmware_summary(dictionary: dict[str, Any]) -> dict[str, Any]:
    """The pistate ``firmware`` entry of a booted dictionary."""
    return {
        "version": dictionary.get("version", ""),
        "build_versions": dictionary.get("build_versions", ""),
        "config": dictionary.get("config", {}),
    }
