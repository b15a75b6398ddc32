"""
Ship built firmware to a Pi and flash its boards, one board at a time, never while printing.

These operations turn a decision into commands: the decision itself (skip, refuse, or the flash
steps) is :func:`pyinfra_ratos.flash_plan.plan_flash`, made from facts read once per host (pyinfra
runs an operation's body twice, so reading facts inside would double every round trip). The
deploy :mod:`pyinfra_ratos.deploys.firmware` does all of it for every board of every host.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationError, QuoteString, StringCommand, operation

from pyinfra_ratos import flash_agent
from pyinfra_ratos.builder import BuiltArtifact
from pyinfra_ratos.flash_plan import FlashPlan

# relative to the SSH user's home: sftp paths and the agent's image paths resolve against it
ARTIFACTS_DIR = "printer_data/firmware"
_AGENT_SOURCE = Path(flash_agent.__file__).read_text(encoding="utf-8")


def artifact_path(artifact: BuiltArtifact, name: str | None = None) -> str:
    """Where a file of the artifact lives on the Pi, relative to the SSH user's home."""
    return f"{ARTIFACTS_DIR}/{artifact.identity.name}/{name or artifact.firmware_file}"


def _tarball(artifact: BuiltArtifact) -> str:
    """The artifact directory as one tar file next to it (made once): one upload per Pi."""
    path = artifact.directory.with_name(artifact.directory.name + ".tar")
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        with tarfile.open(partial, "w") as tar:
            for name in artifact.files():
                tar.add(artifact.directory / name, arcname=name)
        os.replace(partial, path)
    return str(path)


def fail(reason: str) -> StringCommand:
    """A command that fails this host alone, saying why (an exception would stop every host)."""
    return StringCommand("echo", QuoteString(reason), ">&2", "&&", "exit", "1")


@operation()
def refuse(reason: str):
    """
    Fail this host alone, before anything changes on it, saying why.

    + reason: what is wrong and how to fix it

    pyinfra stops every host when an operation raises, so a printer-specific problem found while
    planning (a build that cannot be made for it, a checkout in a state that would brick nothing
    but match nothing) is a command that fails instead.

    **Example:**

    .. code:: python

        firmware.refuse(name="Firmware", reason="cannot tell which Klipper the Pi runs")
    """
    yield fail(reason)


@operation()
def upload(artifact: BuiltArtifact, present: Mapping[str, Any] | None = None):
    """
    Put a built firmware artifact into ``~/printer_data/firmware/<identity>/`` on the Pi.

    + artifact: the artifact built on the controller (:class:`pyinfra_ratos.builder.BuiltArtifact`)
    + present: the Pi's ``FirmwareArtifacts`` entry for this identity, if any

    Nothing happens when the Pi already holds every file with the same sha256. Otherwise the
    artifact travels as one tar file, is unpacked into a staging directory, checked against its
    manifest's sha256 sums and only then renamed to its identity: a half-copied artifact never
    carries an identity's name.

    **Example:**

    .. code:: python

        firmware.upload(
            name="Ship the H723 firmware",
            artifact=builder.build(commit, board, fragment),
            present=host.get_fact(FirmwareArtifacts).get(identity_name),
        )
    """
    manifest = json.loads((artifact.directory / "identity.json").read_text(encoding="utf-8"))
    wanted = manifest["files"]
    have = {name: entry.get("sha256") for name, entry in ((present or {}).get("files") or {}).items()}
    if all(have.get(name) == sha for name, sha in wanted.items() if name != "identity.json"):
        host.noop(f"firmware {artifact.identity.name} is already on the Pi")
        return
    final = f"{ARTIFACTS_DIR}/{artifact.identity.name}"
    staging = f"{ARTIFACTS_DIR}/.incoming-{artifact.identity.name}"
    tar_remote = f"{staging}.tar"
    yield StringCommand("mkdir", "-p", QuoteString(ARTIFACTS_DIR))
    yield FileUploadCommand(_tarball(artifact), tar_remote)
    sums = [QuoteString(f"{sha}  {name}") for name, sha in sorted(wanted.items())]
    yield StringCommand(
        "rm", "-rf", QuoteString(staging), "&&", "mkdir", "-p", QuoteString(staging),
        "&&", "tar", "-xf", QuoteString(tar_remote), "-C", QuoteString(staging),
        "&&", "rm", "-f", QuoteString(tar_remote),
        "&&", "(", "cd", QuoteString(staging), "&&", "printf", "'%s\\n'", *sums,
        "|", "sha256sum", "--quiet", "--strict", "-c", "-", ")",
        "&&", "rm", "-rf", QuoteString(final), "&&", "mv", QuoteString(staging), QuoteString(final),
    )


def _step(step: Any) -> dict[str, Any]:
    return {"step": type(step).__name__, **dataclasses.asdict(step)}


def agent_plan(plan: FlashPlan, mcu_name: str, moonraker_url: str) -> dict[str, Any]:
    """The JSON the flash agent runs (see :mod:`pyinfra_ratos.flash_agent`)."""
    return {
        "board": plan.board_id,
        "mcu_name": mcu_name,
        "method": plan.method,
        "port": plan.port,
        "expected_version": plan.expected_version,
        "before_version": plan.before_version,
        "moonraker": moonraker_url,
        "steps": [_step(step) for step in plan.steps],
        "finally_steps": [_step(step) for step in plan.finally_steps],
        "verify_steps": [_step(step) for step in plan.verify_steps],
    }


@operation()
def flash(plan: FlashPlan, mcu_name: str = "mcu", moonraker_url: str = "http://127.0.0.1:7125"):
    """
    Carry out a board's flash plan on the Pi: skip, refuse, or flash and verify.

    + plan: the board's :class:`pyinfra_ratos.flash_plan.FlashPlan` (``plan_flash`` on facts)
    + mcu_name: Klipper's name for the board's MCU (``mcu``, ``toolboard_t0``...), for verification
    + moonraker_url: Moonraker as seen from the Pi

    A skip yields nothing (``host.noop`` says why). A refusal by policy (printer busy, a board that
    is never flashed unattended) is reported the same way; any other refusal (an image that does
    not fit the board, a board not found) fails this host alone, before any command touches it.
    A flash runs the flash agent on the Pi as root: it re-checks that the printer is idle right
    before stopping Klipper, requests the bootloader, flashes by USB port, judges dfu-util by its
    output and by the board coming back, restarts Klipper on every exit path and verifies the
    version through Moonraker; its last line is the board's result record
    (``RATOS-RESULT {...}``).

    **Example:**

    .. code:: python

        firmware.flash(
            name="Flash the mainboard",
            plan=plan_flash(board, audit["boards"], mcu, audit["activity"], artifact),
        )
    """
    if plan.action == "skip" or (plan.action == "refuse" and plan.hold):
        host.noop(plan.reason)
        return
    if plan.action == "refuse":
        yield fail(f"not flashing: {plan.reason}")
        return
    if plan.action != "flash":
        raise OperationError(f"unknown flash plan action {plan.action!r}")
    payload = json.dumps(agent_plan(plan, mcu_name, moonraker_url), sort_keys=True)
    # "$HOME" is the SSH user's (expanded before sudo): the agent finds the artifact under it
    yield StringCommand(
        "sudo", "-n", "python3", "-c", QuoteString(_AGENT_SOURCE), QuoteString(payload), '"$HOME"',
    )
