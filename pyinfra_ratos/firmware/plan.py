"""The flash plan: from facts and a built artifact, decide to skip, refuse or flash a board, and how.

Every safety rule of design.md section 3 that can be decided without touching the Pi is decided
here, so an operation only turns a plan's steps into commands. Inputs are the plain fact shapes
(``AttachedBoards``, ``McuFirmware`` mcus entry, ``PrinterActivity``), read as mappings so this
module needs neither pyinfra nor the fact modules. Pure Python.

How an operation runs a ``flash`` plan::

    for step in plan.steps: run(step)              # stop at the first failure
    finally (once StopKlipper ran): for step in plan.finally_steps: run(step)
    if every step succeeded: for step in plan.verify_steps: run(step)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Union

from pyinfra_ratos.firmware import agent as flash_agent
from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.dfu.memory import parse_memory_map
from pyinfra_ratos.firmware.image import ImageInfo, check_image_for_board
from pyinfra_ratos.firmware.identity import FirmwareIdentity, config_sha256
from pyinfra_ratos.firmware.kconfig import application_address, derived_problems, parse_config

BACKENDS = ("dfu-util", "pyusb")
# the venv holding pyusb and pyinfra_ratos.firmware.dfu on the Pi, relative to the SSH user's home
DFU_CLIENT_VENV = ".local/share/pyinfra-ratos/venv"
LINUX_MCU_BINARY = "/usr/local/bin/klipper_mcu"
LINUX_MCU_SERVICE = "klipper-mcu"

# attached-board modes we can flash from, and the ones we know but cannot flash yet
_NOT_SUPPORTED_MODES = {
    "katapult": "the board is in its Katapult bootloader: flashing through Katapult is not supported yet",
    "can-bridge": "the board runs as a USB-to-CAN bridge: flashing bridge boards is not supported yet",
    "rp2040-boot": "the board is in RP2040 BOOTSEL mode: RP2040 flashing is not supported yet",
}
_NOT_SUPPORTED_METHODS = {
    "katapult": "flashing through Katapult (CAN) is not supported yet",
    "rp2040": "RP2040 flashing (picoboot / UF2 copy) is not supported yet",
}


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
    method: str | None = None        # "dfu-util" | "pyusb" | "linux" when flashing
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

    @property
    def skip(self) -> bool:
        return self.action == "skip"

    @property
    def refused(self) -> bool:
        return self.action == "refuse"


def _refuse(board: Board, reason: str, **extra: Any) -> FlashPlan:
    return FlashPlan("refuse", board.id, f"{board.id}: {reason}", **extra)


# ---------------------------------------------------------------- finding the board on USB

def locate_board(board: Board, attached: Mapping[str, Mapping[str, Any]],
                 port: str | None = None) -> tuple[Mapping[str, Any] | None, str | None]:
    """(the AttachedBoards entry of ``board``, None) or (None, why it cannot be chosen).

    A board is found by its RatOS serial (board id). One that lost it (in DFU, or built with
    the chip-id serial) is taken only when it is the only device that can be that board:
    two boards of one model must be told apart by pinning ``port`` in the inventory.
    """
    if port is not None:
        entry = attached.get(port)
        if entry is None:
            return None, f"nothing is attached at USB port {port}"
        return entry, None
    named = sorted(p for p, entry in attached.items() if entry.get("board_id") == board.id)
    if len(named) > 1:
        return None, (f"ambiguous: several USB devices report board id {board.id} (ports "
                      f"{', '.join(named)}); pin the port of each board in the inventory")
    if named:
        return attached[named[0]], None
    loose = sorted(p for p, entry in attached.items()
                   if not entry.get("board_id") and board.id in (entry.get("board_candidates") or ()))
    if len(loose) > 1:
        return None, (f"ambiguous: devices at ports {', '.join(loose)} could each be {board.id}; "
                      "pin the board's USB port in the inventory")
    if loose:
        return attached[loose[0]], None
    return None, "not found on USB (not attached, unpowered, or running firmware without its RatOS serial)"


# ---------------------------------------------------------------- decisions

def _is_busy(activity: Mapping[str, Any]) -> bool:
    # an empty or unreadable state is never taken as idle (design.md rule 1)
    return bool(activity.get("busy", True))


def _runs_identity(mcu: Mapping[str, Any] | None, artifact: Artifact) -> bool:
    """The MCU runs this build: same version and the same constants as the image's dictionary.

    The constants carry the build's config (MCU, clock, crystal, CAN speed), so a config change
    at the same Klipper version is still flashed. No constants reported = not proven = flash.
    """
    if not mcu or not mcu.get("connected"):
        return False
    constants = mcu.get("constants") or {}
    if mcu.get("version") != artifact.identity.version or not constants:
        return False
    image = {key: str(value) for key, value in artifact.image.config.items()}
    return {key: str(value) for key, value in constants.items()} == image


def _artifact_problems(board: Board, artifact: Artifact) -> list[str]:
    resolved = parse_config(artifact.resolved_config)
    # the application address comes from the config the image was built with, never from a guess
    problems = check_image_for_board(artifact.image, board, application_address(resolved))
    if artifact.identity.board != board.id:
        problems.append(f"board {board.id}: artifact {artifact.identity.name} was built for board "
                        f"{artifact.identity.board}")
    if artifact.image.version is not None and artifact.image.version != artifact.identity.version:
        problems.append(f"board {board.id}: the image reports version {artifact.image.version} but its "
                        f"identity says {artifact.identity.version} (stale or swapped file)")
    if config_sha256(artifact.resolved_config) != artifact.identity.config_sha256:
        problems.append(f"board {board.id}: the artifact's config does not hash to its identity "
                        f"{artifact.identity.name} (a file was replaced)")
    problems += [f"board {board.id}: artifact config: {problem}" for problem in derived_problems(board, resolved)
                 if problem.symbol != "FLASH_APPLICATION_ADDRESS"]  # said above, with the image
    if not board.firmware_file.endswith("." + artifact.image.kind):
        problems.append(f"board {board.id}: flashes {board.firmware_file}, the artifact is a .{artifact.image.kind}")
    return problems


def _method(board: Board) -> str:
    """The first flash method of the board we implement; the board's first method otherwise."""
    for method in board.flash_methods:
        if method in ("dfu", "linux"):
            return method
    return board.flash_methods[0]


