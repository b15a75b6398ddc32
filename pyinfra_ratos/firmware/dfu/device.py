"""DfuSe devices on USB through pyusb: find one by port path or serial, read its DFU descriptors.

Needs only pyusb (python3-usb) and libusb; usbfs is root-only on a Pi, so run as root there.
"""

from __future__ import annotations

import errno
import glob
import os
import time
from dataclasses import dataclass, field
from typing import Any

import usb.core
import usb.util

from .errors import DeviceNotFound, Gone, Stalled, TimedOut, TransferFailed
from .memory import MemoryMap, parse_memory_map

DFU_CLASS, DFU_SUBCLASS, DFU_MODE_PROTOCOL = 0xFE, 0x01, 0x02
SYSFS_USB = "/sys/bus/usb/devices"
FUNCTIONAL = 0x21  # DFU functional descriptor type
CAN_DOWNLOAD, CAN_UPLOAD, MANIFESTATION_TOLERANT, WILL_DETACH = 1, 2, 4, 8


def port_path(dev: Any) -> str | None:
    """``1-1.3`` as dfu-util ``-p``, sysfs and udev's ID_PATH name the port; None for a root hub."""
    numbers = dev.port_numbers
    return f"{dev.bus}-{'.'.join(str(n) for n in numbers)}" if numbers else None


def dfu_interfaces(dev: Any) -> list[Any]:
    """The DFU-mode interface descriptors (one per alt setting), from the cached config descriptors."""
    found = []
    for config in dev:
        for intf in config:
            if (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol) == \
                    (DFU_CLASS, DFU_SUBCLASS, DFU_MODE_PROTOCOL):
                found.append(intf)
    return found


@dataclass(frozen=True)
class Functional:
    attributes: int
    detach_timeout_ms: int
    transfer_size: int
    dfu_version: int  # BCD: 0x011a = DfuSe

    @property
    def can_upload(self) -> bool:
        return bool(self.attributes & CAN_UPLOAD)

    @property
    def can_download(self) -> bool:
        return bool(self.attributes & CAN_DOWNLOAD)


def parse_functional(extra: bytes) -> Functional | None:
    """The DFU functional descriptor in an interface's (or configuration's) extra descriptor bytes."""
    offset = 0
    while offset + 2 <= len(extra):
        length, kind = extra[offset], extra[offset + 1]
        if length < 2:
            break
        if kind == FUNCTIONAL and length >= 7:
            raw = extra[offset:offset + length] + bytes(9)
            detach, transfer, version = (int.from_bytes(raw[i:i + 2], "little") for i in (3, 5, 7))
            return Functional(raw[2], detach, transfer, version if length >= 9 else 0x0100)
        offset += length
    return None


class UsbTransport:
    """pyusb's ``ctrl_transfer`` with its errors turned into :class:`TransferFailed` subclasses."""

    def __init__(self, dev: Any) -> None:
        self.dev = dev

    def ctrl_transfer(self, bmRequestType: int, bRequest: int, wValue: int = 0, wIndex: int = 0,
                      data_or_wLength: Any = None, timeout: int | None = None) -> Any:
        try:
            return self.dev.ctrl_transfer(bmRequestType, bRequest, wValue, wIndex, data_or_wLength, timeout)
        except usb.core.USBError as exc:
            raise usb_failure(exc, f"control request {bRequest}") from None

    def reset(self) -> None:
        """USB port reset, best effort: after a leave the device is usually gone already."""
        try:
            self.dev.reset()
        except usb.core.USBError:
            pass


def usb_failure(exc: usb.core.USBError, what: str) -> TransferFailed:
    code = exc.errno
    if code == errno.EPIPE:
        return Stalled(f"{what} stalled")
    if code == errno.ETIMEDOUT or type(exc).__name__ == "USBTimeoutError":
        return TimedOut(f"{what} timed out")
    if code in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN):
        return Gone(f"{what}: the device is gone from the bus")
    return TransferFailed(f"{what}: {exc}")


