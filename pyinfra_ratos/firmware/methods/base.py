"""The flash-method interface and its registry (see :mod:`pyinfra_ratos.firmware.methods`)."""


from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.steps import Artifact, FlashPlan

# catalog values without a registered method yet, and why a board using them is refused
UNSUPPORTED = {
    "katapult": "flashing through Katapult (CAN) is not supported yet",
    "rp2040": "RP2040 flashing (picoboot / UF2 copy) is not supported yet",
}
# attached-board modes no registered method writes from yet
UNSUPPORTED_MODES = {
    "katapult": "the board is in its Katapult bootloader: flashing through Katapult is not supported yet",
    "can-bridge": "the board runs as a USB-to-CAN bridge: flashing bridge boards is not supported yet",
    "rp2040-boot": "the board is in RP2040 BOOTSEL mode: RP2040 flashing is not supported yet",
}


@dataclass(frozen=True)
class Options:
    """The run's choices a method may read (``backend``: dfu-util or pyusb for DfuSe)."""

    backend: str = "dfu-util"
    dfu_timeout: float = 10.0
    klipper_timeout: float = 30.0


class FlashMethod:
    """A way of writing a board (see the module docstring)."""

    name: ClassVar[str]  # the catalog's value (``flash_methods``)
    modes: ClassVar[tuple[str, ...]] = ()  # AttachedBoards modes it writes from; () = not on USB
    verifies: ClassVar[str] = "read-back"  # read-back | bootloader-crc | version (what proves a write)
    pi_source: ClassVar[str | None] = None  # a stdlib file appended to the agent (its runner), if any

    def preflight(self, board: Board, entry: Mapping[str, Any]) -> str | None:
        """Why the board, as found on USB (``entry``), must not be written this way; None: go."""
        return None

    def steps(self, board: Board, entry: Mapping[str, Any] | None, mcu_name: str, artifact: Artifact,
              options: Options) -> FlashPlan:
        """The ``flash`` plan: its steps, expected version and the agent runner's name (``method``)."""
        raise NotImplementedError


METHODS: dict[str, FlashMethod] = {}


def register(cls: type[FlashMethod]) -> type[FlashMethod]:
    """Class decorator: make a method available to every board whose catalog entry names it."""
    METHODS[cls.name] = cls()
    return cls


def unsupported_reason(name: str) -> str | None:
    return None if name in METHODS else UNSUPPORTED.get(name, f"flash method {name!r} is unknown")


def method_for(board: Board) -> FlashMethod | str:
    """The board's first registered method, or why none of its methods can write it."""
    for name in board.flash_methods:
        if name in METHODS:
            return METHODS[name]
    return unsupported_reason(board.flash_methods[0]) or "no flash method"


def mode_refusal(board: Board, entry: Mapping[str, Any], method: FlashMethod) -> str | None:
    """Why the attached device cannot be written by ``method`` in the mode it is in now."""
    mode, port = entry.get("mode"), entry.get("port")
    if mode in method.modes:
        return method.preflight(board, entry)
    if mode in UNSUPPORTED_MODES:
        return f"at USB port {port}: {UNSUPPORTED_MODES[mode]}"
    return f"the device at USB port {port} is in an unknown mode ({entry.get('vid_pid')}): not flashing it"

