"""Katapult's serial protocol, host side: frames, CRC, the commands flashtool sends, over a tty.

The project's own client (stdlib only: ``os``, ``termios``, ``select``), written from the facts in
``shared/bootloaders-can.md`` §1 (Arksine/katapult ``protocol.md``, ``src/command.c``,
``scripts/flashtool.py``). It is shipped to the Pi inside the printer agent (the ``katapult``
method's ``pi_source``), so it holds no ``from __future__`` import and names nothing the agent
defines; on the controller it is importable for tests.

A frame: ``01 88 | cmd | N | 4*N payload bytes (LE words) | CRC16 LE | 99 03``; the CRC
(CRC-16/MCRF4XX: init 0xFFFF, reflected poly 0x8408, no final xor) covers cmd, N and payload.
Every ACK (0xA0) echoes the command as its first word. Flashing is as flashtool does it: CONNECT,
SEND_BLOCK for each ``block_size`` chunk from the application start (the last padded with 0xFF;
the device echoes the address), SEND_EOF, then a full read-back with REQUEST_BLOCK compared by
SHA-1, then COMPLETE (the bootloader jumps to the application ~100 ms later).
"""

import hashlib
import os
import select
import struct
import termios
import time
import fcntl

KATAPULT_HEADER = b"\x01\x88"
KATAPULT_TRAILER = b"\x99\x03"
KATAPULT_CMDS = {"CONNECT": 0x11, "SEND_BLOCK": 0x12, "SEND_EOF": 0x13, "REQUEST_BLOCK": 0x14,
                 "COMPLETE": 0x15, "GET_CANBUS_ID": 0x16}
KATAPULT_PRIME = 0x90  # an invalid command: flashtool sends it first to STM32s with double-buffered USB
KATAPULT_ACK, KATAPULT_NACK, KATAPULT_ERROR, KATAPULT_BUSY = 0xA0, 0xF1, 0xF2, 0xF3
KATAPULT_MESSAGE_MAX = 128  # the device's MESSAGE_MAX: a longer frame is garbage to it


class KatapultError(Exception):
    """The device did not do what was asked (after flashtool's retries); the text says what."""


def katapult_crc16(data):
    """CRC-16/MCRF4XX, Klipper's ``crc16_ccitt``: check value 0x6F91 for b"123456789"."""
    crc = 0xFFFF
    for byte in data:
        byte ^= crc & 0xFF
        byte ^= (byte << 4) & 0xFF
        crc = ((byte << 8) | (crc >> 8)) ^ (byte >> 4) ^ (byte << 3)
        crc &= 0xFFFF
    return crc


