"""Klipper's CAN bus from the Pi: frames, the transport seam, the admin messages, UUIDs.

The project's own code (stdlib only), written from the facts in ``shared/bootloaders-can.md``
§2-§4 (klipper ``src/generic/canserial.c``, ``docs/CANBUS_protocol.md``, ``scripts/canbus_query.py``;
katapult ``scripts/flashtool.py`` ``CanSocket``). It runs on the Pi twice: inside the facts' probe
and appended to the printer agent (the ``katapult-can`` method's ``pi_source``), so it holds no
``from __future__`` import, runs on Python 3.7, and prefixes every name with ``can``/``CAN``.

**The transport seam.** A CAN frame is the kernel's ``struct can_frame`` (16 bytes: id u32 LE,
length, 3 pad bytes, 8 data bytes) on either

- the kernel's SocketCAN (``AF_CAN``/``CAN_RAW`` bound to ``can0``): a real Pi; or
- a user-space segment: the same 16 bytes as UDP datagrams on an administratively scoped IPv4
  multicast group on the loopback of the Pi's own network namespace, when
  ``/etc/ratos-can/<interface>.json`` says so (the virtual farm: its kernel has no CAN at all).

:func:`can_open` picks one; everything above it (admin messages, Katapult's byte stream) sees only
``send(id, data)`` and ``recv(timeout)``. :func:`can_interface` reads the interface's state the
same way (sysfs and ``ip -details -json`` on a Pi, the segment's state file in the farm).

Why not python-can: this code runs under the Pi's own ``python3`` (the probe with ``-I -S``, the
agent under ``sudo``), which has only the standard library, and the farm's Pis share the machine's
Debian ``/usr``, which has no python-can either; the kernel's raw CAN socket is two standard-library
calls, and python-can's udp_multicast (msgpack) would not carry the kernel's frame bytes.
"""

import json
import os
import select
import socket
import struct
import subprocess
import time

CAN_FRAME = struct.Struct("<IB3x8s")  # linux/can.h struct can_frame
CAN_EFF_FLAG = 0x80000000
CAN_ADMIN_ID, CAN_ADMIN_REPLY_ID = 0x3F0, 0x3F1
CAN_QUERY_UNASSIGNED, CAN_SET_KLIPPER_NODEID, CAN_REQUEST_BOOTLOADER = 0x00, 0x01, 0x02
CAN_SET_KATAPULT_NODEID, CAN_CLEAR_KATAPULT_NODEID, CAN_NEED_NODEID = 0x11, 0x12, 0x20
CAN_APPS = {0x01: "Klipper", 0x11: "Katapult"}
CAN_APP_BYTES = {"Klipper": 0x01, "Katapult": 0x11}
CAN_KATAPULT_NODEID = 129  # flashtool: 128 + its one registered reader -> ids 0x202/0x203
CAN_QUERY_WINDOW_S = 2.0   # canbus_query.py and flashtool -q listen this long
CAN_CONF_DIR = "/etc/ratos-can"
CAN_SEGMENT_NET = "239."    # an administratively scoped group only: it never routes off the host


class CanError(Exception):
    """The bus cannot be used (no interface, no permission, a bad segment file): the text says why."""


def can_node_ids(nodeid):
    """(host -> node id, node -> host id) of a Klipper/Katapult node id."""
    return 0x100 + 2 * nodeid, 0x100 + 2 * nodeid + 1


def can_frame_pack(can_id, data):
    data = bytes(data)
    if len(data) > 8:
        raise ValueError("a classic CAN frame carries at most 8 bytes")
    if can_id > 0x7FF:
        can_id |= CAN_EFF_FLAG
    return CAN_FRAME.pack(can_id, len(data), data.ljust(8, b"\x00"))


def can_frame_unpack(raw):
    """(id, data) of a 16-byte frame, or None for anything else."""
    if len(raw) != CAN_FRAME.size:
        return None
    can_id, length, data = CAN_FRAME.unpack(raw)
    return can_id & 0x1FFFFFFF, data[:min(length, 8)]


# ------------------------------------------------------------------------------ UUIDs

def can_uuid_bytes(text):
    """The 6 wire bytes of a UUID written as 12 hex digits (how tools print it, big-endian)."""
    raw = bytes.fromhex(text)
    if len(raw) != 6:
        raise ValueError("a CAN UUID is 12 hex digits")
    return raw


def can_fasthash64(data, seed):
    """fasthash64 (klipper lib/fast-hash), the hash Klipper derives a node's UUID with."""
    mask, m = 0xFFFFFFFFFFFFFFFF, 0x880355F21E6D1965

    def mix(value):
        value ^= value >> 23
        value = (value * 0x2127599BF4325C37) & mask
        return value ^ (value >> 47)

    h = (seed ^ (len(data) * m)) & mask
    whole = len(data) - len(data) % 8
    for offset in range(0, whole, 8):
        h = ((h ^ mix(struct.unpack_from("<Q", data, offset)[0])) * m) & mask
    if len(data) % 8:
        tail = int.from_bytes(data[whole:], "little")
        h = ((h ^ mix(tail)) * m) & mask
    return mix(h)


