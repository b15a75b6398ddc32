"""
Converge the firmware of every board of every host: build once per identity, flash what differs.

.. code:: sh

    pyinfra -y INVENTORY deploys/firmware.py
    pyinfra -y INVENTORY deploys/firmware.py --data attended_flash=true   # someone is watching

Per host it reads the Pi in one SSH command (``FleetAudit``; ``FirmwareArtifacts`` too when a
board is to be flashed), builds on the controller what its boards need (each identity once per run,
from ``klipper_source`` at the commit the Pi runs), ships an artifact only to a Pi that lacks it,
and flashes each board whose MCU does not run its identity yet, unless the printer is busy or the
board must never be flashed unattended. With ``flash_backend = "pyusb"`` the pyusb DFU client is installed on a Pi before its
first flash (one more SSH command to check it, on a Pi with something to flash). Inventory keys:
see :mod:`pyinfra_ratos.firmware.settings`. A converged host yields no command (a
board already on its identity adds no flash operation).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import python

from pyinfra_ratos.run import results
from pyinfra_ratos.printer import gate
from pyinfra_ratos.firmware.builder import BuildError, BuiltArtifact, shared_builder
from pyinfra_ratos.firmware.can import can_attached, flash_order
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.run.connection import tune as tune_connection
from pyinfra_ratos.deploys import executed_by_pyinfra, left_alone
from pyinfra_ratos.facts.audit import FleetAudit, FleetAuditDict
from pyinfra_ratos.facts.firmware import FirmwareArtifacts
from pyinfra_ratos.firmware.image import inspect_image
from pyinfra_ratos.firmware.settings import FirmwareTarget, firmware_settings
from pyinfra_ratos.firmware.plan import Artifact, FlashPlan, plan_flash
from pyinfra_ratos.firmware.identity import BuildVersionError, identity_of
from pyinfra_ratos.firmware.kconfig import verify_resolved
from pyinfra_ratos.run.planned import add_if_needed, added_while_executing
from pyinfra_ratos.firmware.versions import mcu_matches_host
from pyinfra_ratos.operations import firmware, identity

@dataclass(frozen=True)
class BoardStep:
    """One board's decision: a refusal found while building, a flash plan, or a build on the Pi
    whose flash is planned once the Pi has built it."""

    title: str
    mcu_name: str
    refusal: str | None = None
    built: BuiltArtifact | None = None
    plan: FlashPlan | None = None
    pi_build: FirmwareTarget | None = None
    target_arch: str = ""  # a host MCU built on the Pi: the architecture its identity names


def plan_firmware(audit: FleetAuditDict, commit: str | None = None) -> list[BoardStep]:
    """Build (once per identity) and plan every board of the host; adds no operation.

    ``commit``: the Klipper commit the Pi will run when the flash executes (an update checks it
    out first); default: the one it runs now.
    """
    settings = firmware_settings(host.name, host.data.dict(), host.inventory.get_override_data(), load_catalog())
    klipper = audit["klipper"]
    if commit is None and (not klipper.get("commit") or not klipper.get("version")):
        why = klipper.get("git_error") or "no Klipper checkout at ~/klipper"
        return [BoardStep("Firmware", "", refusal=f"cannot tell which Klipper the Pi runs: {why}")]
    mcus = audit["mcu_firmware"].get("mcus", {})
    # CAN toolboards first, the USB-to-CAN bridge last (its reset takes the bus down)
    targets = flash_order(settings.targets, lambda target: target.board.interface)
    if settings.build_on == "pi":
        moving = commit is not None and commit != klipper.get("commit")
        return [_pi_build_step(target, mcus.get(target.mcu_name), klipper, moving) for target in targets]
    attached = attached_boards(audit, targets)
    builder = shared_builder(settings.klipper_source, settings.cache, settings.allow_unclean)
    steps = []
    for target in targets:
        title = f"Firmware {target.mcu_name} ({target.board.id})"
        try:
            built = builder.build(commit or klipper["commit"], target.board, target.fragment, klipper.get("arch"))
        except (BuildError, BuildVersionError) as error:
            steps.append(BoardStep(title, target.mcu_name, refusal=f"{target.board.id}: {error}"))
            continue
        if commit is None and built.identity.version != klipper["version"]:
            steps.append(BoardStep(title, target.mcu_name, refusal=(
                f"{target.board.id}: commit {klipper['commit'][:12]} builds as {built.identity.version} on the "
                f"controller but the Pi's Klipper describes itself as {klipper['version']} (a dirty or modified "
                "checkout on the Pi?): not flashing firmware that would never match it")))
            continue
        plan = plan_flash(
            target.board, attached, mcus.get(target.mcu_name), audit["activity"],
            Artifact(built.identity, built.image, firmware.artifact_path(built), built.resolved_config),
            mcu_name=target.mcu_name, port=target.port, attended_flash=settings.attended_flash,
            backend=settings.backend, host_arch=klipper.get("arch") or None, canbus_uuid=target.canbus_uuid,
        )
        results.note_board(host.name, results.record_for_plan(host.name, target.mcu_name, plan))
        steps.append(BoardStep(title, target.mcu_name, built=built, plan=plan))
    return steps


def attached_boards(audit: Mapping[str, Any], targets: Sequence[FirmwareTarget]) -> dict[str, Any]:
    """The Pi's USB devices and its CAN nodes (``<interface>/<uuid>``), where the plan finds boards."""
    wanted = [(t.canbus_uuid, t.mcu_name, "can0") for t in targets if t.canbus_uuid and t.board.interface == "can"]
    # a bus on a USB-to-CAN bridge runs at the bridge firmware's speed: Linux's bitrate says nothing
    bridged = any(t.board.interface == "usbcan" for t in targets) or any(
        (device or {}).get("mode") == "can-bridge" for device in audit["boards"].values())
    return {**audit["boards"], **can_attached(audit.get("can") or {}, wanted, bridged)}


