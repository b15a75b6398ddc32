"""The board catalog: what every supported controller board needs to be built and flashed.

One TOML file per board in ``pyinfra_ratos/firmware/boards/<id>.toml``; users add or override boards
with files of the same shape in their own folders (``load_catalog(extra_dirs=...)``). Pure
Python, no pyinfra import: the plan, the farm and the tests all read it.

Keys of a board file (all required unless marked optional):

``id``                string, the RatOS board id, equal to the file name without ``.toml``
``name``              string, human name ("BTT Octopus Pro H723 v1.1")
``mcu``               string, the MCU as Klipper reports it in ``config.MCU`` ("stm32h723xx",
                      "rp2040", "linux")
``mcu_part``          string, optional: the exact STM32 part on the board ("STM32H723ZET6"); its
                      flash size code (E = 512 KiB, G = 1 MiB...) decides the DFU flash map, which
                      differs between parts of one family. Cite the source in a comment.
``kconfig``           string, the Kconfig fragment (``CONFIG_X=y`` lines) fed to
                      ``make olddefconfig``. STM32 fragments need ``CONFIG_LOW_LEVEL_OPTIONS=y``,
                      else kconfiglib drops the crystal choice and the firmware assumes 8 MHz.
``app_address``       int, the application (flash) address = bootloader offset; 0 for Linux
``crystal``           int Hz, optional: the external crystal (absent: none / not applicable)
``interface``         "usb" | "can" | "usbcan" | "linux"
``toolboard``         bool
``can_bitrate``       int bit/s, required for "can" and "usbcan" boards: the bus speed the build runs
                      (1000000 or 500000); the Kconfig fragment's ``CONFIG_CANBUS_FREQUENCY`` must say
                      the same (a host changes both with the board entry's ``kconfig`` override)
``usb``               table of "vvvv:pppp" ids by mode: ``klipper`` (the app), ``dfu`` (STM32
                      ROM DFU), ``katapult`` (Katapult bootloader), ``rp2040_boot`` (BOOTSEL ROM);
                      only the modes the board has
``dfu_flash_map``     string, optional: the DfuSe alt-0 string of the flash
                      ("@Internal Flash   /0x08000000/8*128Kg"); required when "dfu" is a method
``flash_methods``     list, in order of preference: "dfu", "katapult", "rp2040", "linux",
                      "manual-sd" (no tool flashes it: the operator copies a file to an SD card)
``sd_firmware_name``  string, optional: the file name the board's SD-card bootloader reads at power-on
                      ("firmware.bin"); required with "manual-sd"
``firmware_file``     "klipper.bin" | "klipper.uf2" | "klipper.elf": the build output to flash
``unattended_flash``  bool: false = never flash without an explicit operator flag
``unattended_reason`` string, required when ``unattended_flash`` is false: why
``ram_top``           int, optional: top of RAM (initial stack pointer of an image)
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

BOARDS_DIR = Path(__file__).resolve().parent / "boards"

INTERFACES = ("usb", "can", "usbcan", "linux")
# the methods of pyinfra_ratos.firmware.methods (a name only here: a new method is a new module
# there and a value in a board file, never an edit of this list); the plan refuses unknown ones
FLASH_METHODS = ("dfu", "katapult", "rp2040", "linux", "manual-sd")
_METHOD_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
FIRMWARE_FILES = ("klipper.bin", "klipper.uf2", "klipper.elf")
USB_MODES = ("klipper", "dfu", "katapult", "rp2040_boot")
CAN_BITRATES = (1000000, 500000)  # Klipper's default and the common vendor one (bootloaders-can.md 2.4)

_USB_ID = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}\Z")
# STM32 <line, e.g. H723> <pin count> <flash size code> <package> <temperature range>
_STM32_PART = re.compile(r"^STM32([A-Z][0-9][0-9A-Z]{2})([A-Z])([0-9A-Z])([A-Z])([0-9])\Z")
# ST's flash size codes (the letter after the pin count in the part number), in KiB
STM32_FLASH_KIB = {"4": 16, "6": 32, "8": 64, "B": 128, "Z": 192, "C": 256, "D": 384, "E": 512, "F": 768,
                   "G": 1024, "H": 1536, "I": 2048}
_STM32_OFFSET = re.compile(r"^CONFIG_STM32_FLASH_START_([0-9A-F]+)=y$", re.MULTILINE)
_STM32_CRYSTAL = re.compile(r"^CONFIG_STM32_CLOCK_REF_(\d+)M=y$", re.MULTILINE)

# key -> (accepted types, required, how to fix it)
_SCHEMA: dict[str, tuple[tuple[type, ...], bool, str]] = {
    "id": ((str,), True, 'set id = "<file name without .toml>"'),
    "name": ((str,), True, 'set name = "Maker Board vX.Y"'),
    "mcu": ((str,), True, 'set mcu to Klipper\'s MCU string, e.g. "stm32h723xx"'),
    "mcu_part": ((str,), False, 'set mcu_part to the part number printed on the chip, e.g. "STM32H723ZET6"'),
    "kconfig": ((str,), True, 'set kconfig = """CONFIG_...=y ...""" (a multi-line string)'),
    "app_address": ((int,), True, "set app_address = 0x08020000 (the bootloader offset)"),
    "crystal": ((int,), False, "set crystal = 25000000 (Hz) or remove the key"),
    "interface": ((str,), True, f"set interface to one of {', '.join(INTERFACES)}"),
    "toolboard": ((bool,), True, "set toolboard = true or false"),
    "can_bitrate": ((int,), False, "set can_bitrate = 1000000 (or 500000) for a CAN or USB-to-CAN board"),
    "usb": ((dict,), True, 'add a [usb] table, e.g. klipper = "1d50:614e"'),
    "dfu_flash_map": ((str,), False, 'set dfu_flash_map = "@Internal Flash  /0x08000000/..."'),
    "flash_methods": ((list,), True, f"set flash_methods to a list of methods, e.g. {', '.join(FLASH_METHODS)}"),
    "firmware_file": ((str,), True, f"set firmware_file to one of {', '.join(FIRMWARE_FILES)}"),
    "unattended_flash": ((bool,), True, "set unattended_flash = true or false"),
    "unattended_reason": ((str,), False, 'set unattended_reason = "why it is unsafe"'),
    "ram_top": ((int,), False, "set ram_top = 0x20020000 or remove the key"),
    "sd_firmware_name": ((str,), False, 'set sd_firmware_name = "firmware.bin" (what the SD bootloader reads)'),
}


class CatalogError(ValueError):
    """A board file that cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Board:
    id: str
    name: str
    mcu: str
    kconfig: str
    app_address: int
    interface: str
    toolboard: bool
    usb: Mapping[str, str]
    flash_methods: tuple[str, ...]
    firmware_file: str
    unattended_flash: bool
    crystal: int | None = None
    dfu_flash_map: str | None = None
    unattended_reason: str | None = None
    ram_top: int | None = None
    mcu_part: str | None = None
    sd_firmware_name: str | None = None
    can_bitrate: int | None = None
    source: Path | None = field(default=None, compare=False)

    @property
    def is_stm32(self) -> bool:
        return self.mcu.startswith("stm32")


