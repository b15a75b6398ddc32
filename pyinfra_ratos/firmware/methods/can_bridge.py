"""A USB-to-CAN bridge mainboard (Klipper's ``usb_canbus``, 1d50:606f): flashed over USB, after its toolboards.

A bridge has no tty: Klipper's 1200-baud request cannot reach it. It is itself a node on the bus it
carries, so the agent's runner (``can_bridge_pi.py``) sends it REQUEST_BOOTLOADER by its
``canbus_uuid`` on 0x3F0 (the bridge routes admin frames to its own node), the board resets (the
Pi's ``can0`` goes away with the gs_usb device) and comes back on the same USB port in its ROM DFU,
where it is written like any DfuSe board (a read of the old firmware kept, read back, ``:leave``),
or, when the catalog gives it Katapult (``usb.katapult``), as Katapult (1d50:6177) written through
the one Katapult client like any Katapult-over-USB board;
then the agent waits for 1d50:606f on that port and for the interface to come back up. Toolboards
behind it are flashed first (:func:`pyinfra_ratos.firmware.can.flash_order`): they are unreachable
while it resets. Verified by klippy's ``mcu_version`` like every board.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pyinfra_ratos.firmware import canbus
from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.methods.base import (
    FlashMethod,
    Options,
    bootloader_plan,
    register,
    usb_preflight,
)
from pyinfra_ratos.firmware.methods.dfu import capture_length, download_step
from pyinfra_ratos.firmware.methods.katapult import (
    KATAPULT_TIMEOUT_S,
    KatapultWrite,
    WaitKatapult,
)
from pyinfra_ratos.firmware.steps import (
    Artifact,
    FlashPlan,
    WaitDfu,
)

BRIDGE_USB_ID = "1d50:606f"
CAN_UP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class CanRequestBridgeBootloader:
    """REQUEST_BOOTLOADER to the bridge's own node on ``interface``; it resets off USB port ``port``."""

    interface: str
    uuid: str
    port: str


@dataclass(frozen=True)
class WaitCanUp:
    """The bridge back as 1d50:606f on its port and its CAN interface up again."""

    interface: str
    port: str
    timeout: float


@register
class CanBridge(FlashMethod):
    name = "can-bridge"
    modes = ("can-bridge", "dfu", "katapult")
    interfaces = ("usbcan",)
    verifies = "read-back"
    pi_source = (canbus.__file__, os.path.join(os.path.dirname(__file__), "can_bridge_pi.py"))

    def preflight(self, board: Board, entry: Mapping[str, Any]) -> str | None:
        if not entry.get("canbus_uuid"):
            return (f"{board.id} runs as a USB-to-CAN bridge: set its canbus_uuid in the inventory (the bridge "
                    "is asked for its bootloader over CAN)")
        candidates = entry.get("board_candidates") or ()
        if entry.get("mode") == "dfu" and candidates and board.id not in candidates:
            return f"the DFU device at USB port {entry.get('port')} looks like {', '.join(candidates)}, not {board.id}"
        return usb_preflight(board, entry, "is a bridge or a bootloader")

    def steps(self, board: Board, entry: Mapping[str, Any] | None, mcu_name: str, artifact: Artifact,
              options: Options) -> FlashPlan:
        assert entry is not None  # modes: the plan found it on USB
        port, interface = entry["port"], entry.get("can_interface") or "can0"
        if "katapult" in board.usb:  # Katapult as its USB bootloader: written through Katapult's protocol
            wait: Any = WaitKatapult(port, KATAPULT_TIMEOUT_S)
            write: Any = KatapultWrite(port, board.app_address, artifact.path, board.mcu, capture_length(board))
        else:
            wait = WaitDfu(port, options.dfu_timeout)
            write = download_step(options.backend, port, board.app_address, artifact.path, capture_length(board))
        # the shape of every USB board written in its bootloader, but asked over CAN (a bridge has no
        # tty) and done only once its CAN interface is back
        plan = bootloader_plan(board, entry, mcu_name, artifact, options, self.name, wait, write,
                               f"at {board.app_address:#010x} (USB-to-CAN bridge of {interface}, after its toolboards)")
        steps = list(plan.steps)
        if entry.get("mode") == "can-bridge":
            steps.insert(steps.index(wait), CanRequestBridgeBootloader(interface, entry["canbus_uuid"], port))
        steps.append(WaitCanUp(interface, port, CAN_UP_TIMEOUT_S))
        return replace(plan, steps=tuple(steps))