def can_uuid_of_chip(chip_id):
    """The UUID Klipper (and Katapult) give a node with this chip id (canserial_set_uuid)."""
    return struct.pack("<Q", can_fasthash64(bytes(chip_id), 0xA16231A7))[:6].hex()


# ------------------------------------------------------------------------------ admin messages

def can_query_message():
    return bytes([CAN_QUERY_UNASSIGNED])


def can_request_bootloader_message(uuid):
    return bytes([CAN_REQUEST_BOOTLOADER]) + can_uuid_bytes(uuid)


def can_set_katapult_nodeid_message(uuid, nodeid=CAN_KATAPULT_NODEID):
    return bytes([CAN_SET_KATAPULT_NODEID]) + can_uuid_bytes(uuid) + bytes([nodeid])


def can_clear_katapult_message():
    return bytes([CAN_CLEAR_KATAPULT_NODEID])


def can_need_nodeid_message(uuid, app):
    """A node's answer to the query: ``20`` + uuid + app byte (0x01 Klipper, 0x11 Katapult)."""
    return bytes([CAN_NEED_NODEID]) + can_uuid_bytes(uuid) + bytes([CAN_APP_BYTES[app]])


def can_parse_need_nodeid(data):
    """(uuid, application) of a query answer, as canbus_query.py reads it; None if it is not one."""
    if len(data) < 7 or data[0] != CAN_NEED_NODEID:
        return None
    app = CAN_APPS.get(data[7], "Unknown") if len(data) >= 8 else "Klipper"
    return data[1:7].hex(), app


def can_discovery_refusal(busy, unaccounted):
    """Why the bus must not be asked for unassigned nodes now, or None: it may.

    ``busy``: the printer is printing or its state is unknown; ``unaccounted``: the configured
    nodes Klipper is not talking to (each may be unassigned). Several unassigned nodes answer the
    query at once on the same id, which can push nodes into bus-off (Katapult README, Klipper's
    CANBUS_Troubleshooting): one at most, and never during a print.
    """
    if busy:
        return "the printer is busy or its state is unknown: no query on its bus"
    if len(unaccounted) > 1:
        return ("{} nodes may be unassigned ({}): a query could push them into bus-off, so none was sent"
                .format(len(unaccounted), ", ".join(sorted(unaccounted))))
    return None


# ------------------------------------------------------------------------------ transports

class CanSocketTransport:
    """The kernel's SocketCAN raw socket on a real Pi."""

    kind = "socketcan"

    def __init__(self, interface):
        try:
            self.sock = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
        except (AttributeError, OSError) as error:
            raise CanError("no SocketCAN on this system ({})".format(error)) from None
        try:
            self.sock.bind((interface,))
        except OSError as error:
            self.sock.close()
            raise CanError("cannot bind to CAN interface {}: {}".format(interface, error.strerror)) from None

    def send(self, can_id, data):
        self.sock.send(can_frame_pack(can_id, data))

    def recv(self, timeout):
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return None
        return can_frame_unpack(self.sock.recv(64))

    def close(self):
        self.sock.close()


