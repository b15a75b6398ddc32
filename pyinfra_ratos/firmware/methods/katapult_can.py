"""Katapult over CAN: a CAN toolboard (EBB36/42 CAN...) written through Katapult on the printer's bus.

The board is not on USB: it is found on the CAN interface by its ``canbus_uuid`` (the ``CanBus``
fact's nodes, merged into the attached devices under ``<interface>/<uuid>`` by
:func:`pyinfra_ratos.firmware.can.attached_with_can`). On the Pi the agent's runner
(``katapult_can_pi.py``) does what Katapult's flashtool does for ``-u UUID``: the admin message
REQUEST_BOOTLOADER for that UUID on 0x3F0 (Klipper reboots into Katapult), CLEAR then
SET_CANBOOT_NODEID 129 (ids 0x202/0x203), then the Katapult byte protocol over that stream with the
project's one Katapult client (``pyinfra_ratos.firmware.katapult``): CONNECT, GET_CANBUS_ID (the
UUID must be the board's), the application start and MCU checked before any write, a read of the
old application kept for a rollback, the blocks, EOF, the full SHA-1 read-back, COMPLETE. Klipper's
``mcu_version`` over CAN is verified by the agent after Klipper starts, as for every method.

A printer flashes its CAN toolboards first and its USB-to-CAN bridge last
(:func:`pyinfra_ratos.firmware.can.flash_order`): resetting the bridge takes the bus down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra_ratos.firmware import canbus
from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.methods.base import FlashMethod, Options, register
from pyinfra_ratos.firmware.steps import (
    Artifact,
    EnsureIdle,
    FlashPlan,
    StartKlipper,
    StopKlipper,
    Verify,
)

# the CanBus fact's node states, as attached-device modes (see pyinfra_ratos.firmware.can)
CAN_MODES = ("can-klipper", "can-katapult", "can-silent", "can-unknown", "can-down")
CAPTURE_LIMIT = 512 * 1024  # the most of an old application kept for a rollback (a G0B1 has 128 KiB)


@dataclass(frozen=True)
class CanEnterKatapult:
    """Send REQUEST_BOOTLOADER to the node (when it runs Klipper), then give Katapult its node id."""

    interface: str
    uuid: str


@dataclass(frozen=True)
class KatapultCanWrite:
    """Write ``image`` through Katapult over CAN, refusing unless Katapult's application start is
    ``address`` and its MCU ``mcu``; ``capture_length``: the most of the old application kept."""

    interface: str
    uuid: str
    address: int
    image: str
    mcu: str
    capture_length: int = CAPTURE_LIMIT


def _pi_sources() -> tuple[str, ...]:
    here = os.path.dirname(__file__)
    firmware = os.path.dirname(here)
    return (os.path.join(firmware, "katapult.py"), os.path.join(firmware, "katapult_stream.py"),
            os.path.join(here, "katapult_pi.py"), canbus.__file__, os.path.join(here, "katapult_can_pi.py"))


@register
class KatapultCan(FlashMethod):
    name = "katapult-can"
    modes = CAN_MODES
    interfaces = ("can",)
    verifies = "read-back"
    pi_source = _pi_sources()

    def preflight(self, board: Board, entry: Mapping[str, Any]) -> str | None:
        if entry.get("mode") in ("can-klipper", "can-katapult"):
            return None
        return entry.get("reason") or f"CAN node {entry.get('uuid')} cannot be reached"

    def steps(self, board: Board, entry: Mapping[str, Any] | None, mcu_name: str, artifact: Artifact,
              options: Options) -> FlashPlan:
        assert entry is not None  # modes: the plan found it on the bus
        interface, uuid = entry["interface"], entry["uuid"]
        body = (EnsureIdle(), StopKlipper(), CanEnterKatapult(interface, uuid),
                KatapultCanWrite(interface, uuid, board.app_address, artifact.path, board.mcu))
        return FlashPlan(
            "flash", board.id,
            f"{board.id}: flash {artifact.identity.name} through Katapult over CAN at {board.app_address:#010x} "
            f"(node {uuid} on {interface})",
            method=self.name, port=entry["port"], steps=body,  # type: ignore[arg-type]
            finally_steps=(StartKlipper(),), verify_steps=(Verify(mcu_name, artifact.identity.version),),
            expected_version=artifact.identity.version, image_sha256=artifact.image.sha256,
        )
