"""The virtual Pi's CAN bus in user space: one segment standing for its ``can0``, emulated nodes on it.

This machine's kernel has no CAN at all, so the segment is the other end of the user-space
transport of ``pyinfra_ratos.firmware.canbus`` (16-byte ``struct can_frame`` datagrams on a 239.x
group on the Pi's own loopback); it shares no code with the product's client. It runs inside the Pi's USB emulator process, so a USB-to-CAN bridge board
(1d50:606f) and the segment share one clock: when the bridge resets (its bootloader, a flash) the
segment goes down and every node behind it is unreachable until the bridge runs Klipper again, as
``can0`` disappears with the gs_usb device on a real Pi. With a plain USB-CAN adapter the segment
stays up. Written from ``shared/bootloaders-can.md`` §2-§4, independently of the product's client.

Each node (a toolboard) answers the admin messages by its UUID exactly as ``canserial.c`` does
(Klipper: QUERY_UNASSIGNED when unassigned, SET_NODEID, REQUEST_BOOTLOADER; Katapult: QUERY,
SET/CLEAR_CANBOOT_NODEID) and, in Katapult, the bootloader's byte protocol over its assigned ids,
with the board's flash (:class:`pyinfra_ratos.sim.usb.katapult.KatapultDevice`, the same device the
USB Katapult uses) plus GET_CANBUS_ID. A node in Klipper reports the firmware decoded from the bytes
in its flash (``firmware.boots``) to the Pi's state, so klippy's stand-in connects to it or not.

Spec (the ``can`` table of the USB spec file)::

    {"interface": "can0", "bitrate": 1000000, "txqueuelen": 128,
     "group": "239.74.163.2", "port": 43113,
     "bridge_port": "1-1.1" | null,       # the USB bridge board carrying the segment; null: an adapter
     "bridge_uuid": "..." | null,         # the bridge's own node (routed to itself, never on the bus)
     "nodes": [{"uuid", "board", "mcu", "mcu_name", "app_address", "flash_map", "image", "mode",
                "katapult_version", "faults"}]}

Fault knobs (a node's ``faults``, or ``<state>/can/<uuid>/faults`` at run time):
``can-silent`` (answers nothing, ever), ``katapult-transfer-error@N`` (block N of a write fails,
see the USB Katapult), ``can-bus-off-on-query`` (a query answered by two nodes or more pushes this
node into bus-off: silent until it is reset); the bridge board's ``no-reenumerate`` is "bridge never
back". Events go to the USB emulator's ``events.jsonl`` with ``port`` = ``<interface>/<uuid>``.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .usb.firmware import Flash, boots, firmware_summary, parse_flash_map
from .usb.katapult import ACK, BLOCK_SIZE, ERROR_TRIES, KatapultDevice, response

NODE_FAULTS = ("can-silent", "can-bus-off-on-query")
# klipper src/generic/canserial.c and katapult's: the admin ids and messages
ADMIN_ID, ADMIN_REPLY_ID = 0x3F0, 0x3F1
QUERY_UNASSIGNED, SET_KLIPPER_NODEID, REQUEST_BOOTLOADER = 0x00, 0x01, 0x02
SET_KATAPULT_NODEID, CLEAR_KATAPULT_NODEID, NEED_NODEID = 0x11, 0x12, 0x20
APP_KLIPPER, APP_KATAPULT = 0x01, 0x11
FRAME = struct.Struct("<IB3x8s")  # linux/can.h struct can_frame, as the Pi's transport carries it
BOOTLOADER_S = 0.2   # REQUEST_BOOTLOADER -> Katapult answering
COMPLETE_S = 0.1     # COMPLETE's ACK -> the application runs (katapult src/flashcmd.c)
KLIPPY_NODEID_FIRST = 4


@dataclass
class NodeSpec:
    uuid: str
    board: str
    mcu: str
    app_address: int
    flash_map: str
    mode: str = "klipper"          # klipper | katapult
    image: str | None = None
    mcu_name: str | None = None
    katapult_version: str = "v0.0.1-110-gb0bf421"
    faults: list[str] = field(default_factory=list)


def node_from_dict(raw: dict[str, Any]) -> NodeSpec:
    address = raw.get("app_address", 0x08002000)
    return NodeSpec(
        uuid=str(raw["uuid"]).lower(), board=raw.get("board", ""), mcu=raw["mcu"],
        app_address=address if isinstance(address, int) else int(address, 0),
        flash_map=raw.get("flash_map") or "@Internal Flash  /0x08000000/64*02Kg",
        mode=raw.get("mode", "klipper"), image=raw.get("image"), mcu_name=raw.get("mcu_name"),
        katapult_version=raw.get("katapult_version") or NodeSpec.katapult_version,
        faults=list(raw.get("faults", [])),
    )


def node_ids(nodeid: int) -> tuple[int, int]:
    return 0x100 + 2 * nodeid, 0x100 + 2 * nodeid + 1


class Wire:
    """The segment's side of the Pi's user-space CAN: struct can_frame datagrams on a 239.x group on
    the Pi's own loopback (its network namespace), TTL 0; its own datagrams are dropped by source."""

    def __init__(self, group: str, port: int) -> None:
        if not group.startswith("239."):
            raise ValueError(f"refusing CAN segment group {group}: only 239.x, on the loopback")
        self.group, self.port = group, port
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.rx.bind((group, port))
        self.rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                           socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        self.tx.bind(("127.0.0.1", 0))
        self.me = self.tx.getsockname()

    def send(self, can_id: int, data: bytes) -> None:
        self.tx.sendto(FRAME.pack(can_id, len(data), data.ljust(8, b"\x00")), (self.group, self.port))

    def recv(self) -> tuple[int, bytes] | None:
        """The next frame a host sent, or None when none is waiting."""
        while select.select([self.rx], [], [], 0)[0]:
            raw, source = self.rx.recvfrom(64)
            if source != self.me and len(raw) == FRAME.size:
                can_id, length, data = FRAME.unpack(raw)
                return can_id & 0x1FFFFFFF, data[:min(length, 8)]
        return None


