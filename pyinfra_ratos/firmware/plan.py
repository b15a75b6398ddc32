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

import functools
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pyinfra_ratos.firmware import agent as flash_agent
from pyinfra_ratos.firmware.can import bitrate_problem
from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.identity import config_sha256
from pyinfra_ratos.firmware.image import check_image_for_board
from pyinfra_ratos.firmware.kconfig import application_address, derived_problems, parse_config
from pyinfra_ratos.firmware.methods import Options, method_for, mode_refusal, unsupported_reason
from pyinfra_ratos.firmware.methods.dfu import capture_length, download_step, with_backend  # noqa: F401
from pyinfra_ratos.firmware.steps import (  # noqa: F401 - the plan's vocabulary, re-exported
    BACKENDS, DFU_CLIENT_VENV, LINUX_MCU_BINARY, LINUX_MCU_SERVICE, Artifact, DfuDownload, EnsureIdle,
    FlashPlan, InstallBinary, PyusbDownload, RequestBootloader, RestartService, StartKlipper, Step,
    StopKlipper, Verify, WaitDfu, WaitKlipper,
)

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


@functools.lru_cache(maxsize=32)
def _resolved(config_text: str) -> Mapping[str, str]:
    """An artifact's config parsed once per process: every printer with that board checks the
    same artifact (read only here)."""
    return parse_config(config_text)


def _artifact_problems(board: Board, artifact: Artifact, host_arch: str | None = None) -> list[str]:
    resolved = dict(_resolved(artifact.resolved_config))
    # the application address comes from the config the image was built with, never from a guess
    problems = check_image_for_board(artifact.image, board, application_address(resolved), host_arch)
    if board.interface == "linux" and host_arch and artifact.identity.target != host_arch:
        problems.append(f"board {board.id}: artifact {artifact.identity.name} was built for "
                        f"{artifact.identity.target or 'an unnamed architecture'}, the Pi runs {host_arch}")
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
    host_arch: str | None = None,
    canbus_uuid: str | None = None,
    can_interface: str = "can0",
) -> FlashPlan:
    """Decide what to do with one board.

    + board: the catalog board
    + attached: the ``AttachedBoards`` fact (all USB devices of the Pi, by port)
    + mcu: the ``McuFirmware`` fact's ``mcus[mcu_name]`` entry, None when Klipper does not know it
    + activity: the ``PrinterActivity`` fact
    + artifact: the built firmware to flash
    + port: the board's USB port when the inventory pins it (needed for two boards of one model)
    + attended_flash: the operator's per-run flag for boards never flashed unattended
    + host_arch: the Pi's userland architecture (``KlipperHost`` ``arch``): a host MCU's ELF must run on it
    + canbus_uuid: the board's CAN node (a CAN toolboard is found by it in ``attached``, under
      ``<can_interface>/<uuid>``, see :func:`pyinfra_ratos.firmware.can.can_attached`; a USB-to-CAN
      bridge is asked for its bootloader by it)
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown flash backend {backend!r}; use one of {', '.join(BACKENDS)}")
    before = (mcu or {}).get("version") or None
    # 1. the artifact itself must fit the board (rule 3): a wrong image is a pipeline bug
    problems = _artifact_problems(board, artifact, host_arch)
    if problems:
        return _refuse(board, "image does not fit the board: " + "; ".join(problems), before_version=before)
    # a CAN toolboard is where its node is: <interface>/<uuid>
    if board.interface == "can" and port is None:
        if not canbus_uuid:
            return _refuse(board, "a CAN board is found on its bus by its UUID: set its canbus_uuid in the inventory",
                           before_version=before)
        port = f"{can_interface}/{canbus_uuid}"
    # 2. nothing to do: skipping disturbs nothing, so it needs no other check
    if _runs_identity(mcu, artifact):
        return FlashPlan("skip", board.id, f"{board.id}: already runs {artifact.identity.version} "
                         f"(identity {artifact.identity.name})", before_version=before,
                         expected_version=artifact.identity.version, port=port if board.interface == "can" else None)
    method = method_for(board)
    if isinstance(method, str):
        return _refuse(board, method, before_version=before)
    # 3. where is it (rule 6: a USB board is always addressed by its port)
    entry = None
    if method.modes:
        entry, missing = locate_board(board, attached, port)
        if entry is None:
            later = unsupported_reason(board.flash_methods[0], board)
            if later:  # e.g. a CAN toolboard: normally reached through Katapult, on USB only in DFU
                missing = f"{later} (and it is not on USB as {method.name} needs: {missing})"
            return _refuse(board, missing or "not found", before_version=before)
        found = method_for(board, entry.get("mode"))  # e.g. a Katapult board left in ROM DFU: dfu
        method = method if isinstance(found, str) else found
        if canbus_uuid:
            entry = {**entry, "canbus_uuid": canbus_uuid, "can_interface": can_interface}
        wrong_speed = bitrate_problem(entry, artifact.image.config) if board.interface == "can" else None
        if wrong_speed:
            return _refuse(board, wrong_speed, before_version=before, port=entry.get("port"))
        refusal = mode_refusal(board, entry, method)
        if refusal:
            return _refuse(board, refusal, before_version=before, port=entry.get("port"))
    # 4. heaters on in DFU (rule 2)
    if not board.unattended_flash and not attended_flash:
        return _refuse(board, f"never flashed unattended: {board.unattended_reason}. Run again with the "
                       "attended-flash flag while someone watches the printer", before_version=before, hold=True)
    # 5. the printer is busy or its state unknown (rule 1; the agent re-checks it later)
    if _is_busy(activity):
        state = activity.get("print_state") or activity.get("idle_state") or "unknown (Moonraker did not answer)"
        return _refuse(board, f"printer is busy ({state}): not stopping Klipper", before_version=before, hold=True)
    plan = method.steps(board, entry, mcu_name, artifact,
                        Options(backend=backend, dfu_timeout=dfu_timeout, klipper_timeout=klipper_timeout))
    return replace(plan, before_version=before)


# ---------------------------------------------------------------- reading dfu-util's answer
# Defined in the agent, which runs it on the Pi after the download; re-exported for planners.
judge_dfu_result = flash_agent.judge_dfu_result
