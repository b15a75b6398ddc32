"""DfuSe memory maps (the alt-setting strings of ST AN3156) and which sectors an image may erase.

Pure and stdlib only: decided before any USB write, unit-tested without a device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PlanRefused

_UNITS = {"": 1, " ": 1, "B": 1, "K": 1024, "M": 1024 * 1024}


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

    def flags(self) -> str:
        return "".join(flag if on else "-" for flag, on in
                       (("r", self.readable), ("e", self.erasable), ("w", self.writeable)))


@dataclass(frozen=True)
class MemoryMap:
    name: str  # "Internal Flash"
    sectors: tuple[Sector, ...]

    @property
    def start(self) -> int:
        return self.sectors[0].address

    @property
    def end(self) -> int:
        return self.sectors[-1].end

    def sector_at(self, address: int) -> Sector | None:
        for sector in self.sectors:
            if sector.address <= address < sector.end:
                return sector
        return None


def parse_memory_map(text: str) -> MemoryMap:
    """Parse ``@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg``.

    Several regions (``/0x08000000/..../0x1FFF0000/...``) are concatenated; the memory type letter
    is a 3-bit field a..g: readable=1, erasable=2, writeable=4 (AN3156, table "DFU memory").
    """
    if not text.startswith("@"):
        raise ValueError(f"not a DfuSe memory map (no leading '@'): {text!r}")
    parts = text[1:].split("/")
    if len(parts) < 3 or len(parts) % 2 == 0:
        raise ValueError(f"not a DfuSe memory map: {text!r}")
    sectors: list[Sector] = []
    for start_text, groups in zip(parts[1::2], parts[2::2]):
        address = int(start_text.strip(), 16)
        for group in groups.split(","):
            match = re.fullmatch(r"\s*(\d+)\s*\*\s*(\d+)\s*([ BKM]?)\s*([a-g])\s*", group)
            if not match:
                raise ValueError(f"bad sector group {group!r} in DfuSe memory map {text!r}")
            count, size, unit, letter = match.groups()
            size_bytes = int(size) * _UNITS[unit]
            bits = ord(letter) - ord("a") + 1
            for _ in range(int(count)):
                sectors.append(Sector(address, size_bytes, bool(bits & 1), bool(bits & 2), bool(bits & 4)))
                address += size_bytes
    if not sectors:
        raise ValueError(f"DfuSe memory map without sectors: {text!r}")
    return MemoryMap(parts[0].strip(), tuple(sectors))


def sectors_to_erase(memory: MemoryMap, address: int, length: int, protect_below: int,
                     board: str) -> list[Sector]:
    """The sectors an image of ``length`` bytes at ``address`` covers, or :class:`PlanRefused`.

    Refused (before any USB write) when the image is empty, leaves the map, or covers a sector
    that is not erasable, not writeable, or starts below ``protect_below`` (a bootloader).
    """
    if length <= 0:
        raise PlanRefused(f"{board}: the image is empty, nothing to flash at {address:#010x}")
    last = address + length - 1
    if address < protect_below:
        raise PlanRefused(f"{board}: image at {address:#010x} starts below the protected address "
                          f"{protect_below:#010x} (bootloader)")
    for edge in (address, last):
        if memory.sector_at(edge) is None:
            raise PlanRefused(f"{board}: image {address:#010x}..{last:#010x} lies outside the "
                              f"{memory.name!r} map {memory.start:#010x}..{memory.end - 1:#010x}"
                              f" (address {edge:#010x})")
    covered = [s for s in memory.sectors if s.address <= last and s.end > address]
    for before, after in zip(covered, covered[1:]):
        if before.end != after.address:
            raise PlanRefused(f"{board}: image {address:#010x}..{last:#010x} spans the hole "
                              f"{before.end:#010x}..{after.address - 1:#010x} of the memory map")
    for sector in covered:
        if sector.address < protect_below:
            raise PlanRefused(f"{board}: image at {address:#010x} would erase the sector at "
                              f"{sector.address:#010x}, below the protected address {protect_below:#010x}")
        if not sector.erasable or not sector.writeable:
            raise PlanRefused(f"{board}: the sector at {sector.address:#010x} is not "
                              f"{'erasable' if not sector.erasable else 'writeable'} "
                              f"({sector.flags()}); the image {address:#010x}..{last:#010x} covers it")
    return covered
