"""The board-spec file the USB emulator reads, with the defaults each MCU family implies.

Stdlib only (the emulator runs under Debian's python3).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

MODES = ("klipper", "dfu", "katapult", "can-bridge", "rp2040-boot", "absent")
FAULTS = (
    "dfu-exit-74", "dfu-exit-251", "no-reenumerate", "stuck-dfu",
    "ignore-bootloader-request", "slow-erase", "corrupt-write",
    "no-return-after-leave",  # RP2040 BOOTSEL: the REBOOT is accepted, the board never comes back
    "katapult-transfer-error", "katapult-wrong-start",
    "bridge-never-back",  # a USB-to-CAN bridge: its bootloader request resets it back into its application
)
# RP2040 BOOTSEL: the N-th PICOBOOT WRITE (from 1) fails with a flash error
TRANSFER_ERROR = re.compile(r"transfer-error-block-[1-9][0-9]*")


def fault_name(fault: str) -> str:
    """A fault without its argument (``katapult-transfer-error@5`` -> ``katapult-transfer-error``)."""
    name, _, arg = fault.partition("@")
    return name if name == "katapult-transfer-error" and (arg == "" or arg.isdigit()) else fault

# alt-0 string and wTransferSize of the ROM DFU, by MCU prefix (longest prefix wins)
ROM_DFU = {
    "stm32h7": ("@Internal Flash   /0x08000000/8*128Kg", 1024),
    "stm32h743": ("@Internal Flash   /0x08000000/16*128Kg", 1024),
    "stm32f446": ("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg", 2048),
    "stm32f4": ("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg", 2048),
    "stm32g0": ("@Internal Flash   /0x08000000/256*02Kg", 1024),
    "rp2040": ("@Flash /0x10000000/1024*04Kg", 256),
}


def _rom_defaults(mcu: str) -> tuple[str, int]:
    prefixes = sorted((p for p in ROM_DFU if mcu.startswith(p)), key=len, reverse=True)
    return ROM_DFU[prefixes[0]] if prefixes else ROM_DFU["stm32h7"]


def _int(value: int | str) -> int:
    return value if isinstance(value, int) else int(value, 0)


@dataclass
class BoardSpec:
    port: str
    board: str
    mcu: str
    mode: str
    serial: str
    app_address: int
    dfu_flash_map: str
    dfu_transfer_size: int
    image: str | None
    bootloader: bytes
    image_address: int | None = None  # where ``image`` starts in flash (None: app_address)
    faults: list[str] = field(default_factory=list)
    mcu_name: str | None = None
    bootloader_request: str = "dfu"  # what the 1200-baud request leads to: "dfu", "katapult" or "rp2040-boot"
    katapult_start: int | None = None  # the application start Katapult reports (None: app_address)
    katapult_version: str = "v0.0.1-110-gb0bf421"

    @property
    def katapult_app_start(self) -> int:
        return self.app_address if self.katapult_start is None else self.katapult_start

    @property
    def busnum(self) -> int:
        return int(self.port.split("-", 1)[0])

    @property
    def devpath(self) -> str:
        return self.port.split("-", 1)[1]


def board_from_dict(raw: dict) -> BoardSpec:
    mcu = raw["mcu"]
    flash_map, transfer = _rom_defaults(mcu)
    mode = raw.get("mode", "klipper")
    faults = list(raw.get("faults", []))
    for value, allowed, what in ((mode, MODES, "mode"),) + tuple((fault_name(f), FAULTS, "fault") for f in faults):
        if value not in allowed and not (what == "fault" and TRANSFER_ERROR.fullmatch(value)):
            raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    bootloader = raw.get("bootloader")
    return BoardSpec(
        port=raw["port"],
        board=raw.get("board", ""),
        mcu=mcu,
        mode=mode,
        serial=raw.get("serial") or raw.get("board", ""),
        app_address=_int(raw.get("app_address", 0x08000000)),
        dfu_flash_map=raw.get("dfu_flash_map") or flash_map,
        dfu_transfer_size=_int(raw.get("dfu_transfer_size") or transfer),
        image=raw.get("image"),
        image_address=_int(raw["image_address"]) if raw.get("image_address") is not None else None,
        bootloader=bootloader.encode() if isinstance(bootloader, str) else b"",
        faults=faults,
        mcu_name=raw.get("mcu_name"),
        bootloader_request=raw.get("bootloader_request", "dfu"),
        katapult_start=_int(raw["katapult_start"]) if raw.get("katapult_start") is not None else None,
        katapult_version=raw.get("katapult_version") or "v0.0.1-110-gb0bf421",
    )


def load(path: str) -> list[BoardSpec]:
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    boards = raw["boards"] if isinstance(raw, dict) else raw
    specs = [board_from_dict(entry) for entry in boards]
    ports = [spec.port for spec in specs]
    if len(set(ports)) != len(ports):
        raise ValueError(f"two boards on one USB port in {path}: {ports}")
    return specs
