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
see :mod:`pyinfra_ratos.firmware_settings`. A converged host yields no command (a
board already on its identity adds no flash operation).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import python

from pyinfra_ratos import results
from pyinfra_ratos.builder import BuildError, BuiltArtifact, shared_builder
from pyinfra_ratos.catalog import load_catalog
from pyinfra_ratos.connection import set_nodelay
from pyinfra_ratos.deploys import executed_by_pyinfra
from pyinfra_ratos.facts.audit import FleetAudit, FleetAuditDict
from pyinfra_ratos.facts.firmware import FirmwareArtifacts
from pyinfra_ratos.firmware_image import inspect_image
from pyinfra_ratos.firmware_settings import FirmwareTarget, firmware_settings
from pyinfra_ratos.flash_plan import Artifact, FlashPlan, plan_flash
from pyinfra_ratos.identity import BuildVersionError, identity_of
from pyinfra_ratos.kconfig import verify_resolved
from pyinfra_ratos.planned import add_if_needed, added_while_executing
from pyinfra_ratos.versions import mcu_matches_host
from pyinfra_ratos.operations import firmware

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
    if settings.build_on == "pi":
        return [_pi_build_step(target, mcus.get(target.mcu_name), klipper) for target in settings.targets]
    builder = shared_builder(settings.klipper_source, settings.cache, settings.allow_unclean)
    steps = []
    for target in settings.targets:
        title = f"Firmware {target.mcu_name} ({target.board.id})"
        try:
            built = builder.build(commit or klipper["commit"], target.board, target.fragment)
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
            target.board, audit["boards"], mcus.get(target.mcu_name), audit["activity"],
            Artifact(built.identity, built.image, firmware.artifact_path(built), built.resolved_config),
            mcu_name=target.mcu_name, port=target.port, attended_flash=settings.attended_flash,
            backend=settings.backend,
        )
        results.note_board(host.name, results.record_for_plan(host.name, target.mcu_name, plan))
        steps.append(BoardStep(title, target.mcu_name, built=built, plan=plan))
    return steps


def apply_firmware(steps: list[BoardStep]) -> None:
    """The operations of planned boards: upload each artifact once, then flash (or skip, refuse)."""
    artifacts: dict | None = None  # read only when something is to be flashed
    client_checked = False
    shipped: set[str] = set()  # two boards of one identity (a pair of Octopus) share one upload
    for step in steps:
        if step.pi_build is not None:
            _build_then_flash(step.title, step.pi_build)
            continue
        if step.plan is None:
            if step.refusal is None:  # a Pi-built board already running the host's version
                host.noop(f"{step.title}: runs the host's version")
                continue
            firmware.refuse(name=step.title, reason=step.refusal)
            continue
        built, plan = step.built, step.plan
        if plan.action == "flash" and built is not None:
            if built.identity.name not in shipped:
                shipped.add(built.identity.name)
                if artifacts is None:
                    artifacts = host.get_fact(FirmwareArtifacts)
                firmware.upload(name=f"Upload {built.identity.name}", artifact=built,
                                present=artifacts.get(built.identity.name))
            if plan.method == "pyusb" and not client_checked:
                client_checked = True
                firmware.dfu_client(name="Install the pyusb DFU client",
                                    present=host.get_fact(FileContents, path=firmware.DFU_CLIENT_STAMP))
        # the flash reads nothing itself: a skip (a board on its identity) adds no operation
        results.note_op(host.name, f"flash:{step.mcu_name}",
                        add_if_needed(firmware.flash, name=step.title, plan=plan, mcu_name=step.mcu_name))


# --- building on the Pi -------------------------------------------------------------------------
# One printer on a workbench needs no controller checkout: its own ~/klipper builds the firmware.
# The identity is known only once the Pi has built it, so the flash of such a board is planned at
# execution time (python.call), from the artifact's config, dictionary and image fetched back.


def _pi_build_step(target: FirmwareTarget, mcu: Mapping[str, Any] | None, klipper: Mapping[str, Any]) -> BoardStep:
    title = f"Firmware {target.mcu_name} ({target.board.id})"
    version = klipper.get("version") or ""
    if mcu and mcu.get("connected") and mcu.get("version") == version and mcu_matches_host(version, version) \
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
    return BoardStep(title, target.mcu_name, pi_build=target)


def _build_then_flash(title: str, target: FirmwareTarget) -> None:
    settings = firmware_settings(host.name, host.data.dict(), host.inventory.get_override_data(), load_catalog())
    meta = firmware.build(name=f"Build {target.board.id} on the Pi", fragment=target.fragment,
                          allow_unclean=settings.allow_unclean)
    python.call(name=title, function=_flash_pi_built, build_meta=meta, target=target, title=title,
                attended_flash=settings.attended_flash, backend=settings.backend)


def _flash_pi_built(build_meta: Any, target: FirmwareTarget, title: str, attended_flash: bool, backend: str) -> None:
    with added_while_executing():  # run by python.call: the operations below are added while executing
        _plan_pi_built_flash(build_meta, target, title, attended_flash, backend)


def _plan_pi_built_flash(build_meta: Any, target: FirmwareTarget, title: str, attended_flash: bool,
                         backend: str) -> None:
    identity_name = firmware.built_identity(build_meta)
    if identity_name is None:
        firmware.refuse(name=title, reason=f"{target.board.id}: the build on the Pi named no artifact")
        return
    local = Path(tempfile.mkdtemp(prefix="ratos-pi-build-"))
    for name in ("config", "klipper.dict", target.board.firmware_file):
        host.get_file(f"{firmware.ARTIFACTS_DIR}/{identity_name}/{name}", str(local / name))
    resolved = (local / "config").read_text(encoding="utf-8")
    problems = verify_resolved(target.board, target.fragment, resolved)
    if problems:
        firmware.refuse(name=title, reason=f"{target.board.id}: Kconfig did not resolve as asked on the Pi: "
                        + "; ".join(str(problem) for problem in problems))
        return
    version = json.loads((local / "klipper.dict").read_text(encoding="utf-8"))["version"]
    identity = identity_of(version, resolved, target.board)
    data = (local / target.board.firmware_file).read_bytes()
    built = BuiltArtifact(identity, local, target.board.firmware_file,
                          inspect_image(data, target.board.firmware_file.rsplit(".", 1)[1]), resolved)
    audit = host.get_fact(FleetAudit)  # the Pi as it is now, right before planning its flash
    plan = plan_flash(
        target.board, audit["boards"], audit["mcu_firmware"].get("mcus", {}).get(target.mcu_name),
        audit["activity"], Artifact(identity, built.image, firmware.artifact_path(built), resolved),
        mcu_name=target.mcu_name, port=target.port, attended_flash=attended_flash, backend=backend,
    )
    results.note_board(host.name, results.record_for_plan(host.name, target.mcu_name, plan))
    results.note_op(host.name, f"flash:{target.mcu_name}",
                    firmware.flash(name=f"{title}: flash", plan=plan, mcu_name=target.mcu_name))


@deploy("Converge board firmware")
def converge_firmware(audit: FleetAuditDict | None = None, commit: str | None = None) -> None:
    """Converge every board of the host (``audit``: its FleetAudit when the caller read it)."""
    set_nodelay(host)
    apply_firmware(plan_firmware(audit if audit is not None else host.get_fact(FleetAudit), commit))


if executed_by_pyinfra(globals()):
    converge_firmware()
