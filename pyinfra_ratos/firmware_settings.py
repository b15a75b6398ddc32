"""The firmware pipeline's inventory data, validated before anything runs on any Pi.

Host and group data keys (the ``firmware`` deploy)::

    boards            list of tables (as for the printer configuration):
                        board        catalog id, e.g. "btt-octopus-pro-h723-11"       (required)
                        mcu_name     Klipper's name: "mcu", "toolboard_t0", ... (default: mcu, then
                                     toolboard_t0, toolboard_t1, ...)
                        port         USB port path ("1-1.3"): required to tell identical boards apart
                        kconfig      {symbol: value} Kconfig overrides for this board's build, e.g.
                                     {"USB_SERIAL_NUMBER": "btt-octopus-pro-h723-11-t0"}
    klipper_source    a Klipper git checkout on the controller holding the Pis' commit: the fleet's
                      firmware is built there, once per identity                       (required)
    firmware_cache    where built artifacts are kept on the controller
                      (default: ~/.cache/pyinfra-ratos/firmware)
    flash_backend     "dfu-util" (default) or "pyusb"
    allow_unclean_build  true to flash builds of a dirty or undescribable checkout (default false)

Per run, never in the inventory (``--data attended_flash=true``)::

    attended_flash    allow boards that must never be flashed unattended (heaters live in DFU)

Pure Python: the deploy hands it ``host.data`` and the run's override data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra_ratos.builder import DEFAULT_CACHE
from pyinfra_ratos.catalog import Board
from pyinfra_ratos.flash_plan import BACKENDS
from pyinfra_ratos.kconfig import KconfigError, OverrideValue, render_fragment

PORT_RE = re.compile(r"^[1-9][0-9]*-[1-9][0-9]*(\.[1-9][0-9]*){0,5}$")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


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


def as_flag(value: Any) -> bool | None:
    """A yes/no value as given in data or on the command line; None when it is neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    return None


def parse_targets(errors: list[str], raw: Any, catalog: Mapping[str, Board]) -> list[FirmwareTarget]:
    if not isinstance(raw, list) or not raw:
        errors.append("field 'boards' must be a non-empty list of tables such as "
                      "[{\"board\": \"btt-octopus-pro-h723-11\"}]")
        return []
    targets = []
    for index, entry in enumerate(raw):
        where = f"field 'boards[{index}]'"
        if not isinstance(entry, Mapping):
            errors.append(f"{where} must be a table with a 'board' key")
            continue
        board_id = entry.get("board")
        if board_id not in catalog:
            errors.append(f"{where}.board is {board_id!r}, not a catalog board id; use one of the files in "
                          "pyinfra_ratos/boards/ or add your own board file")
            continue
        mcu_name = entry.get("mcu_name", "mcu" if index == 0 else f"toolboard_t{index - 1}")
        if not isinstance(mcu_name, str) or not re.match(r"^[A-Za-z0-9_]+$", mcu_name):
            errors.append(f"{where}.mcu_name is {mcu_name!r}; use letters, digits and '_' (e.g. toolboard_t0)")
            continue
        port = entry.get("port")
        if port is not None and (not isinstance(port, str) or not PORT_RE.match(port)):
            errors.append(f"{where}.port is {port!r}; use a USB port path such as '1-1.3' "
                          "(ls /dev/serial/by-path on the Pi)")
            continue
        overrides = entry.get("kconfig", {})
        if not isinstance(overrides, Mapping):
            errors.append(f"{where}.kconfig must be a table of Kconfig symbols, e.g. {{\"CANBUS_FREQUENCY\": 1000000}}")
            continue
        target = FirmwareTarget(catalog[board_id], mcu_name, port, dict(overrides))
        try:
            target.fragment  # noqa: B018 - renders now, so a bad override fails before any Pi is touched
        except KconfigError as error:
            errors.append(f"{where}.kconfig: {error}")
            continue
        targets.append(target)
    names = [t.mcu_name for t in targets]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"field 'boards': mcu_name {name!r} is used twice; each board needs its own")
    return targets


def firmware_settings(host: str, data: Mapping[str, Any], override: Mapping[str, Any],
                      catalog: Mapping[str, Board]) -> FirmwareSettings:
    """Validate a host's firmware data; raises HostDataError with every problem at once."""
    errors: list[str] = []
    targets = parse_targets(errors, data.get("boards"), catalog)
    source = data.get("klipper_source")
    if not isinstance(source, str) or not source:
        errors.append("field 'klipper_source' is missing: set it to a Klipper git checkout on this controller "
                      "(git clone https://github.com/Klipper3d/klipper) holding the Pis' commit")
    elif not (Path(source).expanduser() / ".git").exists():
        errors.append(f"field 'klipper_source' is {source!r}, which is not a git checkout on this controller")
    backend = data.get("flash_backend", "dfu-util")
    if backend not in BACKENDS:
        errors.append(f"field 'flash_backend' is {backend!r}; use one of {', '.join(BACKENDS)}")
    if "attended_flash" in data and "attended_flash" not in override:
        errors.append("field 'attended_flash' is set in the inventory; it is a per-run operator flag: remove it "
                      "and pass --data attended_flash=true on the run where someone watches the printers")
    attended = as_flag(override.get("attended_flash", False))
    if attended is None:
        errors.append(f"--data attended_flash={override.get('attended_flash')!r}: use true or false")
    allow_unclean = as_flag(data.get("allow_unclean_build", False))
    if allow_unclean is None:
        errors.append("field 'allow_unclean_build' must be true or false")
    if errors:
        raise HostDataError(host, errors)
    return FirmwareSettings(
        targets=tuple(targets),
        klipper_source=Path(str(source)).expanduser(),
        cache=Path(str(data.get("firmware_cache") or DEFAULT_CACHE)).expanduser(),
        backend=str(backend),
        attended_flash=bool(attended),
        allow_unclean=bool(allow_unclean),
    )
