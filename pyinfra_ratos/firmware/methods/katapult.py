"""Katapult over USB: a board whose bootloader is Katapult (1d50:6177), written through its serial protocol.

From Klipper, the 1200-baud request (as Katapult's flashtool sends it) reboots the board into
Katapult; it comes back on the same USB port path as ``usb-katapult_<mcu>_<serial>`` (the by-id name
flips, the port does not: boards are addressed by port). On the Pi the agent's runner
(``katapult_pi.py``, with the protocol client ``pyinfra_ratos.firmware.katapult``) asks Katapult
where applications start (CONNECT) and refuses before any write when that is not the image's
address (a mismatch overwrites the bootloader or does not boot); keeps a read of the application
the board ran (REQUEST_BLOCK reads flash, so the rollback image is the board's own); writes block
by block, each echoed address checked, then EOF and flashtool's full read-back compared by SHA-1;
leaves with COMPLETE and waits for the board as Klipper on the same port. Klipper's ``mcu_version``
is verified by the agent as for every method.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra_ratos.firmware import katapult as protocol
from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.methods.base import FlashMethod, Options, bootloader_plan, register, usb_preflight
from pyinfra_ratos.firmware.methods.dfu import capture_length
from pyinfra_ratos.firmware.steps import Artifact, FlashPlan

KATAPULT_TIMEOUT_S = 10.0  # flashtool waits 4 s; a board's bootloader is up well within that


@dataclass(frozen=True)
class WaitKatapult:
    """Wait for the board in Katapult (1d50:6177) on its USB port."""

    port: str
    timeout: float


@dataclass(frozen=True)
class KatapultWrite:
    """Write ``image`` through Katapult, refusing unless Katapult's application start is ``address``;
    ``capture_length``: the most of the old application read first and kept for a rollback."""

    port: str
    address: int
    image: str
    mcu: str
    capture_length: int = 0


@register
class Katapult(FlashMethod):
    name = "katapult"
    modes = ("klipper", "katapult")
    interfaces = ("usb",)  # Katapult over CAN (toolboards) is another method, not written yet
    verifies = "read-back"
    pi_source = (protocol.__file__, os.path.join(os.path.dirname(__file__), "katapult_pi.py"))

    def preflight(self, board: Board, entry: Mapping[str, Any]) -> str | None:
        refused = usb_preflight(board, entry, "has a Katapult")
        if refused is None and not entry.get("tty"):
            return f"the board at USB port {entry.get('port')} has no tty to speak to"
        return refused

    def steps(self, board: Board, entry: Mapping[str, Any] | None, mcu_name: str, artifact: Artifact,
              options: Options) -> FlashPlan:
        assert entry is not None  # modes: the plan found it on USB
        port = entry["port"]
        return bootloader_plan(
            board, entry, mcu_name, artifact, options, self.name, WaitKatapult(port, KATAPULT_TIMEOUT_S),
            KatapultWrite(port, board.app_address, artifact.path, board.mcu, capture_length(board)),
            f"through Katapult at {board.app_address:#010x}")
