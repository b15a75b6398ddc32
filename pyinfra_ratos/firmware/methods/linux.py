"""The Linux host MCU: ``klipper.elf`` installed as ``/usr/local/bin/klipper_mcu``, its unit restarted.

Not on USB: nothing to locate. klippy loses the host MCU while ``klipper-mcu`` restarts, so the
agent stops Klipper around it (as for every board), keeps the binary it replaces for a rollback and
verifies the version klippy reports (nothing to read back: ``verifies = "version"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.methods.base import FlashMethod, Options, register
from pyinfra_ratos.firmware.steps import (
    LINUX_MCU_BINARY, LINUX_MCU_SERVICE, Artifact, EnsureIdle, FlashPlan, InstallBinary, RestartService,
    StartKlipper, StopKlipper, Verify,
)


@register
class LinuxHost(FlashMethod):
    name = "linux"
    modes = ()
    verifies = "version"

    def steps(self, board: Board, entry: Mapping[str, Any] | None, mcu_name: str, artifact: Artifact,
              options: Options) -> FlashPlan:
        return FlashPlan(
            "flash", board.id, f"{board.id}: install {artifact.identity.name} as {LINUX_MCU_BINARY}",
            method="linux",
            steps=(EnsureIdle(), StopKlipper(), InstallBinary(artifact.path, LINUX_MCU_BINARY),
                   RestartService(LINUX_MCU_SERVICE)),
            finally_steps=(StartKlipper(),),
            verify_steps=(Verify(mcu_name, artifact.identity.version),),
            expected_version=artifact.identity.version, image_sha256=artifact.image.sha256,
        )