class CanSegmentTransport:
    """A user-space CAN segment: frames as UDP datagrams on a 239.x group on 127.0.0.1.

    Guarded so that a mistake fails here: only 239.0.0.0/8 groups, sent with TTL 0 through the
    loopback, in whatever network namespace the process is in (the farm's Pi has only ``lo``).
    The sending socket hears its own datagrams (IP_MULTICAST_LOOP); they are dropped by source.
    """

    kind = "segment"

    def __init__(self, group, port):
        if not isinstance(group, str) or not group.startswith(CAN_SEGMENT_NET) or not 0 < int(port) < 65536:
            raise CanError("CAN segment {}:{} refused: only 239.x groups on the loopback".format(group, port))
        self.group, self.port = group, int(port)
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.rx.bind((group, self.port))
            membership = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
            self.rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
            self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            self.tx.bind(("127.0.0.1", 0))
        except OSError as error:
            self.close()
            raise CanError("cannot join CAN segment {}:{}: {}".format(group, port, error.strerror)) from None
        self.me = self.tx.getsockname()

    def send(self, can_id, data):
        self.tx.sendto(can_frame_pack(can_id, data), (self.group, self.port))

    def recv(self, timeout):
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            ready, _, _ = select.select([self.rx], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            raw, source = self.rx.recvfrom(64)
            if source != self.me:
                return can_frame_unpack(raw)

    def close(self):
        for sock in (self.rx, self.tx):
            sock.close()


def can_segment_conf(interface, conf_dir=CAN_CONF_DIR):
    """The user-space segment standing for ``interface`` (its JSON file), or None: the kernel's."""
    try:
        with open(os.path.join(conf_dir, interface + ".json"), encoding="utf-8") as handle:
            conf = json.load(handle)
    except (OSError, ValueError):
        return None
    return conf if isinstance(conf, dict) and conf.get("transport") == "segment" else None


def can_open(interface, conf_dir=CAN_CONF_DIR):
    """The transport of ``interface``: a user-space segment if one is declared, else SocketCAN."""
    conf = can_segment_conf(interface, conf_dir)
    if conf is not None:
        state = can_interface(interface, conf_dir)
        if state.get("state") != "up":
            raise CanError("CAN interface {} is {}".format(interface, state.get("state") or "absent"))
        return CanSegmentTransport(conf.get("group"), conf.get("port", 0))
    return CanSocketTransport(interface)


def can_interface(interface, conf_dir=CAN_CONF_DIR, sys_root="/sys"):
    """``{"present", "state", "bitrate", "txqueuelen", "transport"}`` of the interface; never raises.

    ``state``: the kernel's operstate ("up", "down", ...); absent interfaces say present False.
    """
    conf = can_segment_conf(interface, conf_dir)
    if conf is not None:
        try:
            with open(conf.get("state_file", ""), encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, ValueError, TypeError):
            state = {}
        present = bool(state.get("present"))
        return {"present": present, "state": state.get("state") if present else None,
                "bitrate": state.get("bitrate") if present else None,
                "txqueuelen": state.get("txqueuelen") if present else None, "transport": "segment"}
    base = os.path.join(sys_root, "class/net", interface)
    info = {"present": os.path.isdir(base), "state": None, "bitrate": None, "txqueuelen": None,
            "transport": "socketcan"}
    if not info["present"]:
        return info
    for key, name in (("state", "operstate"), ("txqueuelen", "tx_queue_len")):
        try:
            with open(os.path.join(base, name), encoding="ascii") as handle:
                value = handle.read().strip()
            info[key] = int(value) if key == "txqueuelen" else value
        except (OSError, ValueError):
            pass
    try:
        out = subprocess.run(["ip", "-details", "-json", "link", "show", "dev", interface],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=5).stdout
        link = json.loads(out.decode("utf-8", "replace"))[0]
        info["bitrate"] = link["linkinfo"]["info_data"]["bittiming"]["bitrate"]
    except (OSError, ValueError, KeyError, IndexError, TypeError, subprocess.SubprocessError):
        pass
    return info


def can_wait_up(interface, timeout, conf_dir=CAN_CONF_DIR):
    """The interface's state once it is up, or as it is when ``timeout`` s have passed."""
    deadline = time.monotonic() + timeout
    while True:
        state = can_interface(interface, conf_dir)
        if state.get("state") == "up" or time.monotonic() >= deadline:
            return state
        time.sleep(0.1)


# ------------------------------------------------------------------------------ the bus

class CanBus:
    """Admin messages and node byte streams on one transport."""

    def __init__(self, transport):
        self.transport = transport
        self.pending = []  # frames read while waiting for others, oldest first

    def close(self):
        self.transport.close()

    def send(self, can_id, data):
        self.transport.send(can_id, data)

    def admin(self, message):
        self.transport.send(CAN_ADMIN_ID, message)

    def recv(self, wanted_id, timeout):
        """The next frame's data on ``wanted_id`` within ``timeout`` s, or None; others are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.transport.recv(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return None
            if frame[0] == wanted_id:
                return frame[1]

    def query_unassigned(self, window=CAN_QUERY_WINDOW_S):
        """``[{"uuid", "app"}]`` of the unassigned nodes that answered, duplicates removed.

        Only when :func:`can_discovery_refusal` allows it: several nodes answer at once.
        """
        self.admin(can_query_message())
        found, deadline = [], time.monotonic() + window
        while True:
            data = self.recv(CAN_ADMIN_REPLY_ID, deadline - time.monotonic())
            if data is None:
                return found
            parsed = can_parse_need_nodeid(data)
            if parsed and parsed[0] not in [node["uuid"] for node in found]:
                found.append({"uuid": parsed[0], "app": parsed[1]})

    def request_bootloader(self, uuid):
        self.admin(can_request_bootloader_message(uuid))


class CanStream:
    """A node's byte stream on its assigned ids (host -> node ``tx``, node -> host ``rx``):
    written in frames of at most 8 bytes, read frame by frame."""

    def __init__(self, bus, nodeid):
        self.bus = bus
        self.tx, self.rx = can_node_ids(nodeid)

    def write(self, data):
        for offset in range(0, len(data), 8):
            self.bus.send(self.tx, data[offset:offset + 8])

    def read(self, timeout):
        return self.bus.recv(self.rx, timeout)