def katapult_frame(code, payload=b""):
    """One frame: ``code`` with ``payload`` padded with zeros to whole 4-byte words."""
    payload = bytes(payload) + b"\x00" * (-len(payload) % 4)
    body = bytes((code, len(payload) // 4)) + payload
    return KATAPULT_HEADER + body + struct.pack("<H", katapult_crc16(body)) + KATAPULT_TRAILER


def katapult_parse(buffer):
    """(frame, rest) from received bytes: ``frame`` is ``(code, payload)``, ``None`` when the buffer
    holds no whole frame yet, or a string naming what was wrong with the frame that was thrown away.

    As flashtool reads: leading bytes up to the header are dropped, the length comes from byte 3.
    """
    buffer = bytes(buffer)
    start = buffer.find(KATAPULT_HEADER)
    if start < 0:
        return None, buffer[-1:] if buffer.endswith(b"\x01") else b""
    buffer = buffer[start:]
    if len(buffer) < 4:
        return None, buffer
    total = 4 * buffer[3] + 8
    if total > KATAPULT_MESSAGE_MAX + 8 * 4:  # no answer of Katapult's is longer: a false header
        return "bad length", buffer[2:]
    if len(buffer) < total:
        return None, buffer
    frame, rest = buffer[:total], buffer[total:]
    if frame[-2:] != KATAPULT_TRAILER:
        return "invalid trailer", buffer[2:]
    body = frame[2:-4]
    if struct.unpack("<H", frame[-4:-2])[0] != katapult_crc16(body):
        return "frame CRC mismatch", rest
    return (body[0], body[2:]), rest


def katapult_connect_info(payload):
    """The CONNECT answer (payload after the echoed command word) as a dict:
    ``protocol`` ("1.1.0"), ``start`` (application start address), ``block_size``, ``mcu``,
    ``version`` (NULs stripped: flashtool's split leaves them in front of the version)."""
    if len(payload) < 12:
        raise KatapultError(f"CONNECT answer too short ({len(payload)} bytes)")
    proto, start, block_size = struct.unpack_from("<III", payload)
    text = payload[12:]
    major, minor, patch = (proto >> 16) & 0xFF, (proto >> 8) & 0xFF, proto & 0xFF
    if (major, minor) >= (1, 1):
        mcu, _, version = text.partition(b"\x00")
    else:
        mcu, version = text, b""
    return {"protocol": f"{major}.{minor}.{patch}", "start": start, "block_size": block_size,
            "mcu": mcu.strip(b"\x00").decode("ascii", "replace"),
            "version": version.strip(b"\x00").decode("ascii", "replace")}


def katapult_blocks(image, block_size):
    """The image cut into ``block_size`` blocks, the last one padded with 0xFF (as flashtool)."""
    padded = bytes(image) + b"\xff" * (-len(image) % block_size)
    return [padded[i:i + block_size] for i in range(0, len(padded), block_size)]


class KatapultSerial:
    """A Katapult device on a tty (USB CDC-ACM or UART), spoken to as flashtool does."""

    TRIES, TIMEOUT_S = 5, 2.0            # flashtool's send_command defaults
    BLOCK_TRIES, BLOCK_TIMEOUT_S = 3, 5.0  # and SEND_BLOCK's
    MISMATCH_TRIES = 3                   # outer loop on an echoed address that is not ours

    def __init__(self, tty, log=None):
        self.tty = tty
        self.log = log if log is not None else []
        self.fd = None
        self.pending = b""
        self.moved = 0  # bytes written to and read from the tty, frames included
        self.info = {}

    # --- the line ---------------------------------------------------------------------------------
    def open(self):
        try:
            self.fd = os.open(self.tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as error:
            raise KatapultError(f"cannot open {self.tty}: {error.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # pyserial's exclusive=True
            attrs = termios.tcgetattr(self.fd)
            attrs[0] = attrs[1] = attrs[3] = 0          # raw: no echo, no translation, no signals
            attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL
            attrs[4] = attrs[5] = termios.B250000 if hasattr(termios, "B250000") else termios.B230400
            attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 0, 0
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
            termios.tcflush(self.fd, termios.TCIOFLUSH)
        except (OSError, termios.error) as error:
            self.close()
            raise KatapultError(f"cannot set up {self.tty}: {error}") from None
        return self

    def close(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _write(self, data):
        view = memoryview(data)
        deadline = time.monotonic() + self.TIMEOUT_S
        while view:
            try:
                done = os.write(self.fd, view)
            except BlockingIOError:
                done = 0
            except OSError as error:
                raise KatapultError(f"write to {self.tty} failed: {error.strerror}") from None
            view = view[done:]
            self.moved += done
            if view:
                if time.monotonic() > deadline:
                    raise KatapultError(f"{self.tty} does not take data")
                select.select([], [self.fd], [], 0.05)

    def _read_frame(self, timeout):
        """The next frame (code, payload) within ``timeout`` s, or None; bad frames are logged."""
        deadline = time.monotonic() + timeout
        while True:
            frame, self.pending = katapult_parse(self.pending)
            if isinstance(frame, str):
                self.log.append(frame)
                continue
            if frame is not None:
                return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            data = self._read_chunk(left)
            if data:
                self.moved += len(data)
                self.pending += data

    def _read_chunk(self, timeout):
        """What the line holds within ``timeout`` s (b"" or None: nothing yet); the one read a
        transport other than a tty replaces."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError as error:
            raise KatapultError(f"read from {self.tty} failed: {error.strerror}") from None
        if not data:
            raise KatapultError(f"{self.tty} was closed by the device")
        return data

    def _drain(self):
        self.pending = b""
        try:
            termios.tcflush(self.fd, termios.TCIFLUSH)
        except termios.error:
            pass

    # --- commands ---------------------------------------------------------------------------------
    def command(self, name, payload=b"", tries=None, timeout=None):
        """The ACK's payload after the echoed command word; KatapultError after the last try."""
        code = KATAPULT_CMDS[name]
        tries, timeout = tries or self.TRIES, timeout or self.TIMEOUT_S
        why = "no answer"
        for attempt in range(tries):
            self._write(katapult_frame(code, payload))
            answer = self._read_frame(timeout)
            if answer is None:
                why = f"no answer within {timeout:g} s"
            elif answer[0] == KATAPULT_ACK and answer[1][:4] == struct.pack("<I", code):
                return answer[1][4:]
            elif answer[0] == KATAPULT_ACK:
                why = f"acknowledged another command ({answer[1][:4].hex()})"
            elif answer[0] == KATAPULT_ERROR:
                why = "the device answered with a command error"
            elif answer[0] == KATAPULT_BUSY:
                why = "the device was busy"
                time.sleep(1.5)
            else:
                why = f"the device answered {answer[0]:#04x} (NACK)"
            self.log.append(f"{name}: {why}, {tries - attempt - 1} tries left")
            self._drain()
            time.sleep(0.05)
        raise KatapultError(f"{name} failed after {tries} tries: {why}")

    def prime(self):
        """flashtool's "prime" for STM32s with double-buffered USB: an invalid command whose answer
        (a command error) is thrown away."""
        self._write(katapult_frame(KATAPULT_PRIME))
        self._read_frame(0.5)
        self._drain()

    def connect(self):
        self.info = katapult_connect_info(self.command("CONNECT"))
        if self.info["block_size"] not in (64, 128, 256, 512):
            raise KatapultError(f"invalid block size {self.info['block_size']}")
        return self.info

    def send_block(self, address, data):
        for _ in range(self.MISMATCH_TRIES):
            answer = self.command("SEND_BLOCK", struct.pack("<I", address) + data, self.BLOCK_TRIES,
                                  self.BLOCK_TIMEOUT_S)
            if struct.unpack_from("<I", answer)[0] == address:
                return
            time.sleep(0.1)
        raise KatapultError(f"flash write failed, block address {address:#010x}")

    def request_block(self, address):
        size = self.info["block_size"]
        for _ in range(self.MISMATCH_TRIES):
            answer = self.command("REQUEST_BLOCK", struct.pack("<I", address))
            if struct.unpack_from("<I", answer)[0] == address and len(answer) >= 4 + size:
                return answer[4:4 + size]
        raise KatapultError(f"block request error at {address:#010x}")

    def write(self, image):
        """Write ``image`` from the application start, then EOF; the SHA-1 of what was sent."""
        start, size = self.info["start"], self.info["block_size"]
        digest = hashlib.sha1()
        for index, block in enumerate(katapult_blocks(image, size)):
            digest.update(block)
            try:
                self.send_block(start + index * size, block)
            except KatapultError as error:
                raise KatapultError(f"block {index} of the image ({start + index * size:#010x}): {error}") from None
        pages = struct.unpack_from("<I", self.command("SEND_EOF"))[0]
        self.log.append(f"write complete: {pages} pages")
        return digest.hexdigest()

    def read(self, length):
        """``length`` bytes (whole blocks) from the application start."""
        start, size = self.info["start"], self.info["block_size"]
        return b"".join(self.request_block(start + offset) for offset in range(0, length, size))

    def read_application(self, limit, erased_run=2048):
        """What the board runs now: blocks from the application start until ``erased_run`` bytes
        in a row read erased (0xFF) or ``limit`` bytes, the erased tail cut off."""
        size = self.info["block_size"]
        data, blank = bytearray(), 0
        while len(data) < limit and blank < erased_run:
            block = self.request_block(self.info["start"] + len(data))
            data += block
            blank = blank + size if block == b"\xff" * size else 0
        end = len(bytes(data).rstrip(b"\xff"))
        return bytes(data[:end + (-end % 8)])

    def verify(self, image, sent_sha1):
        """flashtool's verification: every block read back, SHA-1 compared with what was sent."""
        size = self.info["block_size"]
        back = self.read(len(katapult_blocks(image, size)) * size)
        got = hashlib.sha1(back).hexdigest()
        if got != sent_sha1:
            padded = b"".join(katapult_blocks(image, size))
            first = next(i for i in range(0, len(padded), size) if padded[i:i + size] != back[i:i + size])
            raise KatapultError(f"checksum mismatch: sent SHA-1 {sent_sha1}, read back {got} (first "
                                f"difference in block {first // size})")
        return got

    def complete(self):
        """Leave the bootloader: it jumps to the application about 100 ms after this ACK."""
        self.command("COMPLETE")