class CanKatapult(KatapultDevice):
    """Katapult's CAN build: GET_CANBUS_ID answers the node's UUID (katapult canserial.c)."""

    uuid = b""

    def dispatch(self, command: int, payload: bytes) -> bytes:
        if command == 0x16:
            return response(ACK, struct.pack("<I", command) + self.uuid + b"\x00\x00")
        return super().dispatch(command, payload)


class Node:
    def __init__(self, segment: Segment, spec: NodeSpec) -> None:
        self.segment, self.spec = segment, spec
        self.dir = os.path.join(segment.state_dir, "can", spec.uuid)
        os.makedirs(self.dir, exist_ok=True)
        self.flash = Flash(os.path.join(self.dir, "flash.bin"), parse_flash_map(spec.flash_map))
        if not os.path.exists(self.flash.path):
            image = None
            if spec.image:
                with open(spec.image, "rb") as handle:
                    image = handle.read()
            self.flash.create(b"Katapult", spec.app_address, image)
        self.mode = spec.mode if spec.mode == "katapult" or self.booted() else "katapult"
        self.nodeid: int | None = None
        self.bus_off = False
        self.device: CanKatapult | None = None
        self.errors_made = 0  # a transfer error fails as many tries as flashtool makes, once per emulator run
        if self.mode == "katapult":
            self._new_device()

    @property
    def port(self) -> str:
        return f"{self.segment.interface}/{self.spec.uuid}"

    def log(self, event: str, **fields: Any) -> None:
        self.segment.log(self.port, event, **fields)

    def faults(self) -> list[str]:
        try:
            with open(os.path.join(self.dir, "faults"), encoding="utf-8") as handle:
                return handle.read().split()
        except OSError:
            return list(self.spec.faults)

    def booted(self) -> dict[str, Any] | None:
        end = self.flash.base + self.flash.size
        return boots(self.flash.read(self.spec.app_address, end - self.spec.app_address),
                     self.spec.app_address, self.spec.mcu)

    @property
    def answers(self) -> bool:
        return not self.bus_off and "can-silent" not in self.faults()

    def _new_device(self) -> None:
        def spend() -> None:
            self.errors_made += 1
        self.device = CanKatapult(
            self.flash, self.spec.app_address, self.spec.mcu, self.spec.katapult_version, BLOCK_SIZE,
            self.faults, lambda event, **f: self.log(event, **f), self.on_complete,
            lambda: self.errors_made >= ERROR_TRIES, spend)
        self.device.uuid = bytes.fromhex(self.spec.uuid)

    def reset(self, mode: str) -> None:
        """A reset: ids forgotten, bus-off cleared, ``mode`` runs (Klipper only if its flash boots)."""
        self.nodeid, self.bus_off = None, False
        self.mode = "klipper" if mode == "klipper" and self.booted() else "katapult"
        self.device = None
        if self.mode == "katapult":
            self._new_device()
        self.log("mode", mode=self.mode)
        self.segment.publish()

    def on_complete(self) -> None:
        self.segment.later(COMPLETE_S, self.reset, "klipper")

    # --- frames from the host -------------------------------------------------------------------
    def admin(self, data: bytes) -> list[tuple[int, bytes]]:
        if not data or not self.answers:
            return []
        command, uuid = data[0], data[1:7].hex()
        mine = uuid == self.spec.uuid
        if command == QUERY_UNASSIGNED:
            if self.nodeid is None:
                app = APP_KLIPPER if self.mode == "klipper" else APP_KATAPULT
                return [(ADMIN_REPLY_ID, bytes([NEED_NODEID]) + bytes.fromhex(self.spec.uuid) + bytes([app]))]
        elif self.mode == "klipper" and command == SET_KLIPPER_NODEID and len(data) >= 8:
            self._set_nodeid(mine, data[7])
        elif self.mode == "klipper" and command == REQUEST_BOOTLOADER and mine:
            self.log("bootloader-request")
            self.segment.later(BOOTLOADER_S, self.reset, "katapult")
        elif self.mode == "katapult" and command == SET_KATAPULT_NODEID and len(data) >= 8:
            self._set_nodeid(mine, data[7])
        elif self.mode == "katapult" and command == CLEAR_KATAPULT_NODEID:
            self.nodeid = None
        return []

    def _set_nodeid(self, mine: bool, nodeid: int) -> None:
        if mine:
            self.nodeid = nodeid
            self.log("nodeid", nodeid=nodeid)
        elif nodeid == self.nodeid:  # another node given my id: canserial.c drops it
            self.nodeid = None

    def stream(self, data: bytes) -> list[tuple[int, bytes]]:
        if self.mode != "katapult" or self.device is None or self.nodeid is None or not self.answers:
            return []
        out = self.device.feed(data)
        reply = node_ids(self.nodeid)[1]
        return [(reply, out[i:i + 8]) for i in range(0, len(out), 8)]