def preparation_failures(steps: list[BoardStep]) -> list[str]:
    """Why the firmware cannot be prepared (a build that fails, an image that does not fit, a
    board not found): any of these leaves the whole printer as it is."""
    return [step.refusal or step.plan.reason for step in steps
            if step.refusal is not None or (step.plan is not None and step.plan.refused and not step.plan.hold)]


def held(steps: list[BoardStep]) -> list[str]:
    """Boards left alone by policy (never flashed unattended, printer busy): the printer keeps its
    Klipper until they can be flashed, or a new host would stop it with an MCU protocol error."""
    return [step.plan.reason for step in steps if step.plan is not None and step.plan.refused and step.plan.hold]


def apply_firmware(steps: list[BoardStep], move: dict[str, str] | None = None) -> None:
    """Prepare every board (build, upload and check), then disrupt once: one printer transaction
    that flashes the boards and, with ``move``, checks Klipper out at the target commit.

    Nothing disruptive is added when a board's preparation failed: the host fails first.
    """
    failures = preparation_failures(steps)
    if failures:
        reason = "not flashing, nothing was changed: " + "; ".join(failures)
        results.note(host.name, unprepared=reason)  # plan says "will fail", not "held"
        firmware.refuse(name="Prepare the firmware", reason=reason)
        return
    for step in steps:
        if step.plan is not None and step.plan.refused:
            left_alone(step.plan.reason)  # a board held by policy
        elif step.plan is not None and step.plan.action != "flash":
            host.noop(step.plan.reason)  # already on its identity
        elif step.plan is None and step.pi_build is None:
            host.noop(f"{step.title}: runs the host's version")
    flashes = _prepare_uploads(steps)
    pi_builds = [step for step in steps if step.pi_build is not None]
    if pi_builds:
        _build_on_pi_then_update(pi_builds, flashes, move)
        return
    results.note_op(host.name, "flash:transaction", add_if_needed(
        firmware.transaction, name=transaction_name(flashes, move), boards=flashes, klipper=move))