def part_flash_size(part: str) -> int | None:
    """Bytes of flash of an STM32 part from its number ("STM32G0B1CBT6" -> 128 KiB), or None."""
    match = _STM32_PART.match(part)
    if match is None or match.group(3) not in STM32_FLASH_KIB:
        return None
    return STM32_FLASH_KIB[match.group(3)] * 1024


def _fail(path: Path, key: str, problem: str, fix: str) -> CatalogError:
    return CatalogError(f"{path}: key '{key}': {problem}. Fix: {fix}")


def _check_types(path: Path, data: Mapping[str, Any]) -> None:
    for key in data:
        if key not in _SCHEMA:
            raise _fail(path, key, "unknown key (a typo?)", f"use one of {', '.join(_SCHEMA)}")
    for key, (types, required, fix) in _SCHEMA.items():
        if key not in data:
            if required:
                raise _fail(path, key, "missing", fix)
            continue
        value = data[key]
        # bool is an int in Python: an address of `true` must not pass as 1
        if isinstance(value, bool) and bool not in types:
            raise _fail(path, key, f"expected {types[0].__name__}, got a boolean", fix)
        if not isinstance(value, types):
            raise _fail(path, key, f"expected {types[0].__name__}, got {type(value).__name__}", fix)


def _check_values(path: Path, data: Mapping[str, Any]) -> None:
    if data["id"] != path.stem:
        raise _fail(path, "id", f"'{data['id']}' differs from the file name", f'set id = "{path.stem}" or rename the file')
    if data["interface"] not in INTERFACES:
        raise _fail(path, "interface", f"'{data['interface']}' is not known", _SCHEMA["interface"][2])
    if data["firmware_file"] not in FIRMWARE_FILES:
        raise _fail(path, "firmware_file", f"'{data['firmware_file']}' is not known", _SCHEMA["firmware_file"][2])
    methods = data["flash_methods"]
    if not methods or any(not isinstance(method, str) or not _METHOD_NAME.fullmatch(method) for method in methods):
        raise _fail(path, "flash_methods", f"{methods!r} is empty or has an unknown method", _SCHEMA["flash_methods"][2])
    for mode, usb_id in data["usb"].items():
        if mode not in USB_MODES:
            raise _fail(path, f"usb.{mode}", "unknown USB mode", f"use one of {', '.join(USB_MODES)}")
        if not isinstance(usb_id, str) or not _USB_ID.match(usb_id):
            raise _fail(path, f"usb.{mode}", f"{usb_id!r} is not a lower-case vvvv:pppp id", 'write it as "1d50:614e"')
    part = data.get("mcu_part")
    if part is not None:
        match = _STM32_PART.match(part)
        if match is None or part_flash_size(part) is None:
            raise _fail(path, "mcu_part", f"'{part}' is not an STM32 part number", _SCHEMA["mcu_part"][2])
        if data["mcu"] != f"stm32{match.group(1).lower()}xx":
            raise _fail(path, "mcu_part", f"'{part}' is not a part of {data['mcu']}", _SCHEMA["mcu_part"][2])
    by_dfu = "dfu" in methods or "can-bridge" in methods  # a bridge is written in its ROM DFU
    if by_dfu and not data.get("dfu_flash_map"):
        raise _fail(path, "dfu_flash_map", "missing for a board flashed by DFU", _SCHEMA["dfu_flash_map"][2])
    if by_dfu and "dfu" not in data["usb"]:
        raise _fail(path, "usb.dfu", "missing for a board flashed by DFU", 'add dfu = "0483:df11" to [usb]')
    sd_name = data.get("sd_firmware_name")
    if "manual-sd" in methods and not sd_name:
        raise _fail(path, "sd_firmware_name", "missing for a board flashed from an SD card", _SCHEMA["sd_firmware_name"][2])
    if sd_name is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", sd_name):
        raise _fail(path, "sd_firmware_name", f"{sd_name!r} is not a plain file name", _SCHEMA["sd_firmware_name"][2])
    if not data["unattended_flash"] and not data.get("unattended_reason", "").strip():
        raise _fail(path, "unattended_reason", "required when unattended_flash is false", _SCHEMA["unattended_reason"][2])
    _check_can_bitrate(path, data)
    _check_kconfig(path, data)


