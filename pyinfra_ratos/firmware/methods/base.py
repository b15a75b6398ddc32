"""The flash-method interface and its registry (see :mod:`pyinfra_ratos.firmware.methods`)."""


from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.steps import (
    Artifact, EnsureIdle, FlashPlan, RequestBootloader, StartKlipper, StopKlipper, Verify, WaitKlipper,
)

# catalog values without a registered method yet, and why a board using them is refused
UNSUPPORTED: dict[str, str] = {}
# attached-board modes no registered method writes from yet
UNSUPPORTED_MODES = {
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
    interfaces: ClassVar[tuple[str, ...]] = ()  # the catalog interfaces it reaches a board by; () = any
    verifies: ClassVar[str] = "read-back"  # read-back | bootloader-crc | version (what proves a write)
    # stdlib files appended to the agent, in order (its runner and what that needs), if any
    pi_source: ClassVar[str | tuple[str, ...] | None] = None

    def preflight(self, board: Board, entry: Mapping[str, Any]) -> str | None:
        """Why the board, as found on USB (``entry``), must not be written this way; None: go."""
        return None

    def steps(self, board: Board, entry: Mapping[str, Any] | None, mcu_name: str, artifact: Artifact,
              options: Options) -> FlashPlan:
        """The ``flash`` plan: its steps, expected version and the agent runner's name (``method``)."""
        raise NotImplementedError


def usb_preflight(board: Board, entry: Mapping[str, Any], found_as: str) -> str | None:
    """What every method writing a USB board through its bootloader checks first: the device runs
    (or is a bootloader for) the catalog's MCU, and a board running Klipper has a tty to be asked on.
    ``found_as``: how a device not running Klipper is named ("has a Katapult", ...)."""
    port, mode = entry.get("port"), entry.get("mode")
    if entry.get("mcu") and entry["mcu"] != board.mcu:
        what = "runs Klipper" if mode == "klipper" else found_as
        return (f"the device at USB port {port} {what} for MCU {entry['mcu']}, the catalog says {board.mcu}: "
                "wrong board id or port in the inventory")
    if mode == "klipper" and not entry.get("tty"):
        return f"the board at USB port {port} has no tty to send the bootloader request to"
    return None


def bootloader_plan(board: Board, entry: Mapping[str, Any], mcu_name: str, artifact: Artifact, options: Options,
                    method: str, wait: Any, write: Any, how: str) -> FlashPlan:
    """The plan of a USB board written in its bootloader: stop Klipper, send a board running
    Klipper to its bootloader (the 1200-baud request), ``wait`` for it there, ``write``, wait for
    Klipper on the same port; Klipper is started whatever happened, the MCU's version verified."""
    port = entry["port"]
    body: list[Any] = [EnsureIdle(), StopKlipper()]
    if entry.get("mode") == "klipper":
        body.append(RequestBootloader(entry["tty"], port))
    body += [wait, write, WaitKlipper(port, options.klipper_timeout)]
    return FlashPlan(
        "flash", board.id, f"{board.id}: flash {artifact.identity.name} {how} on USB port {port}",
        method=method, port=port, steps=tuple(body), finally_steps=(StartKlipper(),),
        verify_steps=(Verify(mcu_name, artifact.identity.version),),
        expected_version=artifact.identity.version, image_sha256=artifact.image.sha256,
    )


METHODS: dict[str, FlashMethod] = {}


def register(cls: type[FlashMethod]) -> type[FlashMethod]:
    """Class decorator: make a method available to every board whose catalog entry names it."""
    METHODS[cls.name] = cls()
    return cls


def usable(name: str, board: Board) -> bool:
    """A registered method that reaches the board by its interface (a USB-only method and a CAN board: no)."""
    method = METHODS.get(name)
    return method is not None and (not method.interfaces or board.interface in method.interfaces)


def unsupported_reason(name: str, board: Board | None = None) -> str | None:
    if name in METHODS:
        if board is None or usable(name, board):
            return None
        return f"flashing a {board.interface} board through {name} is not supported yet"
    return UNSUPPORTED.get(name, f"flash method {name!r} is unknown")


def method_for(board: Board, mode: str | None = None) -> FlashMethod | str:
    """The board's first usable method (that writes from ``mode``, the mode it was found in, when
    one does), or why none of its methods can write it."""
    for name in board.flash_methods:
        if usable(name, board) and mode is not None and mode in METHODS[name].modes:
            return METHODS[name]
    for name in board.flash_methods:
        if usable(name, board):
            return METHODS[name]
    return unsupported_reason(board.flash_methods[0], board) or "no flash method"


def mode_refusal(board: Board, entry: Mapping[str, Any], method: FlashMethod) -> str | None:
    """Why the attached device cannot be written by ``method`` in the mode it is in now."""
    mode, port = entry.get("mode"), entry.get("port")
    if mode in method.modes:
        return method.preflight(board, entry)
    if mode in UNSUPPORTED_MODES:
        return f"at USB port {port}: {UNSUPPORTED_MODES[mode]}"
    writers = sorted(m.name for m in METHODS.values() if mode in m.modes)
    if writers:
        return (f"the device at USB port {port} is in {mode} mode, which {', '.join(writers)} writes from, but the "
                f"catalog flashes {board.id} with {', '.join(board.flash_methods)}: is the board id right (a "
                "variant with that bootloader)?")
    return f"the device at USB port {port} is in an unknown mode ({entry.get('vid_pid')}): not flashing it"

