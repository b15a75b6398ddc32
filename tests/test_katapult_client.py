"""The Katapult client against the fact sheet's byte vectors (shared/bootloaders-can.md §1.2)."""

from __future__ import annotations

import os
import select
import struct
import threading

import pytest

from pyinfra_ratos.firmware.katapult import (
    KatapultError, KatapultSerial, katapult_blocks, katapult_connect_info, katapult_crc16, katapult_frame,
    katapult_parse,
)

CONNECT_ACK = bytes.fromhex(
    "0188a00d110000000001010000200008400000007374"
    "6d333266313033786500000000007630 2e302e312d3130342d6766636232663834 00 8773 9903".replace(" ", ""))


def test_crc_is_crc16_mcrf4xx() -> None:
    assert katapult_crc16(b"123456789") == 0x6F91


@pytest.mark.parametrize(("code", "payload", "wire"), [
    (0x11, b"", "01 88 11 00 f1 7c 99 03"),
    (0x13, b"", "01 88 13 00 41 4f 99 03"),
    (0x15, b"", "01 88 15 00 91 1b 99 03"),
    (0x16, b"", "01 88 16 00 f9 31 99 03"),
    (0x14, struct.pack("<I", 0x08002000), "01 88 14 01 00 20 00 08 5b de 99 03"),
    (0x90, b"", "01 88 90 00 e5 e9 99 03"),
    (0xF1, b"", "01 88 f1 00 68 95 99 03"),
    (0xF2, b"", "01 88 f2 00 00 bf 99 03"),
    (0xF3, b"", "01 88 f3 00 d8 a6 99 03"),
    (0xA0, struct.pack("<I", 0x15), "01 88 a0 01 15 00 00 00 00 2e 99 03"),
    (0xA0, struct.pack("<II", 0x12, 0x08002000), "01 88 a0 02 12 00 00 00 00 20 00 08 5a d6 99 03"),
    (0xA0, struct.pack("<II", 0x13, 10), "01 88 a0 02 13 00 00 00 0a 00 00 00 38 04 99 03"),
    (0xA0, struct.pack("<I", 0x16) + bytes.fromhex("65efaa4cf65d0000"),
     "01 88 a0 03 16 00 00 00 65 ef aa 4c f6 5d 00 00 e9 49 99 03"),
])
def test_frames_match_the_fact_sheet_byte_for_byte(code: int, payload: bytes, wire: str) -> None:
    frame = bytes.fromhex(wire.replace(" ", ""))
    assert katapult_frame(code, payload) == frame
    assert katapult_parse(b"\x00junk" + frame + b"\x01") == ((code, payload), b"\x01")


def test_connect_reply_is_read_as_flashtool_prints_it() -> None:
    assert len(CONNECT_ACK) == 60
    (code, payload), rest = katapult_parse(CONNECT_ACK)
    assert (code, rest, payload[:4]) == (0xA0, b"", struct.pack("<I", 0x11))
    assert katapult_connect_info(payload[4:]) == {
        "protocol": "1.1.0", "start": 0x08002000, "block_size": 64, "mcu": "stm32f103xe",
        "version": "v0.0.1-104-gfcb2f84"}


def test_damaged_frames_are_named_and_dropped() -> None:
    good = katapult_frame(0xA0, struct.pack("<I", 0x15))
    bad_crc = good[:5] + b"\x01" + good[6:]
    assert katapult_parse(bad_crc) == ("frame CRC mismatch", b"")
    assert katapult_parse(good[:-1] + b"\x04")[0] == "invalid trailer"
    assert katapult_parse(good[:7]) == (None, good[:7])  # not whole yet: wait for more


def test_the_last_block_is_padded_with_erased_bytes() -> None:
    blocks = katapult_blocks(b"\x01" * 130, 64)
    assert [len(b) for b in blocks] == [64, 64, 64] and blocks[2] == b"\x01\x01" + b"\xff" * 62


def test_a_command_error_is_retried_then_named(tmp_path) -> None:
    master, slave = os.openpty()
    answers = [katapult_frame(0xF2), katapult_frame(0xA0, struct.pack("<II", 0x12, 0x08002000))]

    def device() -> None:  # bounded: a client that never writes ends the thread, not the suite
        for answer in answers:
            if not select.select([master], [], [], 30)[0]:
                return
            os.read(master, 4096)
            os.write(master, answer)

    thread = threading.Thread(target=device, daemon=True)
    thread.start()
    client = KatapultSerial(os.ttyname(slave)).open()
    client.info = {"start": 0x08002000, "block_size": 64}
    client.send_block(0x08002000, b"\x00" * 64)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the emulated device never saw the client's retry"
    assert client.log == ["SEND_BLOCK: the device answered with a command error, 2 tries left"]
    client.TIMEOUT_S = client.BLOCK_TIMEOUT_S = 0.2
    with pytest.raises(KatapultError, match="SEND_BLOCK failed after 3 tries: no answer"):
        client.send_block(0x08002040, b"\x00" * 64)
    client.close()
    os.close(master)
    os.close(slave)


def test_the_agent_on_the_pi_carries_the_client_and_the_katapult_runner() -> None:
    from pyinfra_ratos.operations import firmware

    source = firmware.agent_source()
    agent: dict = {"__name__": "agent_on_the_pi"}
    exec(compile(source, "agent", "exec"), agent)  # noqa: S102 - the shipped text, as the Pi runs it
    assert type(agent["RUNNERS"]["katapult"]).__name__ == "KatapultRunner"
    assert agent["katapult_frame"](0x11) == bytes.fromhex("01881100f17c9903")
    assert source.index("class KatapultSerial") < source.index("class KatapultRunner") < source.index("if __name__ ==")