def stage_for_hand(steps: list[BoardStep]) -> None:
    """Ship the artifacts of held boards a person flashes by hand (``plan.ship``), and nothing else:
    the printer is otherwise left alone."""
    _prepare_uploads([step for step in steps if step.plan is not None and step.plan.ship])


def transaction_name(flashes: list[tuple[FlashPlan, str]], move: dict[str, str] | None) -> str:
    """The same name on every host for the same kind of work (pyinfra lists operations by name)."""
    if flashes and move:
        return "Update Klipper and flash the boards"
    return "Flash the boards" if flashes else "Update Klipper"


def _prepare_uploads(steps: list[BoardStep]) -> list[tuple[FlashPlan, str]]:
    """Upload each artifact once (checked by sha256 on the Pi) and the pyusb client where needed."""
    artifacts: dict | None = None  # read only when something is to be flashed
    client_checked = False
    shipped: set[str] = set()  # two boards of one identity (a pair of Octopus) share one upload
    flashes = []
    for step in steps:
        built, plan = step.built, step.plan
        if plan is None or not (plan.action == "flash" or plan.ship) or built is None:
            continue
        if built.identity.name not in shipped:
            shipped.add(built.identity.name)
            if artifacts is None:
                artifacts = host.get_fact(FirmwareArtifacts)
            firmware.upload(name="Upload the firmware", artifact=built, present=artifacts.get(built.identity.name))
        if plan.needs_client and not client_checked:
            client_checked = True
            firmware.dfu_client(name="Install the pyusb DFU client",
                                present=host.get_fact(FileContents, path=firmware.DFU_CLIENT_STAMP))
        if plan.action == "flash":
            flashes.append((plan, step.mcu_name))
    return flashes


# --- building on the Pi -------------------------------------------------------------------------
# One printer on a workbench needs no controller checkout: its own ~/klipper builds the firmware,
# for the commit it will run (in a worktree at that commit while an update is pending: the
# checkout itself does not move before everything is prepared). The identity is known only once
# the Pi has built it, so the transaction of such a printer is planned at execution time
# (python.call), from the artifact's config, dictionary and image fetched back.


def _pi_build_step(target: FirmwareTarget, mcu: Mapping[str, Any] | None, klipper: Mapping[str, Any],
                   moving: bool = False) -> BoardStep:
    title = f"Firmware {target.mcu_name} ({target.board.id})"
    version = klipper.get("version") or ""
    if not moving and mcu and mcu.get("connected") and mcu.get("version") == version \
            and mcu_matches_host(version, version) \
            and (mcu.get("constants") or {}).get("MCU", target.board.mcu) == target.board.mcu:
        # the up-to-date rule when the Pi builds: the MCU reports exactly the host's clean version
        record = results.FlashRecord(host.name, target.board.id, target.port, target.mcu_name, version, version,
                                     "skipped", None, 0.0, True, None,
                                     f"{target.board.id}: already runs the host's {version}")
        results.note_board(host.name, record)
        return BoardStep(title, target.mcu_name)
    if klipper.get("foreign_owner"):
        return BoardStep(title, target.mcu_name, refusal=(
            f"{target.board.id}: ~/klipper belongs to {klipper.get('owner')}, not {klipper.get('ssh_user')}: a build "
            "as another user gets version '?' (git: dubious ownership). Fix: chown the checkout to the SSH user"))
    arch = klipper.get("arch") or "" if target.board.interface == "linux" else ""
    return BoardStep(title, target.mcu_name, pi_build=target, target_arch=arch)


def _build_on_pi_then_update(steps: list[BoardStep], flashes: list[tuple[FlashPlan, str]],
                             move: dict[str, str] | None) -> None:
    settings = firmware_settings(host.name, host.data.dict(), host.inventory.get_override_data(), load_catalog())
    builds = [(step, firmware.build(name="Build the firmware on the Pi", fragment=step.pi_build.fragment,
                                    allow_unclean=settings.allow_unclean, commit=(move or {}).get("to"),
                                    target=step.target_arch))
              for step in steps if step.pi_build is not None]
    python.call(name="Plan the flashes of the firmware built on the Pi", function=_update_pi_built,
                builds=builds, flashes=flashes, move=move, attended_flash=settings.attended_flash,
                backend=settings.backend)