def _linux_steps(board: Board, mcu_name: str, artifact: Artifact) -> FlashPlan:
    # klippy loses the host MCU while it restarts, so Klipper is stopped around it
    return FlashPlan(
        "flash", board.id, f"{board.id}: install {artifact.identity.name} as {LINUX_MCU_BINARY}",
        method="linux",
        steps=(EnsureIdle(), StopKlipper(), InstallBinary(artifact.path, LINUX_MCU_BINARY),
               RestartService(LINUX_MCU_SERVICE)),
        finally_steps=(StartKlipper(),),
        verify_steps=(Verify(mcu_name, artifact.identity.version),),
        expected_version=artifact.identity.version, image_sha256=artifact.image.sha256,
    )


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


def _dfu_steps(board: Board, entry: Mapping[str, Any], mcu_name: str, artifact: Artifact,
               backend: str, dfu_timeout: float, klipper_timeout: float) -> FlashPlan:
    port = entry["port"]
    body: list[Step] = [EnsureIdle(), StopKlipper()]
    if entry.get("mode") == "klipper":
        body.append(RequestBootloader(entry["tty"], port))
    body += [
        WaitDfu(port, dfu_timeout),
        download_step(backend, port, board.app_address, artifact.path, capture_length(board)),
        WaitKlipper(port, klipper_timeout),
    ]
    return FlashPlan(
        "flash", board.id,
        f"{board.id}: flash {artifact.identity.name} at {board.app_address:#010x} on USB port {port}",
        method=backend, port=port, steps=tuple(body), finally_steps=(StartKlipper(),),
        verify_steps=(Verify(mcu_name, artifact.identity.version),),
        expected_version=artifact.identity.version, image_sha256=artifact.image.sha256,
    )


