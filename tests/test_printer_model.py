"""Inventory host data -> printer spec -> template context -> rendered, valid Klipper config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.printer import klipper_config as kc
from pyinfra_ratos.printer import model as pm
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.templates import TemplateRenderError, environment, render

CATALOG = load_catalog()
OCTOPUS = "btt-octopus-pro-h723-11"


def spec(**data: Any) -> pm.PrinterSpec:
    return pm.parse_printer_data("vcore-01", {"printer_model": "v-core-3", "boards": [{"board": OCTOPUS}], **data}, CATALOG)


def rendered(s: pm.PrinterSpec, serials: dict[str, str | None] | None = None, user_dir: str | None = None) -> str:
    context = pm.template_context(s, serials or {e.mcu_name: f"/dev/RatOS/{e.board.id}" for e in s.boards})
    return render("RatOS.cfg.j2", {**context, "generated": "RatOS.cfg"}, user_dir)


def attached(**boards: dict[str, Any]) -> dict[str, dict[str, Any]]:
    base = {"mode": "klipper", "board_id": None, "board_candidates": [], "ratos_link": None, "by_id": None}
    return {port: {**base, "port": port, **info} for port, info in boards.items()}


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(pm.PrinterDataError) as caught:
        pm.parse_printer_data("vcore-07", data, CATALOG)
    assert str(caught.value).startswith("vcore-07: invalid printer data")
    return caught.value.errors


def test_every_bad_field_is_reported_at_once_with_its_fix() -> None:
    errors = errors_of({"printer_model": "v-core-9", "boards": [{"board": "nope"}], "hotend": "x\n[mcu]",
                        "stepper_current": {"x": 9, "w": 1}, "klipper_commit": "main"})
    fields = [e.split(":")[0] for e in errors]
    assert fields == ["printer_model", "boards[0].board", "hotend", "stepper_current.x", "stepper_current.w",
                      "klipper_commit"]
    assert all("Fix:" in e for e in errors)


def test_a_newline_in_any_string_value_is_rejected() -> None:
    errors = errors_of({"printer_model": "v-core-3", "boards": [{"board": OCTOPUS, "serial": "/dev/x\n[mcu]"}]})
    assert errors[0].startswith("boards[0].serial:") and "line break" in errors[0]


def test_size_must_exist_for_the_model_and_defaults_to_the_usual_one() -> None:
    assert spec().size == 300 and spec(printer_model="v-minion").size == 180
    assert errors_of({"printer_model": "v-core-4", "printer_size": 200, "boards": [{"board": OCTOPUS}]})[0].startswith(
        "printer_size: 200 is not a v-core-4 size")


def test_mcu_names_default_from_the_catalog() -> None:
    s = spec(boards=[{"board": OCTOPUS}, {"board": "btt-ebb42-12"}, {"board": "rpi"}])
    assert [e.mcu_name for e in s.boards] == ["mcu", "toolboard_t0", "rpi"]


def test_boards_need_a_main_mcu_and_unique_names_and_can_boards_a_uuid() -> None:
    errors = errors_of({"printer_model": "v-core-3", "boards": [
        {"board": "btt-ebb42-12", "mcu_name": "tool"}, {"board": "btt-ebb36-12-can", "mcu_name": "tool"}]})
    assert [e.split(":")[0] for e in errors] == ["boards[1].mcu_name", "boards[1].canbus_uuid", "boards"]


def test_serial_prefers_the_ratos_link_then_by_id_of_a_board_running_klipper() -> None:
    entry = spec().boards[0]
    linked = attached(**{"1-1.1": {"board_id": OCTOPUS, "ratos_link": f"/dev/RatOS/{OCTOPUS}", "by_id": "/dev/serial/by-id/a"}})
    assert pm.choose_serial(entry, linked, None).path == f"/dev/RatOS/{OCTOPUS}"
    uid = attached(**{"1-1.1": {"board_candidates": [OCTOPUS, "btt-kraken"], "by_id": "/dev/serial/by-id/usb-Klipper_x-if00"}})
    assert pm.choose_serial(entry, uid, None) == pm.SerialChoice("/dev/serial/by-id/usb-Klipper_x-if00")


def test_a_board_in_dfu_keeps_the_serial_already_configured() -> None:
    entry = spec().boards[0]
    dfu = attached(**{"1-1.1": {"board_id": OCTOPUS, "mode": "dfu"}})
    choice = pm.choose_serial(entry, dfu, "/dev/serial/by-id/usb-Klipper_old-if00")
    assert choice.path == "/dev/serial/by-id/usb-Klipper_old-if00" and "dfu mode" in choice.note
    assert pm.choose_serial(entry, {}, None).path == f"/dev/RatOS/{OCTOPUS}"


def test_two_identical_boards_need_a_port() -> None:
    twins = attached(**{"1-1.1": {"board_id": OCTOPUS, "by_id": "/a"}, "1-1.2": {"board_id": OCTOPUS, "by_id": "/b"}})
    assert "set boards[].port" in pm.choose_serial(spec().boards[0], twins, None).note
    by_port = spec(boards=[{"board": OCTOPUS, "port": "1-1.2"}]).boards[0]
    assert pm.choose_serial(by_port, twins, None).path == "/b"


def test_previous_serials_are_read_from_the_generated_file() -> None:
    text = "[mcu]\nserial: /dev/a\n\n[mcu toolboard_t0]\nserial = /dev/b\n[printer]\nserial: no\n"
    assert pm.previous_serials(text) == {"mcu": "/dev/a", "mcu toolboard_t0": "/dev/b"}


@pytest.mark.parametrize("model", sorted(pm.MODELS))
def test_each_model_renders_a_valid_config_with_its_includes(model: str) -> None:
    s = spec(printer_model=model, boards=[{"board": OCTOPUS}, {"board": "btt-ebb42-12"}, {"board": "rpi"}],
             hotend="rapido", probe="bltouch", stepper_current={"x": 1.6, "z": 1.2, "e": 0.7})
    text = rendered(s)
    assert kc.validate(text) == []
    assert kc.include_targets(text) == [
        f"RatOS/printers/{model}/{model}.cfg", f"RatOS/boards/{OCTOPUS}/config.cfg",
        "RatOS/boards/btt-ebb42-12/config.cfg", "RatOS/hotends/rapido.cfg", "RatOS/z-probe/bltouch.cfg"]
    assert f"[mcu]\nserial: /dev/RatOS/{OCTOPUS}\n" in text
    assert "[mcu toolboard_t0]\nserial: /dev/RatOS/btt-ebb42-12\n" in text
    assert "[mcu rpi]\nserial: /dev/RatOS/rpi\n" in text
    assert f"[stepper_x]\nposition_max: {s.size}\n" in text
    z_sections = [n for n in (x.name for x in kc.sections(text)) if n.startswith("tmc2209 stepper_z")]
    assert len(z_sections) == s.model.z_steppers


def test_host_mcu_and_can_toolboard_serials() -> None:
    s = spec(boards=[{"board": OCTOPUS}, {"board": "rpi"},
                     {"board": "btt-ebb36-12-can", "canbus_uuid": "a1b2c3d4e5f6"}])
    serials = {e.mcu_name: pm.choose_serial(e, {}, None).path for e in s.boards}
    assert serials["rpi"] == pm.HOST_MCU_SERIAL and serials["toolboard_t0"] is None
    text = rendered(s, serials)
    assert "[mcu toolboard_t0]\ncanbus_uuid: a1b2c3d4e5f6\n" in text and kc.validate(text) == []


def test_rendering_is_deterministic() -> None:
    assert rendered(spec()) == rendered(spec())


def test_an_injected_value_stops_rendering_at_its_template_line() -> None:
    context = {**pm.template_context(spec(), {"mcu": "/dev/x\n[mcu evil]"}), "generated": "RatOS.cfg"}
    with pytest.raises(TemplateRenderError) as caught:
        render("RatOS.cfg.j2", context)
    source = (Path(environment().loader.get_source(environment(), "RatOS.cfg.j2")[1])).read_text().splitlines()
    assert caught.value.template == "RatOS.cfg.j2" and "serial: {{ mcu.serial }}" in source[caught.value.line - 1]
    assert "line break" in caught.value.message


def test_a_user_template_folder_overrides_and_extends_the_packaged_one(tmp_path: Path) -> None:
    (tmp_path / "RatOS.cfg.j2").write_text(
        '{% extends "builtin/RatOS.cfg.j2" %}\n{% block size %}\n\n[stepper_x]\nposition_max: 123\n{% endblock %}\n')
    text = rendered(spec(), user_dir=str(tmp_path))
    assert "position_max: 123" in text and "[stepper_y]" not in text and "[mcu]" in text


def test_a_missing_variable_in_a_user_template_names_template_and_line(tmp_path: Path) -> None:
    (tmp_path / "RatOS.cfg.j2").write_text("[printer]\n\nmax_accel: {{ max_accel }}\n")
    with pytest.raises(TemplateRenderError) as caught:
        rendered(spec(), user_dir=str(tmp_path))
    assert (caught.value.template, caught.value.line) == ("RatOS.cfg.j2", 3)
