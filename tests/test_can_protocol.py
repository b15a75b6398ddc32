"""Klipper's CAN admin messages, UUIDs and Katapult over CAN: the product's client and the emulated
nodes, each checked against the fact sheet's byte vectors (shared/bootloaders-can.md §1-§3)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pyinfra_ratos.firmware import canbus
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.firmware.katapult import (
    KatapultError,
    katapult_crc16,
    katapult_frame,
)
from pyinfra_ratos.firmware.katapult_stream import KatapultStream
from pyinfra_ratos.sim.can import Segment
from pyinfra_ratos.sim.klipper_repo import create_template_repo

CONNECT_ACK = bytes.fromhex(
    "0188a00d110000000001010000200008400000007374 6d3332663130337865000000000076302e302e312d3130342d"
    "67666362326638340087 739903".replace(" ", ""))


@pytest.fixture(scope="module")
def ebb_image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EBB36 CAN build of the stand-in Klipper tree (what the farm flashes)."""
    import os
    import subprocess
    root = tmp_path_factory.mktemp("can-build")
    create_template_repo(root / "klipper")
    board = load_catalog()["btt-ebb36-12-can"]
    config, out = root / "ebb.config", root / "out"
    config.write_text(board.kconfig)
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    for targets in (["olddefconfig"], []):
        subprocess.run(["make", f"KCONFIG_CONFIG={config}", f"OUT={out}/", *targets], cwd=root / "klipper", env=env,
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return out / "klipper.bin"


@pytest.fixture
def ebb_image(ebb_image_path: Path) -> bytes:
    return ebb_image_path.read_bytes()


# ---------------------------------------------------------------- byte vectors

def test_uuid_of_a_chip_id_is_the_fact_sheets() -> None:
    assert canbus.can_uuid_of_chip(bytes(range(8))) == "65efaa4cf65d"
    assert canbus.can_uuid_of_chip(bytes(range(12))) == "90a4ae022dfc"


def test_admin_messages_are_the_documented_bytes() -> None:
    assert canbus.can_query_message() == b"\x00"
    assert canbus.can_request_bootloader_message("65efaa4cf65d") == bytes.fromhex("0265efaa4cf65d")
    assert canbus.can_set_katapult_nodeid_message("65efaa4cf65d") == bytes.fromhex("1165efaa4cf65d81")
    assert canbus.can_clear_katapult_message() == b"\x12"
    assert canbus.can_node_ids(canbus.CAN_KATAPULT_NODEID) == (0x202, 0x203)
    assert canbus.can_node_ids(4) == (0x108, 0x109)  # klippy's first node


def test_uuid_query_reply_is_parsed_as_canbus_query_reads_it() -> None:
    assert canbus.can_need_nodeid_message("65efaa4cf65d", "Katapult") == bytes.fromhex("2065efaa4cf65d11")
    assert canbus.can_parse_need_nodeid(bytes.fromhex("2065efaa4cf65d01")) == ("65efaa4cf65d", "Klipper")
    assert canbus.can_parse_need_nodeid(bytes.fromhex("2065efaa4cf65d11")) == ("65efaa4cf65d", "Katapult")
    assert canbus.can_parse_need_nodeid(bytes.fromhex("2065efaa4cf65d")) == ("65efaa4cf65d", "Klipper")  # dlc 7
    assert canbus.can_parse_need_nodeid(bytes.fromhex("2065efaa4cf65d42")) == ("65efaa4cf65d", "Unknown")
    assert canbus.can_parse_need_nodeid(bytes.fromhex("0065efaa4cf65d01")) is None


def test_frames_are_the_kernels_struct_can_frame() -> None:
    raw = canbus.can_frame_pack(0x3F0, bytes.fromhex("0265efaa4cf65d"))
    assert raw == bytes.fromhex("f0030000" "07000000" "0265efaa4cf65d00")
    assert canbus.can_frame_unpack(raw) == (0x3F0, bytes.fromhex("0265efaa4cf65d"))
    assert canbus.can_frame_unpack(raw[:15]) is None
    with pytest.raises(ValueError):
        canbus.can_frame_pack(0x202, bytes(9))


def test_katapult_frames_and_crc_are_the_fact_sheets() -> None:
    assert katapult_crc16(b"123456789") == 0x6F91
    assert katapult_frame(0x16).hex(" ") == "01 88 16 00 f9 31 99 03"  # GET_CANBUS_ID
    assert katapult_frame(0x11).hex(" ") == "01 88 11 00 f1 7c 99 03"  # CONNECT


def test_discovery_is_refused_while_busy_or_with_several_unassigned_nodes() -> None:
    assert canbus.can_discovery_refusal(False, ["a1"]) is None
    assert canbus.can_discovery_refusal(False, []) is None
    assert "busy" in canbus.can_discovery_refusal(True, ["a1"])
    assert "bus-off" in canbus.can_discovery_refusal(False, ["a1", "b2"])


# ---------------------------------------------------------------- client against the emulated bus

class Wire:
    """An in-process CAN segment: the product's transport seam on one side, the emulated nodes on the
    other (what udp multicast carries on the farm's Pis)."""

    def __init__(self, segment: Segment) -> None:
        self.segment, self.queue, self.lock = segment, [], threading.Condition()
        self.sent: list[tuple[int, bytes]] = []

    def send(self, can_id: int, data: bytes) -> None:
        can_id, data = canbus.can_frame_unpack(canbus.can_frame_pack(can_id, data))  # the bytes on the wire
        self.sent.append((can_id, data))
        with self.lock:
            self.queue += self.segment.deliver(can_id, data)
            self.lock.notify_all()

    def recv(self, timeout: float):
        with self.lock:
            self.lock.wait_for(lambda: self.queue, timeout)
            return self.queue.pop(0) if self.queue else None

    def close(self) -> None:
        pass


def segment(tmp_path: Path, *nodes: dict, **spec) -> tuple[Segment, list]:
    events: list = []
    timers: list = []

    def later(seconds: float, func, *args) -> None:
        timer = threading.Timer(seconds, func, args)
        timers.append(timer)
        timer.start()

    seg = Segment({"interface": "can0", "nodes": list(nodes), **spec}, str(tmp_path), None, later,
                  lambda port, event, **f: events.append((port, event, f)))
    return seg, events


def node(uuid: str, mode: str = "katapult", **extra) -> dict:
    return {"uuid": uuid, "board": "btt-ebb36-12-can", "mcu": "stm32g0b1xx", "app_address": 0x08002000,
            "flash_map": "@Internal Flash  /0x08000000/64*02Kg", "mode": mode, "mcu_name": "toolboard_t0", **extra}


def test_query_finds_the_unassigned_node_with_its_application(tmp_path: Path) -> None:
    seg, _ = segment(tmp_path, node("65efaa4cf65d"))
    wire = Wire(seg)
    bus = canbus.CanBus(wire)
    assert bus.query_unassigned(0.2) == [{"uuid": "65efaa4cf65d", "app": "Katapult"}]
    assert wire.sent == [(0x3F0, b"\x00")]


def test_a_silent_node_answers_nothing(tmp_path: Path) -> None:
    seg, _ = segment(tmp_path, node("65efaa4cf65d", faults=["can-silent"]))
    assert canbus.CanBus(Wire(seg)).query_unassigned(0.2) == []


def test_a_query_two_nodes_answer_pushes_the_fragile_one_into_bus_off(tmp_path: Path) -> None:
    seg, events = segment(tmp_path, node("65efaa4cf65d", faults=["can-bus-off-on-query"]),
                          {**node("90a4ae022dfc"), "mcu_name": "toolboard_t1"})
    found = canbus.CanBus(Wire(seg)).query_unassigned(0.2)
    assert found == [{"uuid": "90a4ae022dfc", "app": "Katapult"}]
    assert ("can0/65efaa4cf65d", "bus-off", {"answering": 2}) in events
    assert canbus.CanBus(Wire(seg)).query_unassigned(0.2) == [{"uuid": "90a4ae022dfc", "app": "Katapult"}]


def katapult_over(seg: Segment, uuid: str) -> tuple[Wire, KatapultStream]:
    wire = Wire(seg)
    bus = canbus.CanBus(wire)
    bus.admin(canbus.can_set_katapult_nodeid_message(uuid))
    client = KatapultStream(canbus.CanStream(bus, canbus.CAN_KATAPULT_NODEID), f"node {uuid}").open()
    return wire, client


def test_katapult_over_can_connects_and_names_its_uuid(tmp_path: Path) -> None:
    seg, _ = segment(tmp_path, node("65efaa4cf65d", katapult_version="v0.0.1-104-gfcb2f84"))
    wire, client = katapult_over(seg, "65efaa4cf65d")
    info = client.connect()
    assert info == {"protocol": "1.1.0", "start": 0x08002000, "block_size": 64, "mcu": "stm32g0b1xx",
                    "version": "v0.0.1-104-gfcb2f84"}
    assert client.canbus_id() == "65efaa4cf65d"
    # CONNECT went out as one 8-byte frame on 0x202; GET_CANBUS_ID's ACK is the fact sheet's frame
    assert wire.sent[1] == (0x202, bytes.fromhex("018811 00f17c9903".replace(" ", "")))
    ack = bytes.fromhex("0188a0031600000065efaa4cf65d0000e9499903")
    assert seg.nodes[0].device is not None
    assert seg.nodes[0].device.dispatch(0x16, b"") == ack


def test_connect_ack_over_can_is_the_fact_sheets_bytes(tmp_path: Path) -> None:
    seg, _ = segment(tmp_path, {**node("65efaa4cf65d", katapult_version="v0.0.1-104-gfcb2f84"),
                                "mcu": "stm32f103xe"})
    out = b""
    seg.deliver(0x3F0, canbus.can_set_katapult_nodeid_message("65efaa4cf65d"))
    for can_id, data in seg.deliver(0x202, katapult_frame(0x11)):
        assert can_id == 0x203 and len(data) <= 8
        out += data
    assert out == CONNECT_ACK


def test_an_image_is_written_read_back_and_boots_as_klipper(tmp_path: Path, ebb_image: bytes) -> None:
    seg, events = segment(tmp_path, node("65efaa4cf65d"))
    _, client = katapult_over(seg, "65efaa4cf65d")
    client.connect()
    client.verify(ebb_image, client.write(ebb_image))
    client.complete()
    deadline = time.monotonic() + 2
    while seg.nodes[0].mode != "klipper" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seg.nodes[0].mode == "klipper"
    assert seg.nodes[0].booted()["version"]
    assert ("can0/65efaa4cf65d", "katapult-complete", {}) in events


def test_transfer_error_in_block_n_fails_the_write_by_name(tmp_path: Path, ebb_image: bytes) -> None:
    seg, _ = segment(tmp_path, node("65efaa4cf65d", faults=["katapult-transfer-error@2"]))
    _, client = katapult_over(seg, "65efaa4cf65d")
    client.BLOCK_TIMEOUT_S = 0.2
    client.connect()
    with pytest.raises(KatapultError, match="block 2 of the image"):
        client.write(ebb_image)


def test_klipper_node_enters_katapult_on_request_and_the_bridge_request_is_routed(
        tmp_path: Path, ebb_image_path: Path) -> None:
    asked: list = []
    seg, events = segment(tmp_path, node("65efaa4cf65d", mode="klipper", image=str(ebb_image_path)),
                          bridge_uuid="90a4ae022dfc",
                          bridge_port="1-1.1")
    seg.on_bridge_request = lambda: asked.append(True)
    assert canbus.CanBus(Wire(seg)).query_unassigned(0.1) == []  # the bus is down until the bridge is up
    seg.set_up(True)
    bus = canbus.CanBus(Wire(seg))
    bus.request_bootloader("65efaa4cf65d")
    bus.request_bootloader("90a4ae022dfc")
    assert asked == [True]
    assert seg.nodes[0].mode == "klipper"
    time.sleep(0.4)
    assert seg.nodes[0].mode == "katapult"
    assert ("can0/65efaa4cf65d", "bootloader-request", {}) in events
