"""``status``'s word on the configuration: the decision ``plan`` and ``update`` act on, read-only."""

from __future__ import annotations

from typing import Any

from pyinfra_ratos.facts.printer_files import sha256_text
from pyinfra_ratos.run.config_status import judge_config, status_reads
from pyinfra_ratos.operations.printer import decide_config

COMMIT = "61c0c8d2ef40340781835dd53fb04cc7a454e37a"
DATA: dict[str, Any] = {
    "klipper_commit": COMMIT, "printer_model": "v-core-3", "printer_size": 300, "hotend": "rapido",
    "extruder": "orbiter-v2-0", "probe": "bltouch", "stepper_driver": "tmc2209",
    # a serial given: choosing the serial path needs no USB read
    "boards": [{"board": "btt-octopus-pro-h723-11", "serial": "/dev/serial/by-id/usb-Klipper_stm32h723xx_X-if00"}],
}
RATOS_CFG_INCLUDED = "[include RatOS.cfg]\n\n[printer]\nmax_velocity: 200\n\n#*# <---------------------- SAVE_CONFIG " \
                     "---------------------->\n#*# DO NOT EDIT THIS BLOCK OR BELOW. The contents are auto-generated.\n"


def info(text: str | None) -> dict[str, Any]:
    if text is None:
        return {"exists": False, "mode": "", "user": "", "group": "", "size": 0, "sha256": "", "text": None}
    return {"exists": True, "mode": "644", "user": "pi", "group": "pi", "size": len(text.encode()),
            "sha256": sha256_text(text), "text": text}


def folder(ratos: str | None, printer: str | None, marker: bool = False) -> dict[str, Any]:
    query = status_reads("p1", DATA)
    files = {"RatOS.cfg": info(ratos), "printer.cfg": info(printer),
             ".pyinfra-ratos-restart-klipper": {**info(None), "exists": marker}}
    return {"dir": "/home/pi/printer_data/config", "free_bytes": 1 << 30, "files": files,
            "includes": dict.fromkeys(query["includes"], True)}


def read(files: dict[str, Any], backup: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"audit": {"boards": {}}, "config": {"files": files, "backup": backup or {}}}


def generated() -> str:
    decision = decide_config("p1", DATA, folder(None, RATOS_CFG_INCLUDED), {})
    assert decision is not None
    return next(w.text for w in decision.writes if w.name == "RatOS.cfg")


def test_status_reads_the_files_printer_config_reads_in_the_same_folder() -> None:
    query = status_reads("p1", DATA)
    assert query["config_dir"] == "~/printer_data/config"
    assert {"RatOS.cfg", "printer.cfg", ".pyinfra-ratos-restart-klipper"} <= set(query["files"])
    assert set(query["read"]) == {"RatOS.cfg", "printer.cfg"} and query["includes"]


def test_a_printer_cfg_without_the_include_would_be_adopted_so_it_is_not_converged() -> None:
    legacy = "[mcu]\nserial: /dev/ttyACM0\n\n[printer]\nkinematics: corexy\n"
    judged = judge_config("p1", DATA, read(folder(generated(), legacy)))
    assert (judged["state"], judged["converged"], judged["files"]) == ("will write", False, ["printer.cfg"])
    assert judged["reason"] == "update would write printer.cfg (adopted): `ratos-fleet plan --diff` shows how"


def test_files_as_the_update_writes_them_are_converged_and_a_changed_template_is_not() -> None:
    assert judge_config("p1", DATA, read(folder(generated(), RATOS_CFG_INCLUDED)))["converged"] is True
    bigger = judge_config("p1", {**DATA, "printer_size": 400}, read(folder(generated(), RATOS_CFG_INCLUDED)))
    assert (bigger["state"], bigger["files"]) == ("will write", ["RatOS.cfg"])


def test_a_restart_owed_since_a_busy_write_is_not_converged() -> None:
    judged = judge_config("p1", DATA, read(folder(generated(), RATOS_CFG_INCLUDED, marker=True)))
    assert (judged["state"], judged["converged"]) == ("restart owed", False)


def test_the_keep_mode_never_counts_printer_cfg_as_pending() -> None:
    legacy = "[mcu]\nserial: /dev/ttyACM0\n"
    judged = judge_config("p1", {**DATA, "printer_user_config": "keep"}, read(folder(generated(), legacy)))
    assert judged["converged"] is True


def test_an_unread_folder_or_an_unreadable_printer_is_never_converged() -> None:
    assert judge_config("p1", DATA, None) == {"state": "unknown", "converged": None, "files": [],
                                              "reason": "not read"}
    assert judge_config("p1", DATA, read({}))["state"] == "invalid"  # no config folder on the Pi
    bad = judge_config("p1", {**DATA, "printer_model": "v-core-9"}, read(folder(None, None)))
    assert bad["state"] in ("invalid", "unknown") and bad["converged"] is not True
