"""The pyusb transport of the PICOBOOT client: the BOOTSEL device at one USB port path.

The ROM's serial is not unique per chip, so a device is chosen by its port (``1-1.3``), never by the
first 2e8a:0003 found. Needs pyusb and libusb; usbfs is root-only on a Pi.
"""

from __future__ import annotations

from typing import Any

import usb.core
import usb.util

from .protocol import BOOTSEL_IDS, ENDPOINT_IN, ENDPOINT_OUT, PICOBOOT_CLASS, PicobootError


def port_path(dev: Any) -> str | None:
    numbers = dev.port_numbers
    return f"{dev.bus}-{'.'.join(str(n) for n in numbers)}" if numbers else None


def picoboot_interface(dev: Any) -> int:
    """Interface 0 when the ROM shows only one, else 1 (picotool's choice), checked: class 0xFF, 2 endpoints."""
    config = dev.get_active_configuration()
    interfaces = list(config)
    chosen = interfaces[0] if len(interfaces) == 1 else interfaces[1]
    if chosen.bInterfaceClass != PICOBOOT_CLASS or chosen.bNumEndpoints != 2:
        raise PicobootError(f"interface {chosen.bInterfaceNumber} is not PICOBOOT (class "
                            f"{chosen.bInterfaceClass:#04x}, {chosen.bNumEndpoints} endpoints)")
    return chosen.bInterfaceNumber


class UsbTransport:
    """Bulk OUT 0x03 / IN 0x84 and control transfers of the PICOBOOT interface; USB errors as OSError."""

    def __init__(self, port: str) -> None:
        found = [dev for dev in usb.core.find(find_all=True)
                 if (dev.idVendor, dev.idProduct) in BOOTSEL_IDS and port_path(dev) == port]
        if not found:
            raise PicobootError(f"no RP2040 in BOOTSEL mode (2e8a:0003) at USB port {port}")
        self.dev = found[0]
        self.interface = picoboot_interface(self.dev)
        try:
            if self.dev.is_kernel_driver_active(self.interface):
                self.dev.detach_kernel_driver(self.interface)
        except (NotImplementedError, usb.core.USBError):
            pass
        usb.util.claim_interface(self.dev, self.interface)

    def close(self) -> None:
        usb.util.release_interface(self.dev, self.interface)
        usb.util.dispose_resources(self.dev)

    @staticmethod
    def _os_error(error: usb.core.USBError) -> OSError:
        return OSError(error.errno or 5, str(error))

    def bulk_out(self, endpoint: int, data: bytes, timeout_ms: int) -> int:
        try:
            return self.dev.write(endpoint, data, timeout_ms)
        except usb.core.USBError as error:
            raise self._os_error(error) from error

    def bulk_in(self, endpoint: int, length: int, timeout_ms: int) -> bytes:
        try:
            # ask for at least one packet: the acknowledgement is a zero-length packet
            return bytes(self.dev.read(endpoint, max(length, 64), timeout_ms))[:length]
        except usb.core.USBError as error:
            raise self._os_error(error) from error

    def control(self, request_type: int, request: int, value: int, index: int, data_or_length: bytes | int,
                timeout_ms: int) -> bytes:
        try:
            answer = self.dev.ctrl_transfer(request_type, request, value, index, data_or_length, timeout_ms)
        except usb.core.USBError as error:
            raise self._os_error(error) from error
        return bytes(answer) if not isinstance(answer, int) else b""

    def clear_halt(self, endpoint: int) -> None:
        try:
            self.dev.clear_halt(endpoint)
        except usb.core.USBError as error:
            raise self._os_error(error) from error


__all__ = ["ENDPOINT_IN", "ENDPOINT_OUT", "UsbTransport", "picoboot_interface", "port_path"]
