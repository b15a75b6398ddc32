"""What a flash plan is made of: the steps the printer agent runs, the plan, the artifact. Pure data.

Shared by the decision (:mod:`pyinfra_ratos.firmware.plan`) and the flash methods
(:mod:`pyinfra_ratos.firmware.methods`), which build a plan's steps; the operations turn a plan into
the agent's JSON (``{"step": <class name>, **fields}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from pyinfra_ratos.firmware.identity import FirmwareIdentity
from pyinfra_ratos.firmware.image import ImageInfo

BACKENDS = ("dfu-util", "pyusb")
# the venv holding pyusb and the pyusb clients (pyinfra_ratos.firmware.dfu, .picoboot) on the Pi,
# relative to the SSH user's home
DFU_CLIENT_VENV = ".local/share/pyinfra-ratos/venv"
LINUX_MCU_BINARY = "/usr/local/bin/klipper_mcu"
LINUX_MCU_SERVICE = "klipper-mcu"


# ---------------------------------------------------------------- steps (data for the operation)

@dataclass(frozen=True)
class EnsureIdle:
    """Re-read the printer state right before the first disruptive command; abort if busy."""


@dataclass(frozen=True)
class StopKlipper:
    pass


@dataclass(frozen=True)
class StartKlipper:
    pass


@dataclass(frozen=True)
class RequestBootloader:
    """Klipper's 1200-baud request on the board's tty: it reboots into its bootloader."""

    tty: str
    port: str


@dataclass(frozen=True)
class WaitDfu:
    port: str
    timeout: float


@dataclass(frozen=True)
class DfuDownload:
    """``dfu-util -p PORT -a ALT -s ADDRESS[:leave] -D IMAGE``; the port always selects the device."""

    port: str
    address: int
    image: str
    alt: int = 0
    leave: bool = True
    capture_length: int = 0  # bytes from ``address`` read first and kept, to restore on a rollback


@dataclass(frozen=True)
class PyusbDownload:
    """``python -m pyinfra_ratos.firmware.dfu flash`` from the venv ``venv`` (relative to the SSH user's home).

    Erases only sectors at or above ``protect_below``, reads the flash back and compares it
    before leaving DFU: a bad write leaves the board in DFU instead of booting it.
    """

    port: str
    address: int
    image: str
    protect_below: int
    venv: str = DFU_CLIENT_VENV
    capture_length: int = 0  # bytes from ``address`` read first and kept, to restore on a rollback


@dataclass(frozen=True)
class WaitKlipper:
    """Wait for the board to come back as Klipper on the same USB port."""

    port: str
    timeout: float


@dataclass(frozen=True)
class InstallBinary:
    source: str
    dest: str


@dataclass(frozen=True)
class RestartService:
    name: str


@dataclass(frozen=True)
class Verify:
    """Klipper reports this exact version for the MCU (Moonraker ``mcu_version``)."""

    mcu_name: str
    version: str


Step = Union[EnsureIdle, StopKlipper, StartKlipper, RequestBootloader, WaitDfu, DfuDownload,
             PyusbDownload, WaitKlipper, InstallBinary, RestartService, Verify]


# ---------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Artifact:
    """A built firmware on the Pi: its identity, the decoded image, the file's path, and the resolved
    config stored with it (the artifact's ``config`` file): the only exact record of where a
    ``.bin`` is linked, so it is always required.
    """

    identity: FirmwareIdentity
    image: ImageInfo
    path: str
    resolved_config: str


@dataclass(frozen=True)
class FlashPlan:
    action: str                      # "skip" | "refuse" | "flash"
    board_id: str
    reason: str
    method: str | None = None        # the agent runner's name when flashing: a DfuSe backend or a method
    port: str | None = None
    steps: tuple[Step, ...] = ()
    finally_steps: tuple[Step, ...] = ()
    verify_steps: tuple[Step, ...] = ()
    expected_version: str | None = None
    before_version: str | None = None
    image_sha256: str | None = None  # the agent re-checks the shipped file right before writing it
    # a refusal by policy (busy printer, board never flashed unattended): the printer is
    # reported as skipped with the reason, not failed; nothing is wrong with it
    hold: bool = False
    # the artifact goes to the Pi although nothing writes it (someone flashes it by hand)
    ship: bool = False
    # what a person must do, step by step, when no tool writes the board
    procedure: tuple[str, ...] = ()

    @property
    def needs_client(self) -> bool:
        """A step runs a client of the pyusb venv on the Pi (``operations.firmware.dfu_client``)."""
        return any(hasattr(step, "venv") for step in self.steps)

    @property
    def skip(self) -> bool:
        return self.action == "skip"

    @property
    def refused(self) -> bool:
        return self.action == "refuse"
