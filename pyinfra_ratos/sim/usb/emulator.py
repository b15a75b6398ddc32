"""The USB board emulator process: one umockdev testbed per Pi holding every board of that Pi.

Run under ``umockdev-wrapper /usr/bin/python3 -m pyinfra_ratos.sim.usb.emulator --spec S
--state-dir D --bus-dir B [--pistate P] [--pid-file F]`` (see ``pyinfra_ratos.sim.usb`` for the
formats). umockdev's worker thread calls the ioctl handlers; every change of the bus (unplug,
enumerate) runs on the main loop, and a single lock orders the two.
"""

from __future__ import annotations

import argparse
import errno
import grp
import json
import os
import shutil
import select
import signal
import struct
import sys
import termios
import threading
import time
from typing import Any

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import GLib, UMockdev  # noqa: E402

from .. import pistate  # noqa: E402
from . import descriptors, dfu, katapult, picoboot  # noqa: E402
from .firmware import Flash, boots, firmware_summary, parse_flash_map  # noqa: E402
from .spec import BoardSpec, load  # noqa: E402
from ..can import Segment, Wire  # noqa: E402

REENUMERATE_S = 0.6     # USB disconnect -> the next mode shows up on the same port
UNPLUG_S = 0.05         # let the triggering ioctl return before the device vanishes
RESET_S = 0.1           # USB reset of a leaving ROM -> the application starts
LEAVE_LINGER_S = 0.5    # after :leave the ROM stays long enough for dfu-util -R's detach/reset
PLATFORM = "platform-fd500000.pcie-pci-0000:01:00.0"  # Raspberry Pi 4 xHCI, as in by-path names
SYS_ROOT = "/devices/platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0"

URB = "BBiIPiiiiIIP"  # struct usbdevfs_urb, native alignment (56 bytes on x86-64)
URB_SIZE = struct.calcsize(URB)


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("U") << 8) | nr


SUBMITURB, REAPURB, REAPURBNDELAY = _ioc(2, 10, URB_SIZE), _ioc(1, 12, 8), _ioc(1, 13, 8)
DISCARDURB = _ioc(0, 11, 0)
CLAIM, RELEASE, SETINTERFACE = _ioc(2, 15, 4), _ioc(2, 16, 4), _ioc(2, 4, 8)
SETCONFIGURATION, CLEAR_HALT, GET_CAPABILITIES = _ioc(2, 5, 4), _ioc(2, 21, 4), _ioc(2, 26, 4)
GETDRIVER, USB_IOCTL, DISCONNECT_CLAIM = _ioc(1, 8, 260), _ioc(3, 18, 16), _ioc(2, 27, 264)
RESET, GET_SPEED = _ioc(0, 20, 0), _ioc(0, 31, 0)
TIOCMGET, TIOCMBIS, TIOCMBIC, TIOCMSET = 0x5415, 0x5416, 0x5417, 0x5418
TCSETS = (0x5402, 0x5403, 0x5404)
TCSETS2 = (0x402C542B, 0x402C542C, 0x402C542D)
TCGETS2 = 0x802C542A  # struct termios2: 4 flags, c_line, c_cc[19], c_ispeed at 36, c_ospeed at 40
TIOCM_DTR, CBAUD, BOTHER, B1200 = 0x002, 0o10017, 0o10000, 0o11