def _usb_refusal(board: Board, entry: Mapping[str, Any]) -> str | None:
    mode, port = entry.get("mode"), entry.get("port")
    if mode in _NOT_SUPPORTED_MODES:
        return f"at USB port {port}: {_NOT_SUPPORTED_MODES[mode]}"
    if mode not in ("klipper", "dfu"):
        return f"the device at USB port {port} is in an unknown mode ({entry.get('vid_pid')}): not flashing it"
    if mode == "klipper" and entry.get("mcu") and entry["mcu"] != board.mcu:
        return (f"the device at USB port {port} runs Klipper for MCU {entry['mcu']}, the catalog says "
                f"{board.mcu}: wrong board id or port in the inventory")
    candidates = entry.get("board_candidates") or ()
    if mode == "dfu" and candidates and board.id not in candidates:
        return f"the DFU device at USB port {port} looks like {', '.join(candidates)}, not {board.id}"
    if mode == "klipper" and not entry.get("tty"):
        return f"the board at USB port {port} has no tty to send the bootloader request to"
    return None


def plan_flash(
    board: Board,
    attached: Mapping[str, Mapping[str, Any]],
    mcu: Mapping[str, Any] | None,
    activity: Mapping[str, Any],
    artifact: Artifact,
    *,
    mcu_name: str = "mcu",
    port: str | None = None,
    attended_flash: bool = False,
    backend: str = "dfu-util",
    dfu_timeout: float = 10.0,
    klipper_timeout: float = 30.0,
) -> FlashPlan:
    """Decide what to do with one board.

    + board: the catalog board
    + attached: the ``AttachedBoards`` fact (all USB devices of the Pi, by port)
    + mcu: the ``McuFirmware`` fact's ``mcus[mcu_name]`` entry, None when Klipper does not know it
    + activity: the ``PrinterActivity`` fact
    + artifact: the built firmware to flash
    + port: the board's USB port when the inventory pins it (needed for two boards of one model)
    + attended_flash: the operator's per-run flag for boards never flashed unattended
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown flash backend {backend!r}; use one of {', '.join(BACKENDS)}")
    before = (mcu or {}).get("version") or None
    # 1. the artifact itself must fit the board (rule 3): a wrong image is a pipeline bug
    problems = _artifact_problems(board, artifact)
    if problems:
        return _refuse(board, "image does not fit the board: " + "; ".join(problems), before_version=before)
    # 2. nothing to do: skipping disturbs nothing, so it needs no other check
    if _runs_identity(mcu, artifact):
        return FlashPlan("skip", board.id, f"{board.id}: already runs {artifact.identity.version} "
                         f"(identity {artifact.identity.name})", before_version=before,
                         expected_version=artifact.identity.version)
    method = _method(board)
    if method in _NOT_SUPPORTED_METHODS:
        return _refuse(board, _NOT_SUPPORTED_METHODS[method], before_version=before)
    # 3. where is it (rule 6: a USB board is always addressed by its port)
    entry = None
    if method == "dfu":
        entry, missing = locate_board(board, attached, port)
        if entry is None:
            preferred = board.flash_methods[0]
            if preferred in _NOT_SUPPORTED_METHODS:
                # e.g. a CAN toolboard: normally reached through Katapult, on USB only in DFU
                missing = f"{_NOT_SUPPORTED_METHODS[preferred]} (and it is not in DFU on USB: {missing})"
            return _refuse(board, missing or "not found", before_version=before)
        refusal = _usb_refusal(board, entry)
        if refusal:
            return _refuse(board, refusal, before_version=before, port=entry.get("port"))
    # 4. heaters on in DFU (rule 2)
    if not board.unattended_flash and not attended_flash:
        return _refuse(board, f"never flashed unattended: {board.unattended_reason}. Run again with the "
                       "attended-flash flag while someone watches the printer", before_version=before, hold=True)
    # 5. the printer is busy or its state unknown (rule 1; EnsureIdle re-checks it later)
    if _is_busy(activity):
        state = activity.get("print_state") or activity.get("idle_state") or "unknown (Moonraker did not answer)"
        return _refuse(board, f"printer is busy ({state}): not stopping Klipper", before_version=before, hold=True)
    if entry is None:
        plan = _linux_steps(board, mcu_name, artifact)
    else:
        plan = _dfu_steps(board, entry, mcu_name, artifact, backend, dfu_timeout, klipper_timeout)
    return replace(plan, before_version=before)


# ---------------------------------------------------------------- reading dfu-util's answer
# Defined in the agent, which runs it on the Pi after the download; re-exported for planners.
judge_dfu_result = flash_agent.judge_dfu_result
