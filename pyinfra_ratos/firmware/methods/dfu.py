"""DfuSe: an STM32 board written in its ROM DFU bootloader, with dfu-util or the pyusb client.

From Klipper, Klipper's own 1200-baud request sends the board to its bootloader; in DFU it is
written at the catalog's application address, selected by USB port (never by the first DFU device
found). The agent keeps a read of what the board ran before writing over it, reads every write
back and compares it (both backends), and waits for the board to come back as Klipper on the same
port. The backend (``dfu-util`` or ``pyusb``) is the run's choice (host data ``flash_backend``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.dfu.memory import parse_memory_map
from pyinfra_ratos.firmware.methods.base import FlashMethod, Options, bootloader_plan, register, usb_preflight
from pyinfra_ratos.firmware.steps import BACKENDS, Artifact, DfuDownload, FlashPlan, PyusbDownload, Step, WaitDfu


def capture_length(board: Board) -> int:
    """Bytes from the application address to the end of the board's flash: what a rollback may
    have to write back (0 when the catalog has no DFU map for it)."""
    if not board.dfu_flash_map:
        return 0
    try:
        memory = parse_memory_map(board.dfu_flash_map)
    except ValueError:
        return 0
    return max(0, memory.end - board.app_address)


def download_step(backend: str, port: str, address: int, image: str, capture: int = 0) -> Step:
    """The step writing ``image`` at ``address`` on the DFU device at ``port``, with ``backend``,
    after keeping ``capture`` bytes of what the board ran (the agent reads them back first).

    The pyusb client never erases below the application address: the bootloader stays.
    """
    if backend == "pyusb":
        return PyusbDownload(port=port, address=address, image=image, protect_below=address, capture_length=capture)
    return DfuDownload(port=port, address=address, image=image, capture_length=capture)


def with_backend(plan: FlashPlan, backend: str) -> FlashPlan:
    """The same plan, downloading with ``backend``; plans that write nothing over DFU are unchanged."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown flash backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if plan.action != "flash" or plan.method not in BACKENDS or plan.method == backend:
        return plan
    steps = tuple(download_step(backend, step.port, step.address, step.image, step.capture_length)
                  if isinstance(step, (DfuDownload, PyusbDownload)) else step for step in plan.steps)
    return replace(plan, method=backend, steps=steps)


@register
class DfuSe(FlashMethod):
    name = "dfu"
    modes = ("klipper", "dfu")
    verifies = "read-back"

    def preflight(self, board: Board, entry: Mapping[str, Any]) -> str | None:
        candidates = entry.get("board_candidates") or ()
        if entry.get("mode") == "dfu" and candidates and board.id not in candidates:
            return f"the DFU device at USB port {entry.get('port')} looks like {', '.join(candidates)}, not {board.id}"
        return usb_preflight(board, entry, "is in DFU")

    def steps(self, board: Board, entry: Mapping[str, Any] | None, mcu_name: str, artifact: Artifact,
              options: Options) -> FlashPlan:
        assert entry is not None  # modes: the plan found it on USB
        port = entry["port"]
        return bootloader_plan(
            board, entry, mcu_name, artifact, options, options.backend, WaitDfu(port, options.dfu_timeout),
            download_step(options.backend, port, board.app_address, artifact.path, capture_length(board)),
            f"at {board.app_address:#010x}")
