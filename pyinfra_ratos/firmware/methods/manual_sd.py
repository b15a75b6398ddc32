"""SD card by hand: boards whose only bootloader reads a file from an SD card at power-on.

No tool reaches such a board unattended (BTT SKR 2: "make flash" does not work, Klipper says to
copy ``klipper.bin`` as ``firmware.bin`` to an SD card and restart the board; boards without a
bootloader need an ST-Link). So the plan writes nothing: it ships the artifact to the Pi (with the
file already under the name the bootloader reads), holds the board (the gate then keeps the
printer's Klipper where it is, so host and MCU still speak one protocol) and gives the procedure.
Once the board reports the new build, the next run skips it and Klipper may move.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.methods.base import FlashMethod, Options, register
from pyinfra_ratos.firmware.steps import Artifact, FlashPlan


def sd_procedure(board: Board, artifact: Artifact, mcu_name: str) -> tuple[str, ...]:
    """The steps a person follows, with the exact file and name."""
    name = board.sd_firmware_name or "firmware.bin"
    folder = artifact.path.rsplit("/", 1)[0]
    if not folder.startswith(("/", "~")):  # artifact paths are relative to the SSH user's home
        folder = "~/" + folder
    return (
        f"copy {folder}/{name} from the Pi (the same bytes as {artifact.path.rsplit('/', 1)[1]}, "
        f"sha256 {artifact.image.sha256[:16]}...) to the root of a FAT32 SD card as {name}",
        f"with the printer idle, power the {board.name} off, put the card in its SD slot, power it on "
        "and wait ~30 s (its bootloader writes the file, then renames it, e.g. to FIRMWARE.CUR)",
        f"check Moonraker reports {artifact.identity.version} for [{'mcu' if mcu_name == 'mcu' else 'mcu ' + mcu_name}], "
        "then run the update again: Klipper moves only once the board runs this build",
    )


@register
class ManualSd(FlashMethod):
    name = "manual-sd"
    modes = ()  # nothing is written over USB
    verifies = "version"  # by the next run: the board then reports the build

    def steps(self, board: Board, entry: Mapping[str, Any] | None, mcu_name: str, artifact: Artifact,
              options: Options) -> FlashPlan:
        procedure = sd_procedure(board, artifact, mcu_name)
        return FlashPlan(
            "refuse", board.id,
            f"{board.id}: no tool flashes this board (SD-card bootloader): flash {artifact.identity.name} by hand: "
            + "; ".join(f"{n}. {step}" for n, step in enumerate(procedure, 1)),
            method=self.name, hold=True, ship=True, procedure=procedure,
            expected_version=artifact.identity.version, image_sha256=artifact.image.sha256,
        )
