"""What a firmware file really is: version, MCU and load address read from its own bytes.

Klipper embeds its data dictionary (JSON, zlib-compressed, stream starting ``78 DA``) in every
image, so the version and MCU of a ``klipper.bin``/``.uf2``/``.elf`` can be checked before it is
flashed, without trusting file names or side files. Pure Python, no pyinfra import.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyinfra_ratos.firmware.arch import elf_fits
from pyinfra_ratos.firmware.catalog import Board

KINDS = ("bin", "uf2", "elf")
ZLIB_BEST = b"\x78\xda"

# Cortex-M: the first word of the vector table is the initial stack pointer, an SRAM address
RAM_REGION = (0x20000000, 0x3FFFFFFF)

UF2_MAGIC_START0, UF2_MAGIC_START1, UF2_MAGIC_END = 0x0A324655, 0x9E5D5157, 0x0AB16F30
UF2_BLOCK = 512
UF2_FLAG_NOT_MAIN_FLASH = 0x00000001
# UF2 files for a flash without bootloader start with boot stage 2; the app's vector table
# then sits at one of these offsets from the first block (RP2040: 0x100)
VECTOR_TABLE_OFFSETS = (0x0, 0x100)


@dataclass(frozen=True)
class ImageInfo:
    kind: str
    size: int                    # bytes loaded into flash/memory (the flat image), not the file size
    sha256: str                  # of the file as given
    dictionary: Mapping[str, Any] | None
    base_address: int | None     # where the container says the image loads (uf2, elf); None for bin
    app_address: int | None      # where the vector table lies, when the container says so
    initial_sp: int | None       # first word of the vector table
    reset_vector: int | None     # second word of the vector table (thumb bit set)
    defects: tuple[str, ...] = field(default=())  # container problems: truncated, bad blocks
    # an ELF's header: e_machine (40 ARM, 183 AArch64, 62 x86-64), class (1: 32-, 2: 64-bit), e_flags
    elf_machine: int | None = None
    elf_class: int | None = None
    elf_flags: int | None = None

    @property
    def version(self) -> str | None:
        return None if self.dictionary is None else self.dictionary.get("version")

    @property
    def build_versions(self) -> str | None:
        return None if self.dictionary is None else self.dictionary.get("build_versions")

    @property
    def config(self) -> Mapping[str, Any]:
        """The constants the MCU reports (``mcu_constants`` in Moonraker)."""
        return {} if self.dictionary is None else self.dictionary.get("config", {})

    @property
    def mcu(self) -> str | None:
        value = self.config.get("MCU")
        return None if value is None else str(value)

    def vector_in_range(self, app_address: int) -> bool:
        """Whether this image's reset handler lies inside it when loaded at ``app_address``.

        The reset handler is code inside the image: loaded anywhere else, the CPU jumps into
        the void. This is the check that works for real Klipper images, where the handler's
        offset is not fixed.
        """
        if self.reset_vector is None:
            return False
        return app_address <= (self.reset_vector & ~1) < app_address + self.size


# ---------------------------------------------------------------- the data dictionary

def find_dictionary(image: bytes) -> dict[str, Any] | None:
    """The first zlib stream in ``image`` that inflates to a Klipper dictionary, or None."""
    start = image.find(ZLIB_BEST)
    while start >= 0:
        decoded = _inflate_json(image[start:])
        if isinstance(decoded, dict) and decoded.get("app") == "Klipper":
            return decoded
        # code bytes can contain 78 DA by chance: try the next candidate
        start = image.find(ZLIB_BEST, start + 1)
    return None


def _inflate_json(data: bytes) -> Any:
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data)
    except zlib.error:
        return None
    if not inflater.eof:  # a truncated stream inflates partially: not a dictionary
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------- containers -> flat image

def _flatten(segments: list[tuple[int, bytes]]) -> tuple[int, bytes]:
    segments = sorted(segments)
    base = segments[0][0]
    image = bytearray()
    for address, data in segments:
        gap = address - base - len(image)
        if gap < 0:  # overlapping segments: keep the later bytes, as a loader would
            del image[address - base:]
            gap = 0
        image += b"\0" * gap + data
    return base, bytes(image)


def _uf2_segments(data: bytes) -> tuple[list[tuple[int, bytes]], list[str]]:
    segments, defects, seen, expected = [], [], set(), None
    if len(data) % UF2_BLOCK:
        defects.append(f"UF2 file size {len(data)} is not a multiple of {UF2_BLOCK} (truncated?)")
    for offset in range(0, len(data) - UF2_BLOCK + 1, UF2_BLOCK):
        block = data[offset:offset + UF2_BLOCK]
        start0, start1, flags, address, length, number, total = struct.unpack_from("<7I", block)
        if (start0, start1) != (UF2_MAGIC_START0, UF2_MAGIC_START1) or \
                struct.unpack_from("<I", block, UF2_BLOCK - 4)[0] != UF2_MAGIC_END or length > 476:
            defects.append(f"UF2 block at file offset {offset} is malformed")
            continue
        expected = total if expected is None else expected
        if flags & UF2_FLAG_NOT_MAIN_FLASH:
            continue
        seen.add(number)
        segments.append((address, block[32:32 + length]))
    if expected is not None and seen != set(range(expected)):
        defects.append(f"UF2 has {len(seen)} of {expected} blocks (truncated or damaged)")
    if not segments:
        defects.append("UF2 has no flash blocks")
    return segments, defects


def elf_header(data: bytes) -> tuple[int, int, int] | None:
    """(e_machine, class, e_flags) of a little-endian ELF of either class, or None."""
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] not in _ELF_LAYOUT or data[5] != 1:
        return None
    flags_at = 36 if data[4] == 1 else 48
    if len(data) < flags_at + 4:
        return None
    return struct.unpack_from("<H", data, 18)[0], data[4], struct.unpack_from("<I", data, flags_at)[0]


def _elf_segments(data: bytes) -> tuple[list[tuple[int, bytes]], list[str]]:
    if len(data) < 52 or data[:4] != b"\x7fELF":
        return [], ["not an ELF file"]
    if data[4] not in _ELF_LAYOUT or data[5] != 1:
        # Klipper targets (ARM MCUs, armhf and arm64 Linux) are little-endian, 32- or 64-bit
        return [], ["not a little-endian ELF file"]
    phoff_at, _shoff_at, phentsize_at, word, offset_at, filesz_at, _align_at = _ELF_LAYOUT[data[4]]
    if len(data) < phentsize_at + 4:
        return [], ["ELF header truncated"]
    phoff = struct.unpack_from("<" + word, data, phoff_at)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, phentsize_at)
    paddr_at = 12 if data[4] == 1 else 24
    segments, defects = [], []
    for index in range(phnum):
        at = phoff + phentsize * index
        if at + phentsize > len(data) or phentsize < filesz_at + struct.calcsize(word):
            defects.append("ELF program headers run past the end of the file (truncated?)")
            break
        p_type = struct.unpack_from("<I", data, at)[0]
        p_offset, p_paddr, p_filesz = (struct.unpack_from("<" + word, data, at + off)[0]
                                       for off in (offset_at, paddr_at, filesz_at))
        if p_type != 1 or not p_filesz:  # PT_LOAD with bytes in the file
            continue
        if p_offset + p_filesz > len(data):
            defects.append(f"ELF segment at {p_paddr:#x} runs past the end of the file (truncated?)")
        segments.append((p_paddr, data[p_offset:p_offset + p_filesz]))
    if not segments and not defects:
        defects.append("ELF has no loadable segment")
    return segments, defects


def _vector_table(image: bytes, base: int | None) -> tuple[int | None, int | None, int | None]:
    """(app address, initial SP, reset vector) of the image's vector table.

    With a known base (uf2, elf) the table is the first candidate offset whose stack pointer
    is in RAM and whose reset handler points into the image; a .bin starts with its table.
    """
    if len(image) < 8:
        return base, None, None
    if base is not None:
        for offset in VECTOR_TABLE_OFFSETS:
            if len(image) < offset + 8:
                break
            stack, reset = struct.unpack_from("<II", image, offset)
            if RAM_REGION[0] <= stack <= RAM_REGION[1] and base + offset <= (reset & ~1) < base + len(image):
                return base + offset, stack, reset
    # no plausible table found (or a .bin): report the first words, the checks will say why
    stack, reset = struct.unpack_from("<II", image, 0)
    return base, stack, reset


def inspect_image(data: bytes, kind: str) -> ImageInfo:
    """Decode a firmware file. Never raises for bad content: problems land in ``defects``."""
    if kind not in KINDS:
        raise ValueError(f"unknown firmware kind {kind!r}; use one of {', '.join(KINDS)}")
    defects: list[str] = []
    base: int | None = None
    image = data
    if kind in ("uf2", "elf"):
        segments, defects = (_uf2_segments if kind == "uf2" else _elf_segments)(data)
        base, image = _flatten(segments) if segments else (None, b"")
    if len(image) < 8:
        defects.append(f"image is {len(image)} bytes: too short to hold a vector table")
    app_address, stack, reset = _vector_table(image, base)
    header = elf_header(data) if kind == "elf" else None
    return ImageInfo(
        kind=kind, size=len(image), sha256=hashlib.sha256(data).hexdigest(),
        dictionary=find_dictionary(image), base_address=base, app_address=app_address,
        initial_sp=stack, reset_vector=reset, defects=tuple(defects),
        elf_machine=header[0] if header else None, elf_class=header[1] if header else None,
        elf_flags=header[2] if header else None,
    )


# ---------------------------------------------------------------- the installed ELF

_ELF_LAYOUT = {  # ELF class -> (e_phoff, e_shoff, e_phentsize, word format, p_offset, p_filesz, p_align)
    1: (28, 32, 42, "I", 4, 16, 28),
    2: (32, 40, 54, "Q", 8, 32, 48),
}
PT_NOTE, NT_GNU_BUILD_ID = 4, 3


def strip_elf(data: bytes) -> bytes:
    """The ELF as the loader sees it: headers and segments only.

    Drops what lies past the last segment (debug info, symbol tables and the section table: the
    debug info holds the build's absolute paths) and zeroes the GNU build id, which the linker
    computes over the debug info too. So two builds of one tree and config in different
    directories strip to the same bytes. A file that is not a little-endian ELF is returned as is.
    """
    if data[:4] != b"\x7fELF" or data[4] not in _ELF_LAYOUT or data[5] != 1:
        return data
    phoff_at, shoff_at, phentsize_at, word, offset_at, filesz_at, align_at = _ELF_LAYOUT[data[4]]
    phoff = struct.unpack_from("<" + word, data, phoff_at)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, phentsize_at)
    shoff = struct.unpack_from("<" + word, data, shoff_at)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, phentsize_at + 4)
    end = phoff + phentsize * phnum
    notes = []
    for index in range(phnum):
        at = phoff + phentsize * index
        if at + phentsize > len(data):
            return data  # truncated: leave it to inspect_image to report
        p_type = struct.unpack_from("<I", data, at)[0]
        p_offset, p_filesz, p_align = (struct.unpack_from("<" + word, data, at + off)[0]
                                       for off in (offset_at, filesz_at, align_at))
        end = max(end, p_offset + p_filesz)
        if p_type == PT_NOTE:
            notes.append((p_offset, p_filesz, 8 if p_align == 8 else 4))
    stripped = bytearray(data[:end])
    struct.pack_into("<" + word, stripped, shoff_at, 0)
    struct.pack_into("<HHH", stripped, phentsize_at + 4, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
    if 0 < shoff < end:  # a section table inside the kept bytes: its sizes differ too
        table_end = min(end, shoff + shentsize * shnum)
        stripped[shoff:table_end] = bytes(table_end - shoff)
    for start, size, align in notes:
        at = start
        while at + 12 <= min(start + size, len(stripped)):
            namesz, descsz, kind = struct.unpack_from("<III", stripped, at)
            name_at = at + 12
            desc_at = name_at + (-(-namesz // align) * align)
            if kind == NT_GNU_BUILD_ID and bytes(stripped[name_at:name_at + namesz]) == b"GNU\0":
                stripped[desc_at:desc_at + descsz] = bytes(descsz)
            at = desc_at + (-(-descsz // align) * align)
    return bytes(stripped)


# ---------------------------------------------------------------- the check before flashing

def _flash_end(board: Board) -> int | None:
    """End of the board's flash from its DfuSe map ("@Internal Flash /0x08000000/8*128Kg")."""
    if not board.dfu_flash_map:
        return None
    parts = board.dfu_flash_map.split("/")
    try:
        address = int(parts[1].strip(), 0)
        for group in parts[2].split(","):
            count, rest = group.strip().split("*")
            size = int("".join(ch for ch in rest if ch.isdigit()))
            unit = {"K": 1024, "M": 1024 * 1024}.get(rest.strip(" 0123456789")[:1].upper(), 1)
            address += int(count) * size * unit
    except (IndexError, ValueError):
        return None
    return address


def check_image_for_board(info: ImageInfo, board: Board, linked_at: int | None = None,
                          host_arch: str | None = None) -> list[str]:
    """Reasons this image must not be flashed to ``board``; empty = it fits (safety rule 3).

    ``host_arch``: the Pi's userland architecture (:mod:`pyinfra_ratos.firmware.arch`), which a
    Linux host MCU's ELF must match. ``linked_at``: the application address the image was linked for, from the resolved config
    stored with it (:func:`pyinfra_ratos.firmware.kconfig.application_address`). A ``.bin`` does not say
    where it loads, and real reset handlers sit ~30 KiB into the image, so the handler check alone
    cannot tell 0x08000000 from 0x08002000: only the config can, and the flash plan always gives it.
    """
    where = f"board {board.id} ({board.name})"
    problems = [f"{where}: {defect}" for defect in info.defects]
    if info.dictionary is None:
        problems.append(f"{where}: no Klipper data dictionary in the image (not a Klipper build, "
                        "or truncated): its version and MCU cannot be checked")
    elif info.mcu != board.mcu:
        problems.append(f"{where}: the image is built for MCU {info.mcu!r}, the board has {board.mcu!r}")
    if board.interface == "linux":
        # a Linux process has no vector table nor flash address, but it must run on the Pi's CPU
        if host_arch is None:
            problems.append(f"{where}: the Pi's architecture is unknown (uname -m not read, or not an "
                            "armhf/arm64 system): not installing a host MCU that might not start")
        else:
            misfit = elf_fits(host_arch, info.elf_machine, info.elf_class, info.elf_flags)
            if misfit:
                problems.append(f"{where}: {misfit}")
        return problems
    if info.initial_sp is None or not RAM_REGION[0] <= info.initial_sp <= RAM_REGION[1]:
        sp = "none" if info.initial_sp is None else f"{info.initial_sp:#x}"
        problems.append(f"{where}: initial stack pointer {sp} is not a RAM address: not a bootable image")
    if linked_at is not None and info.app_address is not None and info.app_address != linked_at:
        problems.append(f"{where}: the image loads at {info.app_address:#010x} but its config links it for "
                        f"{linked_at:#010x}: the file and its config do not belong together")
    address = linked_at if linked_at is not None else info.app_address
    if address is not None and address != board.app_address:
        problems.append(f"{where}: the image is linked for {address:#010x}, "
                        f"the board's application address is {board.app_address:#010x}")
    elif not info.vector_in_range(board.app_address):
        vector = "none" if info.reset_vector is None else f"{info.reset_vector:#010x}"
        problems.append(f"{where}: reset vector {vector} is outside the image when loaded at the board's "
                        f"application address {board.app_address:#010x}: it was linked for another "
                        "bootloader offset")
    end = _flash_end(board)
    if end is not None and board.app_address + info.size > end:
        problems.append(f"{where}: the image ({info.size} bytes at {board.app_address:#010x}) runs past "
                        f"the end of flash at {end:#010x}")
    return problems
