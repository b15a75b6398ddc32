"""USB identities of the board modes: descriptors, strings and interface attributes as hardware shows them."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

# mode -> (vid, pid)
IDS = {
    "klipper": (0x1D50, 0x614E),
    "katapult": (0x1D50, 0x6177),
    "can-bridge": (0x1D50, 0x606F),
    "dfu": (0x0483, 0xDF11),
    "rp2040-boot": (0x2E8A, 0x0003),
}

# Other alt settings of the STM32 ROM DFU interface, by MCU family (alt 0 comes from the board spec).
ROM_EXTRA_ALTS = {
    "stm32h7": ["@Option Bytes   /0x5200201C/01*128 e"],
    "stm32f4": [
        "@Option Bytes  /0x1FFFC000/01*016 e",
        "@OTP Memory /0x1FFF7800/01*512 e,01*016 e",
        "@Device Feature/0xFFFF0000/01*004 e",
    ],
    "stm32g0": ["@Option Bytes   /0x1FFF7800/01*128 e", "@OTP Memory   /0x1FFF7000/01*1Ke"],
}


@dataclass
class Interface:
    number: int
    alt: int
    cls: int
    subclass: int
    protocol: int
    endpoints: list[tuple[int, int, int, int]]  # (address, attributes, max packet, interval)
    name: str = ""
    extra: bytes = b""  # class-specific descriptors following the interface descriptor


@dataclass
class Identity:
    vid: int
    pid: int
    bcd_device: int
    device_class: tuple[int, int, int]
    manufacturer: str
    product: str
    serial: str
    interfaces: list[Interface] = field(default_factory=list)
    transfer_size: int = 0  # DFU wTransferSize, 0 when not a DFU device

    def strings(self) -> list[str]:
        """String table, index 1.. (0 is the language list)."""
        table = [self.manufacturer, self.product, self.serial]
        table += [intf.name for intf in self.interfaces]
        return [text for text in table if text]

    def string_index(self, text: str) -> int:
        return self.strings().index(text) + 1 if text else 0

    def device_descriptor(self) -> bytes:
        cls, sub, proto = self.device_class
        return struct.pack(
            "<BBHBBBBHHHBBBB", 18, 1, 0x0200, cls, sub, proto, 64,
            self.vid, self.pid, self.bcd_device, self.string_index(self.manufacturer),
            self.string_index(self.product), self.string_index(self.serial), 1,
        )

    def config_descriptor(self) -> bytes:
        body = b""
        for intf in self.interfaces:
            body += struct.pack(
                "<BBBBBBBBB", 9, 4, intf.number, intf.alt, len(intf.endpoints),
                intf.cls, intf.subclass, intf.protocol, self.string_index(intf.name),
            )
            body += intf.extra
            for address, attributes, packet, interval in intf.endpoints:
                body += struct.pack("<BBBBHB", 7, 5, address, attributes, packet, interval)
        count = len({intf.number for intf in self.interfaces})
        return struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), count, 1, 0, 0xC0, 50) + body

    def string_descriptor(self, index: int) -> bytes | None:
        if index == 0:
            return struct.pack("<BBH", 4, 3, 0x0409)
        table = self.strings()
        if not 1 <= index <= len(table):
            return None
        encoded = table[index - 1].encode("utf-16-le")
        return bytes([2 + len(encoded), 3]) + encoded


def uid_bytes(serial: str, port: str) -> bytes:
    """The 12-byte chip UID: the serial itself when it is chip-UID style hex, else derived stably."""
    try:
        raw = bytes.fromhex(serial)
        if len(raw) == 12:
            return raw
    except ValueError:
        pass
    return hashlib.sha256(f"{serial}@{port}".encode()).digest()[:12]


def rom_dfu_serial(uid: bytes) -> str:
    """Serial string as the STM32 ROM bootloader builds it from the UID words."""
    w0, w1, w2 = struct.unpack("<III", uid)
    return f"{(w0 + w2) & 0xFFFFFFFF:08X}{w1:08X}"[:12]


def _cdc(mcu: str) -> list[Interface]:
    functional = bytes.fromhex("0524001001") + bytes.fromhex("04240202") + bytes.fromhex("0524060001")
    return [
        Interface(0, 0, 0x02, 0x02, 0x01, [(0x83, 0x03, 8, 255)], extra=functional),
        Interface(1, 0, 0x0A, 0x00, 0x00, [(0x02, 0x02, 64, 0), (0x81, 0x02, 64, 0)]),
    ]


def identity(mode: str, mcu: str, serial: str, port: str, flash_map: str, transfer_size: int) -> Identity:
    vid, pid = IDS[mode]
    if mode in ("klipper", "katapult"):
        maker = "Klipper" if mode == "klipper" else "katapult"
        return Identity(vid, pid, 0x0100, (0x02, 0, 0), maker, mcu, serial, _cdc(mcu))
    if mode == "can-bridge":
        bulk = [(0x81, 0x02, 64, 0), (0x02, 0x02, 64, 0)]
        return Identity(vid, pid, 0x0100, (0, 0, 0), "Klipper", mcu, serial,
                        [Interface(0, 0, 0xFF, 0x00, 0x00, bulk)])
    if mode == "rp2040-boot":
        uid = uid_bytes(serial, port)
        return Identity(vid, pid, 0x0100, (0, 0, 0), "Raspberry Pi", "RP2 Boot", uid.hex().upper()[:12], [
            Interface(0, 0, 0x08, 0x06, 0x50, [(0x81, 0x02, 64, 0), (0x02, 0x02, 64, 0)]),
            Interface(1, 0, 0xFF, 0x00, 0x00, [(0x03, 0x02, 64, 0), (0x84, 0x02, 64, 0)]),
        ])
    # ROM DFU: one interface, one alt setting per memory, DfuSe 1.1a functional descriptor
    alts = [flash_map] + ROM_EXTRA_ALTS.get(mcu[:7], [])
    functional = struct.pack("<BBBHHH", 9, 0x21, 0x0B, 255, transfer_size, 0x011A)
    interfaces = [Interface(0, n, 0xFE, 0x01, 0x02, [], name) for n, name in enumerate(alts)]
    interfaces[-1].extra = functional
    return Identity(vid, pid, 0x2200, (0, 0, 0), "STMicroelectronics", "STM32  BOOTLOADER",
                    rom_dfu_serial(uid_bytes(serial, port)), interfaces, transfer_size)


def hub_identity(root: bool, busnum: int) -> Identity:
    """The hubs between a Raspberry Pi 4 and its USB-A ports: the xHCI root hub and the VL805 hub."""
    hub_interface = [Interface(0, 0, 0x09, 0x00, 0x00, [(0x81, 0x03, 4, 12)])]
    if root:
        return Identity(0x1D6B, 0x0002, 0x0601, (0x09, 0, 1), "Linux 6.1.0-rpi7-rpi-v8 xhci-hcd",
                        "xHCI Host Controller", "0000:01:00.0", hub_interface)
    return Identity(0x2109, 0x3431, 0x0421, (0x09, 0, 1), "", "USB2.0 Hub", "", hub_interface)