def _check_can_bitrate(path: Path, data: Mapping[str, Any]) -> None:
    bitrate = data.get("can_bitrate")
    on_can = data["interface"] in ("can", "usbcan")
    if on_can and bitrate is None:
        raise _fail(path, "can_bitrate", "missing for a CAN board", _SCHEMA["can_bitrate"][2])
    if bitrate is None:
        return
    if not on_can:
        raise _fail(path, "can_bitrate", f"set on a {data['interface']} board", "remove the key")
    if bitrate not in CAN_BITRATES:
        raise _fail(path, "can_bitrate", f"{bitrate} is not a bus speed RatOS printers run",
                    f"use one of {', '.join(map(str, CAN_BITRATES))}")
    found = re.findall(r"^CONFIG_CANBUS_FREQUENCY=(\d+)$", data["kconfig"], re.MULTILINE)
    if found != [str(bitrate)]:
        raise _fail(path, "kconfig", f"can_bitrate is {bitrate} but the fragment sets CANBUS_FREQUENCY to "
                    f"{found or 'nothing'}", f"add the line CONFIG_CANBUS_FREQUENCY={bitrate}")


def _check_kconfig(path: Path, data: Mapping[str, Any]) -> None:
    """The fragment must agree with the facts stated beside it: a mismatch here bricks boards."""
    text = data["kconfig"]
    if not data["mcu"].startswith("stm32"):
        return
    if not re.search(r"^CONFIG_LOW_LEVEL_OPTIONS=y$", text, re.MULTILINE):
        raise _fail(path, "kconfig", "an STM32 fragment without CONFIG_LOW_LEVEL_OPTIONS=y loses its crystal setting",
                    "add the line CONFIG_LOW_LEVEL_OPTIONS=y")
    offsets = _STM32_OFFSET.findall(text)
    if len(offsets) != 1:
        raise _fail(path, "kconfig", "needs exactly one CONFIG_STM32_FLASH_START_xxxx=y line",
                    "add the bootloader offset, e.g. CONFIG_STM32_FLASH_START_20000=y")
    expected = 0x08000000 + int(offsets[0], 16)
    if data["app_address"] != expected:
        raise _fail(path, "app_address", f"{data['app_address']:#x} differs from the fragment's offset ({expected:#x})",
                    f"set app_address = {expected:#010x} or fix the fragment")
    crystals = _STM32_CRYSTAL.findall(text)
    crystal = data.get("crystal")
    if crystal is not None and crystals != [str(crystal // 1_000_000)]:
        raise _fail(path, "kconfig", f"crystal is {crystal} Hz but the fragment selects {crystals or 'none'}",
                    f"add CONFIG_STM32_CLOCK_REF_{crystal // 1_000_000}M=y")


def load_board(path: Path) -> Board:
    """Read and validate one board file."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise CatalogError(f"{path}: not valid TOML ({error}). Fix the syntax at that line.") from error
    _check_types(path, data)
    _check_values(path, data)
    return Board(
        id=data["id"],
        name=data["name"],
        mcu=data["mcu"],
        kconfig=data["kconfig"].strip() + "\n",
        app_address=data["app_address"],
        interface=data["interface"],
        toolboard=data["toolboard"],
        usb=dict(data["usb"]),
        flash_methods=tuple(data["flash_methods"]),
        firmware_file=data["firmware_file"],
        unattended_flash=data["unattended_flash"],
        crystal=data.get("crystal"),
        dfu_flash_map=data.get("dfu_flash_map"),
        can_bitrate=data.get("can_bitrate"),
        unattended_reason=data.get("unattended_reason"),
        ram_top=data.get("ram_top"),
        mcu_part=data.get("mcu_part"),
        sd_firmware_name=data.get("sd_firmware_name"),
        source=path,
    )


def load_catalog(extra_dirs: Sequence[Path] = ()) -> dict[str, Board]:
    """All boards: the packaged ones, then each user folder in order (later files override)."""
    directories = (BOARDS_DIR, *(Path(d) for d in extra_dirs))
    for directory in directories:
        if not directory.is_dir():
            raise CatalogError(f"{directory}: board folder not found. Fix: create it or remove it from the list.")
    # planning a fleet asks for the catalog per host and per operation: parse each folder's
    # files once, and again only when one of them changed (names and modification times)
    stamp = _PINNED.get(directories) if _PINNED is not None else None
    if stamp is None:
        stamp = tuple(stamp for d in directories for stamp in _stamps(d))
        if _PINNED is not None:
            _PINNED[directories] = stamp
    return dict(_parsed(stamp))


_PINNED: dict[tuple[Path, ...], tuple[tuple[str, int], ...]] | None = None


@contextmanager
def pinned() -> Iterator[None]:
    """Within: :func:`load_catalog` answers the catalog as it was when first asked here, without
    looking at the folders again (a fleet run plans every printer against the catalog it checked
    the inventory with; the stamp of the ~30 board files per call was 3 ``stat`` walks per printer)."""
    global _PINNED
    outer = _PINNED
    _PINNED = {} if outer is None else outer
    try:
        yield
    finally:
        _PINNED = outer


def _stamps(directory: Path) -> list[tuple[str, int]]:
    # os.scandir: the stamp is taken per host and operation, pathlib's glob cost 0.3 ms a folder
    with os.scandir(directory) as entries:
        return sorted((entry.path, entry.stat().st_mtime_ns) for entry in entries
                      if entry.name.endswith(".toml") and entry.is_file())


@functools.lru_cache(maxsize=8)
def _parsed(stamp: tuple[tuple[str, int], ...]) -> dict[str, Board]:
    boards: dict[str, Board] = {}
    for path_text, _ in stamp:
        board = load_board(Path(path_text))
        boards[board.id] = board
    return boards


def get_board(board_id: str, extra_dirs: Sequence[Path] = ()) -> Board:
    """One board by id; the error lists the known ids."""
    boards = load_catalog(extra_dirs)
    try:
        return boards[board_id]
    except KeyError:
        raise CatalogError(
            f"unknown board id '{board_id}'. Fix: use one of {', '.join(sorted(boards))} "
            "or add a <id>.toml file to a user board folder."
        ) from None
