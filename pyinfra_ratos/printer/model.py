"""A printer as the inventory describes it: host data validated into a spec, then a template context.

Pure Python (no pyinfra). Every error names the host, the field and the fix, and all of a host's
errors are reported at once.

Inventory host data keys (``printer_config`` deploy, ``printer.config`` operation)::

    printer_model     "v-core-3" | "v-core-4" | "v-minion"                       (required)
    printer_size      build size in mm: v-core-3 200/300/400/500, v-core-4 300/400/500,
                      v-minion 180                                  (default: the model's usual)
    boards            list of tables, the control board first                    (required)
                        board        catalog id, e.g. "btt-octopus-pro-h723-11"
                        mcu_name     Klipper's name: "mcu" (control board), "toolboard_t0",
                                     "rpi" ...  (default: mcu, toolboard_t<n>, rpi for the host MCU)
                        port         USB port path ("1-1.3"), to tell identical boards apart
                        serial       explicit serial path; skips the USB lookup
                        canbus_uuid  12 hex digits, required for CAN boards
                        kconfig      firmware build overrides (see firmware_settings)
                      (one parser for both deploys: pyinfra_ratos.data.board_entries.parse_boards)
    hotend            RatOS hotend file name, e.g. "rapido"      -> [include RatOS/hotends/<x>.cfg]
    extruder          RatOS extruder file name, e.g. "orbiter-v2-0" -> RatOS/extruders/<x>.cfg
    probe             RatOS probe file name, e.g. "bltouch"       -> RatOS/z-probe/<x>.cfg
    stepper_driver    "tmc2209" (default), "tmc2226", "tmc2240", "tmc5160", "tmc2130", "tmc2660"
    stepper_current   {"x": 1.6, "y": 1.6, "z": 1.2, "e": 0.7}: run_current in A (0.1..3.5)
    klipper_commit    the fleet's Klipper commit (40 hex digits), pinned in moonraker.conf
    printer_templates a folder on the controller of the user's own templates, searched before the
                      packaged ones (``PrinterSpec.templates``: ``~`` expanded)

The ``printer_config`` deploy's tuning keys (:data:`PRINTER_DEPLOY_RULES`, read by provision and
update too)::

    printer_user_config  keep | adopt | regenerate   what to do with an existing printer.cfg [adopt]
    printer_when_busy    write | defer               a printing Pi: write, restart later; or skip [write]
    printer_backups      1 to 1000                   backups kept per file [5]
    printer_config_dir   path on the Pi              Klipper's config folder [~/printer_data/config]
                         (``~/`` is the Pi user's home, resolved on the Pi)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyinfra_ratos.data.board_entries import BoardSpec, parse_boards
from pyinfra_ratos.data.rules import (
    COMMIT,
    Rule,
    controller_path,
    count,
    field_name,
    one_of,
    path,
    problems,
    shown,
    text,
)
from pyinfra_ratos.firmware.catalog import Board


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str
    sizes: tuple[int, ...]
    default_size: int
    z_steppers: int  # stepper_z, stepper_z1 ... : stepper_current["z"] applies to each


MODELS: dict[str, ModelInfo] = {
    "v-core-3": ModelInfo("v-core-3", "Rat Rig V-Core 3.1", (200, 300, 400, 500), 300, 3),
    "v-core-4": ModelInfo("v-core-4", "Rat Rig V-Core 4", (300, 400, 500), 400, 3),
    "v-minion": ModelInfo("v-minion", "Rat Rig V-Minion", (180,), 180, 1),
}
STEPPER_DRIVERS = ("tmc2209", "tmc2226", "tmc2240", "tmc5160", "tmc2130", "tmc2660")
CURRENT_RANGE = (0.1, 3.5)
AXES = ("x", "y", "z", "e")
HOST_MCU_SERIAL = "/tmp/klipper_host_mcu"
# where RatOS keeps each kind of component file, relative to the config folder
COMPONENT_FOLDERS = {"hotend": "RatOS/hotends", "extruder": "RatOS/extruders", "probe": "RatOS/z-probe"}
DATA_KEYS = ("printer_model", "printer_size", "boards", "hotend", "extruder", "probe", "stepper_driver",
             "stepper_current", "klipper_commit", "printer_templates")

_SLUG = r"[a-z0-9][a-z0-9._-]{0,63}"
_SLUG_WHAT = "a file name of lower-case letters, digits, '-', '_' or '.'"


# what printer.config does with an existing printer.cfg, and with a printing printer
USER_CONFIG_MODES = ("keep", "adopt", "regenerate")
WHEN_BUSY = ("write", "defer")


PRINTER_RULES: dict[str, Rule] = {
    "printer_model": Rule(one_of(tuple(MODELS), "a known model"), "use a RatOS printer model", optional=True),
    "hotend": Rule(text(_SLUG, _SLUG_WHAT), "set hotend = 'rapido' (the RatOS file name without .cfg) or remove it",
                   optional=True),
    "extruder": Rule(text(_SLUG, _SLUG_WHAT),
                     "set extruder = 'orbiter-v2-0' (the RatOS file name without .cfg) or remove it", optional=True),
    "probe": Rule(text(_SLUG, _SLUG_WHAT), "set probe = 'bltouch' (the RatOS file name without .cfg) or remove it",
                  optional=True),
    "stepper_driver": Rule(one_of(STEPPER_DRIVERS, "a known driver"), "use the TMC driver of the printer's steppers"),
    "klipper_commit": COMMIT,
    "printer_templates": Rule(path, "write a folder of your own templates on this controller, "
                                    "e.g. \"~/ratos-templates\"", optional=True),
}
PRINTER_DEPLOY_RULES: dict[str, Rule] = {
    "printer_user_config": Rule(one_of(USER_CONFIG_MODES, "a mode"),
                                "say what to do with an existing printer.cfg"),
    "printer_when_busy": Rule(one_of(WHEN_BUSY, "a known choice"),
                              "say what to do with a printing printer's files"),
    "printer_backups": Rule(count(1, 1000), "keep at least one backup per file, e.g. 5"),
    "printer_config_dir": Rule(path, "write Klipper's config folder on the Pi, e.g. \"~/printer_data/config\""),
}


class PrinterDataError(ValueError):
    """A host's inventory data that cannot describe a printer; lists every bad field."""

    def __init__(self, host: str, errors: Sequence[str]) -> None:
        self.host = host
        self.errors = list(errors)
        super().__init__(f"{host}: invalid printer data in the inventory:\n" + "\n".join(f"  - {e}" for e in errors))