@dataclass
class DfuDevice:
    dev: Any
    port: str | None
    vid: int
    pid: int
    serial: str = ""
    functional: Functional | None = None
    alts: list[tuple[int, str]] = field(default_factory=list)  # (alt setting, name string)
    interface: int = 0

    def label(self, name: str | None = None) -> str:
        serial = f", serial {self.serial}" if self.serial else ""
        return f"{name} on USB port {self.port}" if name else f"DFU device {self.vid:04x}:{self.pid:04x} on USB port {self.port}{serial}"

    def memory_map(self, alt: int = 0) -> MemoryMap:
        names = dict(self.alts)
        if alt not in names:
            raise DeviceNotFound(f"{self.label()}: no alt setting {alt}")
        try:
            return parse_memory_map(names[alt])
        except ValueError as exc:
            raise DeviceNotFound(f"{self.label()}: alt {alt} is not a DfuSe memory: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        fn = self.functional
        return {"port": self.port, "id": f"{self.vid:04x}:{self.pid:04x}", "serial": self.serial,
                "transfer_size": fn.transfer_size if fn else None,
                "attributes": fn.attributes if fn else None,
                "dfu_version": f"{fn.dfu_version:04x}" if fn else None,
                "alts": [{"alt": alt, "name": name} for alt, name in self.alts]}


def _string(dev: Any, index: int, what: str, port: str | None) -> str:
    if not index:
        return ""
    try:
        return usb.util.get_string(dev, index) or ""
    except usb.core.USBError as exc:
        if exc.errno == errno.EACCES:
            raise DeviceNotFound(f"DFU device on USB port {port}: permission denied opening it "
                                 "(usbfs is root-only: run as root)") from None
        raise usb_failure(exc, f"DFU device on USB port {port}: reading its {what}") from None
    except ValueError as exc:  # pyusb: "The device has no langid" and friends
        raise DeviceNotFound(f"DFU device on USB port {port}: cannot read its {what}: {exc}") from None


def describe(dev: Any) -> DfuDevice:
    """Descriptors and strings of a DFU-mode device (opens it: needs usbfs access)."""
    port = port_path(dev)
    interfaces = dfu_interfaces(dev)
    functional = None
    for intf in interfaces:
        functional = functional or parse_functional(bytes(intf.extra_descriptors or b""))
    for config in dev:
        functional = functional or parse_functional(bytes(config.extra_descriptors or b""))
    alts = [(intf.bAlternateSetting, _string(dev, intf.iInterface, "alt name", port)) for intf in interfaces]
    return DfuDevice(dev, port, dev.idVendor, dev.idProduct,
                     _string(dev, dev.iSerialNumber, "serial", port), functional, alts,
                     interfaces[0].bInterfaceNumber if interfaces else 0)


def _enumerate() -> list[Any]:
    try:
        return list(usb.core.find(find_all=True))
    except usb.core.NoBackendError:
        raise DeviceNotFound("pyusb finds no libusb backend: install libusb-1.0") from None


def list_devices() -> list[DfuDevice]:
    return [describe(dev) for dev in _enumerate() if dfu_interfaces(dev)]


def _sysfs_port_state(port: str) -> tuple[str, int | None] | None:
    """("dfu"|"other", devnum) or ("empty", None) from sysfs; None without USB sysfs (not Linux)."""
    if not os.path.isdir(SYSFS_USB):
        return None
    base = os.path.join(SYSFS_USB, port)
    try:
        with open(os.path.join(base, "devnum")) as handle:
            devnum = int(handle.read().strip())
    except (OSError, ValueError):
        return "empty", None
    for interface in glob.glob(glob.escape(base) + ":*"):
        try:
            triple = tuple(int(open(os.path.join(interface, name)).read().strip(), 16)
                           for name in ("bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol"))
        except (OSError, ValueError):
            continue  # vanishing while we look
        if triple == (DFU_CLASS, DFU_SUBCLASS, DFU_MODE_PROTOCOL):
            return "dfu", devnum
    return "other", devnum


def port_state(port: str) -> tuple[str, int | None]:
    """What is on ``port`` now: ("dfu"|"other", devnum) or ("empty", None).

    sysfs first: libusb keeps one device list per process, refreshed only by hotplug events, so
    sysfs is the fresh view on Linux; elsewhere a pyusb enumeration.
    """
    state = _sysfs_port_state(port)
    if state is not None:
        return state
    for dev in _enumerate():
        if port_path(dev) == port:
            return ("dfu" if dfu_interfaces(dev) else "other"), dev.address
    return "empty", None


def wait_left(port: str, devnum: int | None, timeout_s: float) -> bool:
    """After a leave request: True once the port shows another device, or the DFU device went and
    did not come back as DFU within ``timeout_s``; False while (or when again) in DFU."""
    deadline = time.monotonic() + timeout_s
    gone = False
    while True:
        state, now = port_state(port)
        if state == "empty":
            gone = True
        elif devnum is not None and now == devnum:
            pass  # the DFU device itself, still there or half torn down
        elif state == "other":
            return True  # the application enumerated
        elif gone or devnum is not None:
            return False  # re-enumerated as DFU: the ROM did not start the application
        if time.monotonic() > deadline:
            return gone
        time.sleep(0.05)


def find_device(port: str | None = None, serial: str | None = None, wait_s: float = 0.0) -> DfuDevice:
    """The one DFU-mode device on ``port`` (or with ``serial``), waiting up to ``wait_s`` for it."""
    if not port and not serial:
        raise DeviceNotFound("select the board by --port (USB port path, e.g. 1-1.3) or --serial")
    where = f"USB port {port}" if port else f"serial {serial}"
    deadline = time.monotonic() + wait_s
    if port:
        # wait on sysfs before libusb builds its (then fixed) device list, see port_state()
        while time.monotonic() < deadline and (_sysfs_port_state(port) or ("dfu",))[0] != "dfu":
            time.sleep(0.1)
    while True:
        devices = _enumerate()
        if port:
            on_port = [dev for dev in devices if port_path(dev) == port]
            dfu = [dev for dev in on_port if dfu_interfaces(dev)]
            if dfu:
                found = describe(dfu[0])
                if serial and found.serial != serial:
                    raise DeviceNotFound(f"DFU device on {where} has serial {found.serial!r}, not {serial!r}")
                return found
        else:
            matches = [d for d in (describe(dev) for dev in devices if dfu_interfaces(dev)) if d.serial == serial]
            if len(matches) > 1:
                raise DeviceNotFound(f"{len(matches)} DFU devices have serial {serial}, on ports "
                                     f"{', '.join(str(m.port) for m in matches)}: select by --port")
            if matches:
                return matches[0]
            on_port = []
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if on_port:
        ids = ", ".join(f"{d.idVendor:04x}:{d.idProduct:04x}" for d in on_port)
        raise DeviceNotFound(f"{where} holds {ids}, not a DFU device (not in its bootloader yet?)")
    others = [f"{port_path(d)} ({d.idVendor:04x}:{d.idProduct:04x})" for d in devices if dfu_interfaces(d)]
    seen = f"; DFU devices seen: {', '.join(others)}" if others else "; no DFU device on the bus"
    raise DeviceNotFound(f"no DFU device on {where}{seen}")


class Claimed:
    """Context manager: the DFU interface claimed at alt 0, released and disposed on exit."""

    def __init__(self, device: DfuDevice, alt: int = 0) -> None:
        self.device = device
        self.alt = alt

    def __enter__(self) -> UsbTransport:
        dev, number = self.device.dev, self.device.interface
        try:
            try:
                if dev.is_kernel_driver_active(number):
                    dev.detach_kernel_driver(number)
            except (NotImplementedError, usb.core.USBError):
                pass  # no kernel driver on a DFU interface, or the platform cannot tell
            usb.util.claim_interface(dev, number)
            dev.set_interface_altsetting(interface=number, alternate_setting=self.alt)
        except usb.core.USBError as exc:
            if exc.errno in (errno.EACCES, errno.EBUSY):
                raise DeviceNotFound(f"{self.device.label()}: cannot claim the DFU interface "
                                     f"({exc.strerror or exc}); run as root, and stop whatever holds it") from None
            raise usb_failure(exc, f"{self.device.label()}: claiming the DFU interface") from None
        return UsbTransport(dev)

    def __exit__(self, *exc: object) -> None:
        try:
            usb.util.release_interface(self.device.dev, self.device.interface)
        except usb.core.USBError:
            pass  # gone after leave
        usb.util.dispose_resources(self.device.dev)
