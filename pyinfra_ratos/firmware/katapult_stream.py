"""Katapult's protocol over a byte stream that is not a tty: a CAN node's ids (Katapult over CAN).

The one Katapult client (:class:`pyinfra_ratos.firmware.katapult.KatapultSerial`: frames, CRC,
CONNECT, blocks with flashtool's retries, the SHA-1 read-back) with only its line replaced: bytes go
to ``stream.write(data)`` and come from ``stream.read(timeout)`` (one chunk, or None when nothing
came), e.g. :class:`pyinfra_ratos.firmware.canbus.CanStream`. Shipped in the agent after
``katapult.py`` (stdlib only, no ``from __future__``); imported on the controller for tests.
"""


try:
    KatapultSerial  # noqa: B018 - in the shipped agent, katapult.py comes first
except NameError:
    from pyinfra_ratos.firmware.katapult import KatapultError, KatapultSerial


class KatapultStream(KatapultSerial):
    """A Katapult device at the other end of ``stream`` (named ``name`` in messages)."""

    def __init__(self, stream, name, log=None):
        super().__init__(name, log)
        self.stream = stream

    def open(self):
        self.fd = self.stream
        self.pending = b""
        return self

    def close(self):
        self.fd = None

    def _write(self, data):
        try:
            self.stream.write(bytes(data))
        except OSError as error:
            raise KatapultError("write to {} failed: {}".format(self.tty, error)) from None
        self.moved += len(data)

    def _read_chunk(self, timeout):
        try:
            return self.stream.read(timeout)
        except OSError as error:
            raise KatapultError("read from {} failed: {}".format(self.tty, error)) from None

    def _drain(self):
        self.pending = b""
        while self.stream.read(0.05):
            pass

    def canbus_id(self):
        """GET_CANBUS_ID: the node's UUID as 12 hex digits (Katapult's CAN builds only)."""
        return self.command("GET_CANBUS_ID")[:6].hex()