BoardEntry = BoardSpec  # one entry of boards, as every deploy reads it


@dataclass(frozen=True)
class PrinterSpec:
    host: str
    model: ModelInfo
    size: int
    boards: tuple[BoardEntry, ...]
    hotend: str | None = None
    extruder: str | None = None
    probe: str | None = None
    stepper_driver: str = "tmc2209"
    stepper_current: Mapping[str, float] = field(default_factory=dict)
    klipper_commit: str | None = None
    templates: str | None = None  # printer_templates, ~ expanded


def parse_printer_data(host: str, data: Mapping[str, Any], catalog: Mapping[str, Board]) -> PrinterSpec:
    """Validate one host's data into a :class:`PrinterSpec`; raises :class:`PrinterDataError`."""
    errors: list[str] = []

    def check(*keys: str) -> None:
        errors.extend(f"{key}: {text}" for key, text in problems(PRINTER_RULES, data, keys))

    model_id = data.get("printer_model")
    if model_id is None:
        errors.append(f"printer_model: missing. Fix: set printer_model to one of {', '.join(MODELS)}")
    check("printer_model")
    model = MODELS.get(model_id) if isinstance(model_id, str) else None

    size = data.get("printer_size")
    if model is not None:
        if size is None:
            size = model.default_size
        elif isinstance(size, bool) or not isinstance(size, int) or size not in model.sizes:
            errors.append(f"printer_size: {shown(size)} is not a {model.id} size. "
                          f"Fix: use one of {', '.join(map(str, model.sizes))}")

    boards = _parse_boards(errors, data.get("boards"), catalog)
    check("hotend", "extruder", "probe", "stepper_driver")
    currents: dict[str, float] = {}
    raw_currents = data.get("stepper_current", {})
    if not isinstance(raw_currents, Mapping):
        errors.append(f"stepper_current: {shown(raw_currents)} is not a table. Fix: write {{\"x\": 1.6, \"z\": 1.2}}")
    else:
        for axis, amps in raw_currents.items():
            if not isinstance(axis, str) or axis not in AXES:
                errors.append(f"stepper_current.{field_name(axis)}: unknown axis. Fix: use {', '.join(AXES)}")
            elif isinstance(amps, bool) or not isinstance(amps, (int, float)) or not (
                CURRENT_RANGE[0] <= amps <= CURRENT_RANGE[1]
            ):
                errors.append(f"stepper_current.{axis}: {shown(amps)} is not a current in amperes. "
                              f"Fix: use a number from {CURRENT_RANGE[0]} to {CURRENT_RANGE[1]}")
            else:
                currents[axis] = float(amps)
    check("klipper_commit", "printer_templates")

    if errors or model is None:
        raise PrinterDataError(host, errors)
    templates = data.get("printer_templates")
    return PrinterSpec(host=host, model=model, size=size, boards=tuple(boards), hotend=data.get("hotend"),
                       extruder=data.get("extruder"), probe=data.get("probe"),
                       stepper_driver=data.get("stepper_driver", "tmc2209"), stepper_current=currents,
                       klipper_commit=data.get("klipper_commit"),
                       templates=controller_path(templates) if templates else None)


def _parse_boards(errors: list[str], raw: Any, catalog: Mapping[str, Board]) -> list[BoardEntry]:
    # one boards parser for every deploy (the firmware pipeline reads the same list)
    specs, problems = parse_boards(raw, catalog)
    errors.extend(f"{name}: {text}" for name, text in problems)
    return specs


# --- serial paths from the AttachedBoards fact -----------------------------------------------