def _update_pi_built(builds: list[tuple[BoardStep, Any]], flashes: list[tuple[FlashPlan, str]],
                     move: dict[str, str] | None, attended_flash: bool, backend: str) -> None:
    with added_while_executing():  # run by python.call: the operations below are added while executing
        audit = host.get_fact(FleetAudit)  # the Pi as it is now, right before planning its flashes
        plans = list(flashes)
        for step, meta in builds:
            plan = _plan_pi_built(meta, step.pi_build, audit, attended_flash, backend, step.target_arch)
            if isinstance(plan, str):
                firmware.refuse(name="Prepare the firmware", reason=f"nothing was changed: {plan}")
                return
            results.note_board(host.name, results.record_for_plan(host.name, step.mcu_name, plan))
            if plan.refused and plan.hold and move:
                firmware.refuse(name="Prepare the firmware", reason=f"not updating Klipper: {plan.reason}")
                return
            if plan.action == "flash":
                plans.append((plan, step.mcu_name))
        results.note_op(host.name, "flash:transaction", firmware.transaction(
            name=transaction_name(plans, move), boards=plans, klipper=move))


def _plan_pi_built(build_meta: Any, target: FirmwareTarget, audit: Mapping[str, Any], attended_flash: bool,
                   backend: str, arch: str = "") -> FlashPlan | str:
    """The flash plan of a board built on the Pi, or why it cannot be flashed."""
    identity_name = firmware.built_identity(build_meta)
    if identity_name is None:
        return f"{target.board.id}: the build on the Pi named no artifact"
    local = Path(tempfile.mkdtemp(prefix="ratos-pi-build-"))
    for name in ("config", "klipper.dict", target.board.firmware_file):
        host.get_file(f"{firmware.ARTIFACTS_DIR}/{identity_name}/{name}", str(local / name))
    resolved = (local / "config").read_text(encoding="utf-8")
    problems = verify_resolved(target.board, target.fragment, resolved)
    if problems:
        return (f"{target.board.id}: Kconfig did not resolve as asked on the Pi: "
                + "; ".join(str(problem) for problem in problems))
    version = json.loads((local / "klipper.dict").read_text(encoding="utf-8"))["version"]
    identity = identity_of(version, resolved, target.board, arch)
    data = (local / target.board.firmware_file).read_bytes()
    built = BuiltArtifact(identity, local, target.board.firmware_file,
                          inspect_image(data, target.board.firmware_file.rsplit(".", 1)[1]), resolved)
    plan = plan_flash(
        target.board, attached_boards(audit, [target]), audit["mcu_firmware"].get("mcus", {}).get(target.mcu_name),
        audit["activity"], Artifact(identity, built.image, firmware.artifact_path(built), resolved),
        mcu_name=target.mcu_name, port=target.port, attended_flash=attended_flash, backend=backend,
        host_arch=audit["klipper"].get("arch") or None, canbus_uuid=target.canbus_uuid,
    )
    if plan.refused and not plan.hold:
        return plan.reason
    return plan


@deploy("Converge board firmware")
def converge_firmware(audit: FleetAuditDict | None = None, commit: str | None = None) -> None:
    """Converge every board of the host (``audit``: its FleetAudit when the caller read it)."""
    tune_connection(host)
    if not identity.verified(): return  # noqa: E701 - not the printer recorded
    audit = audit if audit is not None else host.get_fact(FleetAudit)
    busy = gate.disruption_refused(audit["activity"])
    if busy:
        results.note(host.name, skipped=busy)
        left_alone(busy)
        return
    apply_firmware(plan_firmware(audit, commit))



if executed_by_pyinfra(globals()):
    converge_firmware()
