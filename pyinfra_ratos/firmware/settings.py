"""The firmware pipeline's inventory data, validated before anything runs on any Pi.

Host and group data keys (the ``firmware`` deploy)::

    boards            list of tables (as for the printer configuration):
                        board        catalog id, e.g. "btt-octopus-pro-h723-11"       (required)
                        mcu_name     Klipper's name (default: mcu for the control board, toolboard_t0,
                                     toolboard_t1 ... for toolboards, rpi for the host MCU)
                        port         USB port path ("1-1.3"): required to tell identical boards apart
                        kconfig      {symbol: value} Kconfig overrides for this board's build, e.g.
                                     {"USB_SERIAL_NUMBER": "btt-octopus-pro-h723-11-t0"}
                      (one parser for both deploys: pyinfra_ratos.data.board_entries.parse_boards)
    klipper_source    a Klipper git checkout on the controller holding the Pis' commit: the fleet's
                      firmware is built there, once per identity                       (required)
    firmware_cache    where built artifacts are kept on the controller, ``~`` expanded
                      (default: ~/.cache/pyinfra-ratos/firmware)
    flash_backend     how DFU boards are written: "dfu-util" (default) or "pyusb" (the project's
                      pyinfra_ratos.firmware.dfu client, installed on the Pi from the controller: it reads
                      the flash back before leaving DFU, so a bad write fails and stays in DFU);
                      also per run: --data flash_backend=pyusb
    allow_unclean_build  true to flash builds of a dirty or undescribable checkout (default false)
    firmware_build    where firmware is built: "controller" (default, once per identity for the
                      fleet) or "pi" (each Pi's own checkout; klipper_source then optional)

Per run, never in the inventory (``--data attended_flash=true``)::

    attended_flash    allow boards that must never be flashed unattended (heaters live in DFU)

Pure Python: the deploy hands it ``host.data`` and the run's override data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra_ratos.data.board_entries import parse_boards
from pyinfra_ratos.firmware.builder import DEFAULT_CACHE
from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.data.rules import SOURCE, Rule, as_flag, controller_path, flag, one_of, path, problems, shown
from pyinfra_ratos.firmware.plan import BACKENDS
from pyinfra_ratos.firmware.kconfig import OverrideValue, render_fragment

BUILD_PLACES = ("controller", "pi")
FIRMWARE_RULES: dict[str, Rule] = {
    "firmware_build": Rule(one_of(BUILD_PLACES, "a build place"), "build on the controller (the default) or each pi"),
    "klipper_source": SOURCE,
    "firmware_cache": Rule(path, "write a folder on this controller, e.g. \"~/.cache/pyinfra-ratos/firmware\"",
                           optional=True),
    "flash_backend": Rule(one_of(BACKENDS, "a flash backend"), "use dfu-util (the default) or pyusb"),
    "allow_unclean_build": Rule(flag, "write true or false"),
}


class HostDataError(ValueError):
    """Bad inventory data for a host: every problem names the host, the field and the fix."""

    def __init__(self, host: str, errors: list[str]) -> None:
        self.host = host
        self.errors = errors
        super().__init__("\n".join(f"host {host}: {error}" for error in errors))


@dataclass(frozen=True)
class FirmwareTarget:
    board: Board
    mcu_name: str
    port: str | None
    overrides: Mapping[str, OverrideValue] = field(default_factory=dict)
    canbus_uuid: str | None = None  # a CAN toolboard's or a USB-to-CAN bridge's node

    @property
    def fragment(self) -> str:
        return render_fragment(self.board, self.overrides)


@dataclass(frozen=True)
class FirmwareSettings:
    targets: tuple[FirmwareTarget, ...]
    klipper_source: Path
    cache: Path
    backend: str
    attended_flash: bool
    allow_unclean: bool
    build_on: str = "controller"  # "controller" (once per identity for the fleet) or "pi"


def parse_targets(errors: list[str], raw: Any, catalog: Mapping[str, Board]) -> list[FirmwareTarget]:
    # one boards parser for every deploy (the printer configuration reads the same list)
    specs, problems = parse_boards(raw, catalog)
    errors.extend(f"field '{name}': {text}" for name, text in problems)
    return [FirmwareTarget(s.board, s.mcu_name, s.port, s.kconfig, s.canbus_uuid) for s in specs]


def _is_checkout(folder: str) -> bool:
    try:
        return (Path(folder) / ".git").exists()
    except OSError:  # a name too long, a folder we may not read: not a checkout we can use
        return False


def firmware_settings(host: str, data: Mapping[str, Any], override: Mapping[str, Any],
                      catalog: Mapping[str, Board]) -> FirmwareSettings:
    """Validate a host's firmware data; raises HostDataError with every problem at once."""
    errors: list[str] = []
    targets = parse_targets(errors, data.get("boards"), catalog)
    errors += [f"field '{key}': {text}" for key, text in problems(FIRMWARE_RULES, data)]
    build_on = data.get("firmware_build", "controller")
    source = data.get("klipper_source")
    if source is None and not (isinstance(build_on, str) and build_on == "pi"):
        errors.append("field 'klipper_source': missing. Fix: set it to a Klipper git checkout on this controller "
                      "that holds the Pis' commit (git clone https://github.com/Klipper3d/klipper ~/klipper-fleet)")
    elif source is not None and not path(source, "") and not _is_checkout(controller_path(source)):
        errors.append(f"field 'klipper_source': {shown(source)} is not a git checkout on this controller. "
                      f"Fix: {SOURCE.fix}")
    if "attended_flash" in data and "attended_flash" not in override:
        errors.append("field 'attended_flash' is set in the inventory; it is a per-run operator flag: remove it "
                      "and pass --data attended_flash=true on the run where someone watches the printers")
    attended = as_flag(override.get("attended_flash", False))
    if attended is None:
        errors.append(f"--data attended_flash={shown(override.get('attended_flash'))}: use true or false")
    if errors:
        raise HostDataError(host, errors)
    return FirmwareSettings(
        targets=tuple(targets),
        klipper_source=Path(controller_path(source or "")),
        cache=Path(controller_path(data.get("firmware_cache") or str(DEFAULT_CACHE))),
        backend=str(data.get("flash_backend", "dfu-util")),
        attended_flash=bool(attended),
        allow_unclean=bool(as_flag(data.get("allow_unclean_build", False))),
        build_on=str(build_on),
    )