class Session:
    """One enumeration of a board: a devnum, a mode, its handlers. Dead once unplugged."""

    def __init__(self, board: Board | None, mode: str, devnum: int,
                 hub: tuple[descriptors.Identity, int] | None = None) -> None:
        self.board = board  # None for a hub
        self.mode = mode
        self.devnum = devnum
        self.alive = True
        self.leaving = False
        self.dfu: dfu.DfuSe | None = None
        self.picoboot: BoardBootrom | None = None
        self.baud = 250000
        self.dtr = True  # opening a Linux tty raises DTR
        self.pending: dict[Any, list[int]] = {}
        self.pty: str | None = None  # the pty slave behind the tty node
        self.katapult: katapult.KatapultDevice | None = None  # the bootloader's protocol, in katapult mode
        self.master: int | None = None  # the pty master the bootloader reads and answers on
        self.custom_baud: int | None = None  # a BOTHER speed set with TCSETS2
        if board is None:
            assert hub is not None
            self.identity, self.busnum = hub
            return
        spec = board.spec
        self.busnum = spec.busnum
        self.identity = descriptors.identity(
            mode, spec.mcu, spec.serial, spec.port, spec.dfu_flash_map, spec.dfu_transfer_size)
        if mode == "dfu":
            self.dfu = dfu.DfuSe(board.flash, spec.dfu_transfer_size, "slow-erase" in spec.faults,
                                 board.log)
            self.dfu.on_leave = board.on_leave
            self.dfu.on_leave_request = lambda: board.on_leave_request(self)
            self.dfu.corrupt = board.corrupt
        if mode == "rp2040-boot":
            self.picoboot = BoardBootrom(board, self)

    @property
    def devnode(self) -> str:
        return f"/dev/bus/usb/{self.busnum:03d}/{self.devnum:03d}"

    # --- control transfers ------------------------------------------------------------------------
    def control(self, setup: bytes, data: bytes) -> bytes:
        """Answer a control transfer; IN data returned, dfu.Stall raised for a STALL."""
        request_type, request, value, index, length = struct.unpack("<BBHHH", setup)
        ident = self.identity
        if request_type == 0x80 and request == 6:
            kind, number = value >> 8, value & 0xFF
            answer = {1: ident.device_descriptor, 2: ident.config_descriptor}.get(kind)
            reply = answer() if answer else ident.string_descriptor(number) if kind == 3 else None
            if reply is None:
                raise dfu.Stall()
            return reply[:length]
        if request_type == 0x80 and request == 0:
            return b"\x00\x00"[:length]
        if request_type == 0x80 and request == 8:
            return b"\x01"[:length]
        if request_type in (0x00, 0x01, 0x02) and request in (1, 3, 9, 11):
            return b""
        if request_type & 0x7F == 0x21 and self.dfu is not None:
            return self.dfu.request(request, value, data, length)[:length]
        if request_type in (0x41, 0xC1) and self.picoboot is not None:  # PICOBOOT interface requests
            try:
                return self.picoboot.control(request_type, request, value, index, data or length)[:length]
            except OSError:
                raise dfu.Stall() from None
        if request_type == 0x21 and request == 0x20 and len(data) >= 4:  # CDC SET_LINE_CODING
            self.line_state(baud=int.from_bytes(data[:4], "little"))
            return b""
        if request_type == 0x21 and request == 0x22:  # CDC SET_CONTROL_LINE_STATE
            self.line_state(dtr=bool(value & 1))
            return b""
        if request_type == 0xA1 and request == 0x21:
            return struct.pack("<IBBB", self.baud, 0, 0, 8)[:length]
        raise dfu.Stall()

    def line_state(self, baud: int | None = None, dtr: bool | None = None) -> None:
        """Klipper's usb_cdc rule: 1200 baud with DTR low asks the firmware for its bootloader."""
        self.baud = self.baud if baud is None else baud
        self.dtr = self.dtr if dtr is None else dtr
        if self.board and self.mode == "klipper" and self.baud == 1200 and not self.dtr:
            self.board.bootloader_request(self)

    # --- usbfs ioctls -----------------------------------------------------------------------------
    def usbfs_ioctl(self, client: Any) -> tuple[int, int]:
        request = client.get_request()
        arg = client.get_arg()
        # URBs completed before the unplug are still reaped (libusb hangs waiting for them otherwise)
        if not self.alive and not (request in (REAPURB, REAPURBNDELAY) and self.pending.get(client)):
            return -1, errno.ENODEV
        if request == SUBMITURB:
            return self._submit(client, arg)
        if request in (REAPURB, REAPURBNDELAY):
            queue = self.pending.get(client, [])
            if not queue:
                return -1, errno.EAGAIN
            arg.resolve(0, 8).update(0, struct.pack("P", queue.pop(0)))
            return 0, 0
        if request == SETINTERFACE:
            _, alt = struct.unpack("II", bytes(arg.resolve(0, 8).retrieve()))
            if self.dfu is not None:
                if alt >= len(self.identity.interfaces):
                    return -1, errno.EINVAL
                self.dfu.alt = alt
            return 0, 0
        if request == GET_CAPABILITIES:
            arg.resolve(0, 4).update(0, struct.pack("I", 0x01 | 0x04 | 0x10))
            return 0, 0
        if request in (GETDRIVER, USB_IOCTL):
            return -1, errno.ENODATA
        if request == RESET:
            if self.board:
                self.board.usb_reset(self)
            return 0, 0
        if request == GET_SPEED:
            return 2, 0  # USB_SPEED_FULL
        if request in (CLAIM, RELEASE, SETCONFIGURATION, CLEAR_HALT, DISCONNECT_CLAIM):
            return 0, 0
        if request == DISCARDURB:
            return -1, errno.EINVAL
        return -1, errno.ENOTTY

    def _submit(self, client: Any, arg: Any) -> tuple[int, int]:
        urb = arg.resolve(0, URB_SIZE)
        fields = struct.unpack(URB, bytes(urb.retrieve()))
        urb_type, endpoint, length = fields[0], fields[1], fields[5]
        status, actual = 0, 0
        if urb_type == 2 and length >= 8:  # control
            buffer = urb.resolve(16, length)
            raw = bytes(buffer.retrieve())
            setup = raw[:8]
            try:
                reply = self.control(setup, raw[8:] if not setup[0] & 0x80 else b"")
                if setup[0] & 0x80:
                    buffer.update(8, reply)
                    actual = len(reply)
                else:
                    actual = len(raw) - 8  # actual_length never counts the setup packet
            except dfu.Stall:
                status = -errno.EPIPE
        elif urb_type == 3 and self.picoboot is not None:  # bulk: PICOBOOT's endpoints 0x03 / 0x84
            buffer = urb.resolve(16, length) if length else None
            try:
                if endpoint & 0x80:
                    reply = self.picoboot.bulk_in(endpoint, length)
                    if reply:
                        buffer.update(0, reply)
                    actual = len(reply)
                else:
                    actual = self.picoboot.bulk_out(endpoint, bytes(buffer.retrieve()) if buffer else b"")
            except OSError:
                status = -errno.EPIPE
        else:
            return -1, errno.EIO  # no other bulk/interrupt data path is emulated
        urb.update(4, struct.pack("i", status))
        urb.update(28, struct.pack("i", actual))
        self.pending.setdefault(client, []).append(urb.client_addr)
        return 0, 0

    def pty_baud(self) -> int | None:
        if not self.pty:
            return None
        try:
            fd = os.open(self.pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            speed = termios.tcgetattr(fd)[5]
        finally:
            os.close(fd)
        return 1200 if speed == termios.B1200 else -1

    # --- tty ioctls -------------------------------------------------------------------------------
    def tty_ioctl(self, client: Any) -> tuple[int, int] | None:
        """Modem lines are ours (a pty has none); termios goes to the pty, watched for 1200 baud."""
        if not self.alive:
            return -1, errno.EIO
        request = client.get_request()
        arg = client.get_arg()
        if request in (TIOCMBIS, TIOCMBIC, TIOCMSET):
            (bits,) = struct.unpack("i", bytes(arg.resolve(0, 4).retrieve()))
            dtr = {TIOCMBIS: True if bits & TIOCM_DTR else None,
                   TIOCMBIC: False if bits & TIOCM_DTR else None,
                   TIOCMSET: bool(bits & TIOCM_DTR)}[request]
            # glibc's tcsetattr calls ioctl internally, past the preload: read the baud off the pty
            self.line_state(baud=self.pty_baud(), dtr=dtr)
            return 0, 0
        if request == TIOCMGET:
            arg.resolve(0, 4).update(0, struct.pack("i", 0x100 | (TIOCM_DTR if self.dtr else 0)))
            return 0, 0
        if request == TCGETS2 or (request in TCSETS2 and self.custom_baud_only(request)):
            return self.termios2(request, arg)
        if request in TCSETS or request in TCSETS2:
            size = 36 if request in TCSETS else 44
            termios = bytes(arg.resolve(0, size).retrieve())
            cflag = struct.unpack_from("I", termios, 8)[0]
            speed = cflag & CBAUD
            result = client.execute()
            if isinstance(result, tuple):
                ret, err = result
            else:
                ret, err = result, 0
            if ret == 0:
                if speed == BOTHER and size == 44:
                    baud = struct.unpack_from("I", termios, 40)[0]
                else:
                    baud = 1200 if speed == B1200 else -1 if speed else 0
                self.line_state(baud=baud)
            return ret, err
        return None  # forward to the pty

    def custom_baud_only(self, request: int) -> bool:
        return True  # the host's pty has no termios2: a CDC-ACM tty's custom speeds are answered here

    def termios2(self, request: int, arg: Any) -> tuple[int, int]:
        """TCGETS2/TCSETS2 (pyserial's custom baud rates, e.g. flashtool's 250000) on a pty that has
        only termios: flags go to the pty, the speed is kept here as a CDC-ACM driver keeps it."""
        if not self.pty:
            return -1, errno.ENOTTY
        fd = os.open(self.pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            attrs = termios.tcgetattr(fd)
            if request == TCGETS2:
                cflag = (attrs[2] & ~CBAUD) | (BOTHER if self.custom_baud else attrs[2] & CBAUD)
                cc = bytes(c if isinstance(c, int) else ord(c) for c in attrs[6][:19])
                speed = self.custom_baud or self.baud
                raw = struct.pack("=IIIIB19sII", attrs[0], attrs[1], cflag, attrs[3], 0, cc, speed, speed)
                arg.resolve(0, 44).update(0, raw)
                return 0, 0
            iflag, oflag, cflag, lflag, _line, cc, _ispeed, ospeed = struct.unpack(
                "=IIIIB19sII", bytes(arg.resolve(0, 44).retrieve()))
            speed = cflag & CBAUD
            self.custom_baud = ospeed if speed == BOTHER else None
            attrs[0], attrs[1], attrs[3] = iflag, oflag, lflag
            attrs[2] = (cflag & ~CBAUD) | (termios.B38400 if speed == BOTHER else speed)
            attrs[6] = [cc[i] if i in (termios.VMIN, termios.VTIME) else bytes([cc[i]]) for i in range(19)] \
                + attrs[6][19:]
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except (OSError, termios.error) as error:
            return -1, getattr(error, "errno", None) or errno.EINVAL
        finally:
            os.close(fd)
        self.line_state(baud=self.custom_baud if self.custom_baud else 1200 if speed == B1200 else -1)
        return 0, 0


class BoardBootrom(picoboot.Bootrom):
    """The PICOBOOT side of an RP2040 in BOOTSEL, writing the board's own flash file; after REBOOT
    the board boots what it holds (``no-return-after-leave``: it never comes back)."""

    def __init__(self, board: Board, session: Session) -> None:
        super().__init__(faults=tuple(board.faults()), flash=bytearray())
        self.board, self.session = board, session

    def read(self, address: int, size: int) -> bytes:
        return self.board.flash.read(address, size)

    def erase(self, address: int, length: int) -> None:
        for at in range(address, address + length, picoboot.SECTOR):
            found = self.board.flash.sector_at(at)
            if found is not None:
                self.board.flash.erase(found[0])

    def program(self, address: int, data: bytes) -> str | None:
        return self.board.flash.program(address, data)

    def on_reboot(self) -> None:
        self.board.log("picoboot-reboot")
        if "no-return-after-leave" in self.faults:
            self.board.log("no-reenumerate")
            self.board.bus.later(0.5, self.board.bus.unplug, self.board)
            return
        self.board.bus.later(0.5, self.board.unplug_then, "app", self.session)


class Board:
    def __init__(self, bus: Bus, spec: BoardSpec) -> None:
        self.bus = bus
        self.spec = spec
        self.dir = os.path.join(bus.state_dir, spec.port)
        self.flash = Flash(os.path.join(self.dir, "flash.bin"), parse_flash_map(spec.dfu_flash_map))
        if not os.path.exists(self.flash.path):
            image = None
            if spec.image:
                with open(spec.image, "rb") as handle:
                    image = handle.read()
            self.flash.create(spec.bootloader, spec.app_address, image, spec.image_address)
        self.session: Session | None = None
        self.corrupt = dfu.CorruptWrite() if "corrupt-write" in spec.faults else None
        self.tty: str | None = None
        self.firmware: dict[str, Any] | None = None
        self.mode = "absent"
        self.katapult_errors = 0  # command errors katapult-transfer-error gave (it breaks one transfer)

    def log(self, event: str, **fields: Any) -> None:
        self.bus.log(self.spec.port, event, **fields)

    def faults(self) -> list[str]:
        """The board's behaviour faults: the scenario's, or what a test wrote since into
        ``<port>/faults`` (one per line; empty: the board is mended, as after a repair)."""
        try:
            with open(os.path.join(self.dir, "faults"), encoding="utf-8") as handle:
                return handle.read().split()
        except OSError:
            return list(self.spec.faults)

    def booted_dictionary(self) -> dict[str, Any] | None:
        start = self.spec.app_address
        end = self.flash.base + self.flash.size
        if not self.flash.base <= start < end:
            return None
        return boots(self.flash.read(start, end - start), start, self.spec.mcu)

    # --- events from the host side (called with the bus lock held) --------------------------------
    def bootloader_request(self, session: Session) -> None:
        if "ignore-bootloader-request" in self.faults() or session.leaving:
            self.log("bootloader-request-ignored")
            return
        session.leaving = True
        self.log("bootloader-request")
        self.bus.later(UNPLUG_S, self.unplug_then, self.spec.bootloader_request)

    def katapult_device(self) -> katapult.KatapultDevice:
        spec = self.spec

        def spend() -> None:
            self.katapult_errors += 1

        return katapult.KatapultDevice(
            self.flash, spec.katapult_app_start, spec.mcu, spec.katapult_version, katapult.BLOCK_SIZE,
            self.faults, self.log, self.on_katapult_complete,
            lambda: self.katapult_errors >= katapult.ERROR_TRIES, spend)

    def on_katapult_complete(self) -> None:
        """Katapult jumps to the application 100 ms after COMPLETE's ACK."""
        session = self.session
        if session is not None:
            session.leaving = True
            self.bus.later(katapult.COMPLETE_S, self.unplug_then, "app", session)

    def on_leave(self) -> None:
        session = self.session
        if session is None:
            return
        faults = self.faults()
        if "stuck-dfu" in faults:
            self.log("leave-ignored")
            session.dfu.state = dfu.DFU_IDLE  # type: ignore[union-attr]
            return
        session.leaving = True
        if "dfu-exit-251" in faults:
            session.alive = False  # gone before dfu-util's detach
            self.bus.later(0, self.unplug_then, "app")
        else:
            self.bus.later(LEAVE_LINGER_S, self.unplug_then, "app", session)

    def usb_reset(self, session: Session) -> None:
        if session.mode == "dfu" and session.leaving:
            # the reset itself succeeds (dfu-util -R exits 0); the app takes over right after
            self.bus.later(RESET_S, self.unplug_then, "app", session)
        elif session.mode == "dfu" and "stuck-dfu" in self.faults():
            self.bus.later(0, self.unplug_then, "dfu", session)

    def on_leave_request(self, session: Session) -> None:
        """Fault dfu-exit-74: the MCU resets as soon as the leave request arrives."""
        if "dfu-exit-74" not in self.faults():
            return
        session.alive = False
        session.leaving = True
        self.bus.later(0, self.unplug_then, "app", session)

    # --- bus changes (main loop) ------------------------------------------------------------------
    def unplug_then(self, next_mode: str, session: Session | None = None) -> None:
        if session is not None and session is not self.session:
            return
        self.bus.unplug(self)
        if "no-reenumerate" in self.faults() and next_mode == "app":
            self.log("no-reenumerate")
            return
        self.bus.later(REENUMERATE_S, self.come_back, next_mode)

    def come_back(self, next_mode: str) -> None:
        if next_mode == "app":  # a USB-to-CAN bridge's application is the gs_usb device, not a tty
            app = "can-bridge" if self.bus.is_bridge(self) else "klipper"
            next_mode = app if self.booted_dictionary() is not None else "absent"
        self.bus.plug(self, next_mode)


class Bus:
    def __init__(self, specs: list[BoardSpec], state_dir: str, bus_dir: str, pistate_path: str | None,
                 can: dict[str, Any] | None = None) -> None:
        self.state_dir = state_dir
        self.bus_dir = bus_dir
        self.pistate_path = pistate_path
        self.lock = threading.RLock()
        self.events_path = os.path.join(state_dir, "events.jsonl")
        self.next_devnum: dict[int, int] = {}
        self.attached: dict[str, Session] = {}
        os.makedirs(state_dir, exist_ok=True)
        # Clients need UMOCKDEV_DIR to be the testbed's real path (the preload compares
        # realpath() results with it), so the testbed dir moves to the fixed bus dir and the
        # random name umockdev picked becomes a link for umockdev's own use.
        os.environ["TMPDIR"] = os.path.dirname(os.path.abspath(bus_dir)) or "/"
        self.testbed = UMockdev.Testbed.new()
        self.random_root = self.testbed.get_root_dir()
        _remove_stale_bus(bus_dir)
        os.rename(self.random_root, bus_dir)
        # Any Pi user lists USB devices (sysfs is world-readable on a Pi), and the preload of
        # every client binds its uevent socket (event<fd>) in this dir: sticky and world-writable
        # like /tmp.
        os.chmod(bus_dir, 0o1777)
        os.symlink(os.path.abspath(bus_dir), self.random_root)
        self.root = os.path.abspath(bus_dir)
        os.environ["UMOCKDEV_DIR"] = self.root  # umockdev's uevent sender resolves through it
        self._open_socket("_default")  # every client's preload talks to it, root or not
        self.ttys_used: set[str] = set()
        self.boards = [Board(self, spec) for spec in specs]
        # the Pi's can0 (sim.can): a user-space segment, down while its USB bridge is off the bus
        self.segment: Segment | None = None
        if can:
            self.segment = Segment(can, state_dir, pistate_path, self.later, self.log)
            self.segment.on_bridge_request = self._bridge_request
            self.can_wire = Wire(can.get("group", "239.74.163.2"), can.get("port", 43113))
            GLib.io_add_watch(self.can_wire.rx.fileno(), GLib.IO_IN, self._can_frames)

    # --- the CAN segment --------------------------------------------------------------------------
    def is_bridge(self, board: Board) -> bool:
        return self.segment is not None and board.spec.port == self.segment.bridge_port

    def _can_frames(self, *_: Any) -> bool:
        with self.lock:
            frame = self.can_wire.recv()
            while frame is not None:
                for can_id, data in self.segment.deliver(*frame):  # type: ignore[union-attr]
                    self.can_wire.send(can_id, data)
                frame = self.can_wire.recv()
        return True

    def _bridge_request(self) -> None:
        """REQUEST_BOOTLOADER for the bridge's own node: it resets, off USB and the bus with it."""
        board = next((b for b in self.boards if self.is_bridge(b)), None)
        if board is None or board.mode != "can-bridge":
            return
        board.log("bootloader-request", over="can")
        never_back = "bridge-never-back" in board.faults()
        self.later(UNPLUG_S, board.unplug_then, "app" if never_back else board.spec.bootloader_request)

    def log(self, port: str, event: str, **fields: Any) -> None:
        line = json.dumps({"t": round(time.time(), 3), "port": port, "event": event, **fields})
        with open(self.events_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def later(self, seconds: float, func: Any, *args: Any) -> None:
        def run() -> bool:
            with self.lock:
                func(*args)
            return False

        GLib.timeout_add(int(seconds * 1000), run)

    def start(self) -> None:
        with self.lock:
            self._plug_hubs()
            for board in self.boards:
                if board.spec.mode in ("klipper", "can-bridge"):
                    board.firmware = board.booted_dictionary()
                self.plug(board, board.spec.mode)
            if self.segment is not None:
                self.segment.publish()

    # --- plugging ---------------------------------------------------------------------------------
    def _plug_hubs(self) -> None:
        """Root hub per bus and every hub on the way to a board port, as a real Pi shows them."""
        hubs: set[str] = set()
        for board in self.boards:
            port = board.spec.port
            hubs.add(f"usb{board.spec.busnum}")
            while "." in port:
                port = port.rsplit(".", 1)[0]
                hubs.add(port)
        for name in sorted(hubs, key=lambda n: (n.startswith("usb") is False, len(n), n)):
            root = name.startswith("usb")
            busnum = int(name[3:]) if root else int(name.split("-")[0])
            devnum = 1 if root else self._devnum(busnum)
            if root:
                self.next_devnum.setdefault(busnum, 2)
            session = Session(None, "hub", devnum, (descriptors.hub_identity(root, busnum), busnum))
            devpath = "0" if root else name.split("-", 1)[1]
            syspath = self.hub_syspath(name, busnum)
            self.testbed.add_from_string(self.device_record(session, syspath, name, devpath))
            self._attach(session.devnode, session.usbfs_ioctl)

    @staticmethod
    def hub_syspath(name: str, busnum: int) -> str:
        if name.startswith("usb"):
            return f"{SYS_ROOT}/{name}"
        parts = name.split("-", 1)[1].split(".")
        chain = [f"{busnum}-" + ".".join(parts[: i + 1]) for i in range(len(parts))]
        return f"{SYS_ROOT}/usb{busnum}/" + "/".join(chain)

    def _devnum(self, busnum: int) -> int:
        devnum = self.next_devnum.get(busnum, 2)
        self.next_devnum[busnum] = devnum + 1 if devnum < 127 else 2
        return devnum

    def _free_tty(self) -> str:
        # umockdev keeps a removed tty node's pty for the testbed's lifetime and asserts if the
        # name comes back, so a re-enumerated board gets the next number, as Linux gives it
        # when the old node is still held open (by-id/by-path links are what stay stable)
        name = next(f"ttyACM{n}" for n in range(4096) if f"ttyACM{n}" not in self.ttys_used)
        self.ttys_used.add(name)
        return name

    def plug(self, board: Board, mode: str) -> None:
        board.mode = mode
        spec = board.spec
        if mode == "absent":
            board.session = None
            self.log(spec.port, "mode", mode="absent")
            self.publish(board)
            return
        session = Session(board, mode, self._devnum(spec.busnum))
        board.session = session
        syspath = self.syspath(spec)
        self.testbed.add_from_string(self.device_record(session, syspath, spec.port, spec.devpath))
        self._attach(session.devnode, session.usbfs_ioctl)
        if mode in ("klipper", "katapult"):
            board.tty = self._free_tty()
            prefix = "usb-Klipper" if mode == "klipper" else "usb-katapult"
            links = [f"serial/by-id/{prefix}_{spec.mcu}_{spec.serial}-if00",
                     f"serial/by-path/{PLATFORM}-usb-0:{spec.devpath}:1.0"]
            self.testbed.add_from_string(
                f"P: {syspath}/{spec.port}:1.0/tty/{board.tty}\nN: {board.tty}\n"
                + "".join(f"S: {link}\n" for link in links)
                + f"E: SUBSYSTEM=tty\nE: DEVNAME=/dev/{board.tty}\nA: dev=166:{board.tty[6:]}\n")
            node_path = os.path.join(self.root, "dev", board.tty)
            session.pty = os.readlink(node_path) if os.path.islink(node_path) else None
            if session.pty:
                _as_serial_tty(session.pty)
            for link in links:  # udev's links are relative; umockdev's absolute ones leak its path
                path = os.path.join(self.root, "dev", link)
                os.unlink(path)
                os.symlink(f"../../{board.tty}", path)
            for node in [f"/dev/{board.tty}"] + [f"/dev/{link}" for link in links]:
                self._attach(node, session.tty_ioctl)
            if mode == "katapult":
                self._serve_katapult(board, session)
        if mode in ("klipper", "can-bridge"):
            board.firmware = board.booted_dictionary()
        self.log(spec.port, "mode", mode=mode, devnum=session.devnum, tty=board.tty)
        self.publish(board)
        if self.is_bridge(board):
            self.segment.set_up(mode == "can-bridge")  # type: ignore[union-attr]

    def _serve_katapult(self, board: Board, session: Session) -> None:
        """Answer Katapult's protocol on the master side of the board's tty (the host has the slave)."""
        session.katapult = board.katapult_device()
        session.master = self.testbed.get_dev_fd(f"/dev/{board.tty}")
        if session.master is None or session.master < 0:
            sys.stderr.write(f"usb emulator: no pty master for {board.tty}: Katapult does not answer\n")
            return
        if session.pty:
            _raw_tty(session.pty)
        os.set_blocking(session.master, False)

        def serve(fd: int) -> None:
            # a thread of its own, polling: a pty master reads EIO while no host holds the tty
            while session.alive:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: no host has the tty open (yet, or any more)
                    time.sleep(0.02)
                    continue
                with self.lock:
                    if not session.alive or session.katapult is None:
                        return
                    answer = session.katapult.feed(data)
                if answer:
                    try:
                        os.write(fd, answer)
                    except OSError:
                        pass

        threading.Thread(target=serve, args=(session.master,), daemon=True).start()

    def unplug(self, board: Board) -> None:
        session = board.session
        if session is None:
            return
        session.alive = False
        board.session = None
        spec = board.spec
        syspath = self.syspath(spec)
        for node in list(self.attached):
            if self.attached[node] is session:
                self.testbed.detach_ioctl(node)
                del self.attached[node]
                if node.startswith("/dev/serial/"):
                    _unlink(self.root + node)
        if board.tty:
            self.testbed.remove_device(f"/sys{syspath}/{spec.port}:1.0/tty/{board.tty}")
            board.tty = None
        for number in sorted({intf.number for intf in session.identity.interfaces}):
            self.testbed.remove_device(f"/sys{syspath}/{spec.port}:1.{number}")
        self.testbed.remove_device(f"/sys{syspath}")
        self.log(spec.port, "unplug", mode=session.mode, devnum=session.devnum)
        board.mode = "absent"
        self.publish(board)
        if self.is_bridge(board):
            self.segment.set_up(False)  # type: ignore[union-attr]

    def _attach(self, node: str, answer: Any) -> None:
        # umockdev binds under its own (random) root, clients connect under the bus dir
        if max(len(self.random_root), len(self.root)) + len("/ioctl/") + len(node) >= 108:
            sys.stderr.write(f"usb emulator: ioctl socket path too long for {node}, not emulated\n")
            return
        handler = UMockdev.IoctlBase()
        session = answer.__self__

        def handle(_handler: Any, client: Any) -> bool:
            with self.lock:
                try:
                    result = answer(client)
                except Exception as exc:  # a bug here must not hang the client
                    sys.stderr.write(f"usb emulator: ioctl {client.get_request():#x} on {node}: {exc!r}\n")
                    result = (-1, errno.EIO)
            if result is None:
                return False
            client.complete(*result)
            return True

        handler.connect("handle-ioctl", handle)
        self.testbed.attach_ioctl(node, handler)
        self.attached[node] = session
        # Permissions are the node files' own (usbfs 0644 root: a user's read-write open fails
        # with EACCES, so libusb says LIBUSB_ERROR_ACCESS as on a Pi without udev rules); the
        # socket behind a node that did open must always accept, or the preload exits.
        self._open_socket(node.lstrip("/"))

    def _open_socket(self, relative: str) -> None:
        path = os.path.join(self.root, "ioctl", relative)
        if os.path.exists(path):
            os.chmod(path, 0o666)

    @classmethod
    def syspath(cls, spec: BoardSpec) -> str:
        return cls.hub_syspath(spec.port, spec.busnum)

    def device_record(self, session: Session, syspath: str, name: str, devpath: str) -> str:
        ident = session.identity
        descriptors_hex = (ident.device_descriptor() + ident.config_descriptor()).hex().upper()
        busnum, devnum = session.busnum, session.devnum
        minor = (busnum - 1) * 128 + devnum - 1
        interfaces = sorted({intf.number for intf in ident.interfaces})
        attrs = {
            "idVendor": f"{ident.vid:04x}", "idProduct": f"{ident.pid:04x}",
            "bcdDevice": f"{ident.bcd_device:04x}", "manufacturer": ident.manufacturer or None,
            "product": ident.product or None, "serial": ident.serial or None, "busnum": str(busnum),
            "devnum": str(devnum), "devpath": devpath, "speed": "480" if ident.device_class[0] == 9 else "12",
            "version": " 2.00",
            "bDeviceClass": f"{ident.device_class[0]:02x}", "bDeviceSubClass": "00",
            "bDeviceProtocol": f"{ident.device_class[2]:02x}", "maxchild": "4" if ident.device_class[0] == 9 else "0", "bMaxPacketSize0": "64", "bNumConfigurations": "1",
            "bConfigurationValue": "1", "bNumInterfaces": f"{len(interfaces):2d}",
            "bmAttributes": "c0", "dev": f"189:{minor}",
            "removable": "unknown", "authorized": "1", "rx_lanes": "1", "tx_lanes": "1",
            "configuration": "",
        }
        props = {
            "DEVTYPE": "usb_device", "SUBSYSTEM": "usb", "DRIVER": "usb",
            "PRODUCT": f"{ident.vid:x}/{ident.pid:x}/{ident.bcd_device:x}",
            "TYPE": f"{ident.device_class[0]}/0/0", "BUSNUM": f"{busnum:03d}",
            "DEVNUM": f"{devnum:03d}", "DEVNAME": session.devnode, "MAJOR": "189",
            "MINOR": str(minor), "ID_VENDOR_ID": f"{ident.vid:04x}", "ID_MODEL_ID": f"{ident.pid:04x}",
            "ID_SERIAL_SHORT": ident.serial, "ID_PATH": f"{PLATFORM}-usb-0:{devpath}",
        }
        record = [f"P: {syspath}", f"N: {session.devnode[5:]}={descriptors_hex}"]
        record += [f"E: {k}={v}" for k, v in props.items()]
        record += [f"A: {k}={_escape(v)}\\n" for k, v in attrs.items() if v is not None]
        record.append(f"H: descriptors={descriptors_hex}")
        text = "\n".join(record) + "\n\n"
        for number in interfaces:
            alt0 = next(i for i in ident.interfaces if i.number == number)
            intf_attrs = {
                "bInterfaceNumber": f"{number:02x}", "bAlternateSetting": " 0",
                "bInterfaceClass": f"{alt0.cls:02x}", "bInterfaceSubClass": f"{alt0.subclass:02x}",
                "bInterfaceProtocol": f"{alt0.protocol:02x}",
                "bNumEndpoints": f"{len(alt0.endpoints):02x}",
            }
            if alt0.name:
                intf_attrs["interface"] = alt0.name
            intf_name = f"{busnum}-0" if name.startswith("usb") else name  # kernel: root hub ifs are 1-0:1.0
            lines = [f"P: {syspath}/{intf_name}:1.{number}", "E: DEVTYPE=usb_interface", "E: SUBSYSTEM=usb"]
            lines += [f"A: {k}={_escape(v)}\\n" for k, v in intf_attrs.items()]
            text += "\n".join(lines) + "\n\n"
        return text

    # --- state shared with tests and the Moonraker stand-in --------------------------------------
    def publish(self, board: Board) -> None:
        boards_path = os.path.join(self.state_dir, "boards.json")
        snapshot = {
            b.spec.port: {
                "mode": b.mode, "devnum": b.session.devnum if b.session else None,
                "tty": b.tty, "board": b.spec.board,
                "version": (b.firmware or {}).get("version") if b.mode in ("klipper", "can-bridge") else None,
            }
            for b in self.boards
        }
        tmp = boards_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(snapshot, handle, indent=1, sort_keys=True)
        os.replace(tmp, boards_path)
        if self.pistate_path and board.spec.mcu_name and os.path.exists(self.pistate_path):
            with pistate.update(self.pistate_path) as state:
                for mcu in state.get("mcus", []):
                    if mcu.get("name") == board.spec.mcu_name:
                        mcu["present"] = board.mode in ("klipper", "can-bridge")
                        if board.mode in ("klipper", "can-bridge"):
                            mcu["firmware"] = firmware_summary(board.firmware) if board.firmware else None

    def close(self) -> None:
        for node in list(self.attached):
            try:
                self.testbed.detach_ioctl(node)
            except GLib.Error:
                pass
        self.attached.clear()
        _unlink(self.random_root)
        shutil.rmtree(self.root, ignore_errors=True)


def _as_serial_tty(pty: str) -> None:
    """A USB serial tty on a Pi is root:dialout 0660 (pi is in dialout); a fresh pty is not."""
    try:
        dialout = grp.getgrnam("dialout").gr_gid
    except KeyError:
        return
    try:
        os.chown(pty, 0, dialout)
        os.chmod(pty, 0o660)
    except PermissionError:
        pass  # not root (standalone tests): the pty stays its creator's


def _raw_tty(pty: str) -> None:
    """The board's end of the line starts raw, as a CDC-ACM tty's data is: no echo into the protocol."""
    try:
        fd = os.open(pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        attrs = termios.tcgetattr(fd)
        attrs[0] = attrs[1] = attrs[3] = 0
        attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL | (attrs[2] & termios.CBAUD)
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error:
        pass
    finally:
        os.close(fd)


def _remove_stale_bus(bus_dir: str) -> None:
    """A bus dir left by a killed emulator goes; anything else there is not ours to delete."""
    if os.path.islink(bus_dir):
        os.unlink(bus_dir)
    elif os.path.isdir(bus_dir):
        if not os.path.isdir(os.path.join(bus_dir, "sys")) and os.listdir(bus_dir):
            raise RuntimeError(f"{bus_dir} exists and is not an emulated USB bus")
        shutil.rmtree(bus_dir)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--bus-dir", required=True)
    parser.add_argument("--pistate")
    parser.add_argument("--pid-file")
    args = parser.parse_args(argv)
    with open(args.spec, encoding="utf-8") as handle:
        raw = json.load(handle)
    can = raw.get("can") if isinstance(raw, dict) else None
    bus = Bus(load(args.spec), args.state_dir, args.bus_dir, args.pistate, can)
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, lambda *_: (loop.quit(), False)[1])
    try:
        bus.start()
    except BaseException:
        bus.close()
        raise
    if args.pid_file:
        # written last: its presence means the bus is populated and answering
        tmp = args.pid_file + ".tmp"
        with open(tmp, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        os.replace(tmp, args.pid_file)
    try:
        loop.run()
    finally:
        bus.close()
        if args.pid_file:
            _unlink(args.pid_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