class Segment:
    """The bus: host frames in, node frames out; up while its carrier (bridge or adapter) is there."""

    def __init__(self, spec: dict[str, Any], state_dir: str, pistate_path: str | None,
                 later: Callable[..., None], log: Callable[..., None]) -> None:
        self.spec = spec
        self.interface = spec.get("interface", "can0")
        self.state_dir, self.pistate_path = state_dir, pistate_path
        self.later, self.log = later, log
        self.bridge_port = spec.get("bridge_port")
        self.bridge_uuid = spec.get("bridge_uuid")
        self.on_bridge_request: Callable[[], None] | None = None
        self.up = self.bridge_port is None
        self.nodes = [Node(self, node_from_dict(raw)) for raw in spec.get("nodes", [])]
        self.state_file = os.path.join(state_dir, "can", self.interface + ".json")

    def klippy_running(self) -> bool:
        if not self.pistate_path:
            return False
        try:
            with open(self.pistate_path, encoding="utf-8") as handle:
                return json.load(handle).get("services", {}).get("klipper") == "active"
        except (OSError, ValueError):
            return False

    def set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self.log(self.interface, "can-up" if up else "can-down")
        self.publish()

    def deliver(self, can_id: int, data: bytes) -> list[tuple[int, bytes]]:
        """A frame the host sent; the frames the bus carries back to it."""
        if not self.up:
            return []
        self._klippy_assigns()
        out: list[tuple[int, bytes]] = []
        if can_id == ADMIN_ID:
            if self.bridge_uuid and len(data) >= 7 and data[0] == REQUEST_BOOTLOADER \
                    and data[1:7].hex() == self.bridge_uuid and self.on_bridge_request:
                self.on_bridge_request()  # routed to the bridge's own node (usb_canbus.c)
            answers = [(node, node.admin(data)) for node in self.nodes]
            replying = [node for node, frames in answers if frames]
            if data[:1] == bytes([QUERY_UNASSIGNED]) and len(replying) > 1:
                for node in replying:
                    if "can-bus-off-on-query" in node.faults():
                        node.bus_off = True
                        node.log("bus-off", answering=len(replying))
                answers = [(node, frames) for node, frames in answers if not node.bus_off]
                self.publish()
            for _, frames in answers:
                out += frames
        else:
            for node in self.nodes:
                if node.nodeid is not None and can_id == node_ids(node.nodeid)[0]:
                    out += node.stream(data)
        return out

    def _klippy_assigns(self) -> None:
        """klippy, when running, has given every Klipper node it reaches its id (from 4, in order)."""
        if not self.klippy_running():
            return
        for index, node in enumerate(self.nodes):
            if node.mode == "klipper" and node.answers and node.nodeid is None:
                node.nodeid = KLIPPY_NODEID_FIRST + index

    def publish(self) -> None:
        """can0's state (read by the product through the segment file) and each node's MCU in the Pi's state."""
        os.makedirs(os.path.dirname(self.state_file), exist_ok=True)
        state = {"present": self.up, "state": "up" if self.up else None,
                 "bitrate": self.spec.get("bitrate", 1000000), "txqueuelen": self.spec.get("txqueuelen", 128)}
        nodes = {node.spec.uuid: {"mode": node.mode, "nodeid": node.nodeid, "bus_off": node.bus_off,
                                  "version": (node.booted() or {}).get("version") if node.mode == "klipper" else None}
                 for node in self.nodes}
        for path, value in ((self.state_file, state), (os.path.join(self.state_dir, "can", "nodes.json"), nodes)):
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(value, handle, indent=1, sort_keys=True)
            os.replace(tmp, path)
        if not self.pistate_path or not os.path.exists(self.pistate_path):
            return
        from . import pistate
        with pistate.update(self.pistate_path) as pi:
            for node in self.nodes:
                for mcu in pi.get("mcus", []):
                    if node.spec.mcu_name and mcu.get("name") == node.spec.mcu_name:
                        dictionary = node.booted() if node.mode == "klipper" else None
                        mcu["present"] = bool(self.up and node.answers and dictionary)
                        if dictionary:
                            mcu["firmware"] = firmware_summary(dictionary)