@dataclass(frozen=True)
class SerialChoice:
    path: str | None  # None: CAN board (canbus_uuid) or nothing known
    note: str | None = None  # why a fallback was used (shown to the operator)


def choose_serial(entry: BoardEntry, attached: Mapping[str, Mapping[str, Any]], previous: str | None) -> SerialChoice:
    """The ``serial:`` of one MCU: explicit, host MCU, ``/dev/RatOS/<id>`` when that link exists,
    else the board's by-id path; when the board is not running Klipper right now (being flashed,
    unplugged), the serial already configured, so a board in DFU does not flap the config."""
    if entry.serial:
        return SerialChoice(entry.serial)
    if entry.board.interface == "linux":
        return SerialChoice(HOST_MCU_SERIAL)
    if entry.board.interface == "can" or (entry.board.interface == "usbcan" and entry.canbus_uuid):
        return SerialChoice(None)  # found by its canbus_uuid (a USB-to-CAN bridge is a CAN node too)
    candidates = [info for info in attached.values() if entry.port is None or info.get("port") == entry.port]
    exact = [info for info in candidates if info.get("board_id") == entry.board.id
             or info.get("ratos_link") == f"/dev/RatOS/{entry.board.id}"]
    if not exact and entry.port is None:
        exact = [info for info in candidates if info.get("board_id") is None and info.get("mode") == "klipper"
                 and entry.board.id in (info.get("board_candidates") or [])]
    elif not exact and entry.port is not None:
        exact = candidates
    fallback = previous or f"/dev/RatOS/{entry.board.id}"
    if len(exact) > 1:
        ports = ", ".join(sorted(str(info.get("port")) for info in exact))
        return SerialChoice(fallback, f"{entry.board.id} is attached {len(exact)} times (ports {ports}); "
                                      f"set boards[].port to pick one; keeping {fallback}")
    if exact and exact[0].get("mode") == "klipper":
        info = exact[0]
        path = info.get("ratos_link") or info.get("by_id")
        if path:
            return SerialChoice(path)
    state = f"in {exact[0].get('mode')} mode" if exact else "not attached"
    return SerialChoice(fallback, f"{entry.board.id} ({entry.mcu_name}) is {state}; keeping serial {fallback}")


def previous_serials(generated_text: str | None) -> dict[str, str]:
    """``{section: serial}`` of the ``[mcu ...]`` sections of the generated file now on the Pi."""
    found: dict[str, str] = {}
    section = None
    for line in (generated_text or "").splitlines():
        header = re.match(r"^\[([^\]]+)\]", line)
        if header:
            section = header.group(1).strip()
            continue
        option = re.match(r"^serial\s*[:=]\s*(\S+)", line)
        if option and section is not None and (section == "mcu" or section.startswith("mcu ")):
            found[section] = option.group(1)
    return found


# --- template context ------------------------------------------------------------------------


def template_context(spec: PrinterSpec, serials: Mapping[str, str | None]) -> dict[str, Any]:
    """What the templates see. ``serials``: ``{mcu_name: path or None}``."""
    mcus = []
    for entry in spec.boards:
        mcus.append({
            "name": entry.mcu_name,
            "section": entry.section,
            "board": entry.board.id,
            "board_name": entry.board.name,
            "toolboard": entry.board.toolboard,
            "host": entry.board.interface == "linux",
            # pin aliases of MCU boards; the host MCU has no pin file
            "include": None if entry.board.interface == "linux" else f"RatOS/boards/{entry.board.id}/config.cfg",
            "serial": serials.get(entry.mcu_name),
            "canbus_uuid": entry.canbus_uuid,
        })
    control = next(m for m in mcus if m["name"] == "mcu")
    steppers = []
    currents = spec.stepper_current
    for axis in ("x", "y"):
        if axis in currents:
            steppers.append({"section": f"{spec.stepper_driver} stepper_{axis}", "run_current": currents[axis]})
    if "z" in currents:
        for index in range(spec.model.z_steppers):
            name = "stepper_z" if index == 0 else f"stepper_z{index}"
            steppers.append({"section": f"{spec.stepper_driver} {name}", "run_current": currents["z"]})
    if "e" in currents:
        steppers.append({"section": f"{spec.stepper_driver} extruder", "run_current": currents["e"]})
    components = {key: f"{COMPONENT_FOLDERS[key]}/{value}.cfg"
                  for key, value in (("hotend", spec.hotend), ("extruder", spec.extruder), ("probe", spec.probe))
                  if value}
    return {
        "host": spec.host,
        "model": {"id": spec.model.id, "name": spec.model.name, "size": spec.size,
                  "include": f"RatOS/printers/{spec.model.id}/{spec.model.id}.cfg"},
        "size": {"x": spec.size, "y": spec.size, "z": spec.size},
        "control_board": control,
        "toolboards": [m for m in mcus if m["toolboard"]],
        "host_mcu": next((m for m in mcus if m["host"]), None),
        "mcus": mcus,
        "components": components,
        "hotend": spec.hotend,
        "extruder": spec.extruder,
        "probe": spec.probe,
        "steppers": steppers,
    }
