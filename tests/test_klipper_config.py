"""Klipper config text: validation, the SAVE_CONFIG block, adopting a user file, moonraker pins."""

from __future__ import annotations

from pyinfra_ratos.printer import klipper_config as kc
from pyinfra_ratos.facts.printer_files import parse_printer_files
from pyinfra_ratos.operations.moonraker import pin_commits
from pyinfra_ratos.operations.printer import install_command, file_write, FileWrite, plan_user_file
from pyinfra_ratos.sim import pihome

BOARDS = [{"board": "btt-octopus-pro-h723-11", "mcu_name": "mcu"}, {"board": "btt-ebb42-12", "mcu_name": "toolboard_t0"}]
LEGACY = pihome.printer_cfg("vcore-01", "v-core-3", BOARDS)
GENERATED = """# generated
[include RatOS/printers/v-core-4/v-core-4.cfg]
[include RatOS/boards/btt-manta-m8p-20/config.cfg]

[mcu]
serial: /dev/RatOS/btt-manta-m8p-20

[stepper_x]
position_max: 400
"""


def test_a_ratos_printer_cfg_is_valid_with_its_save_config_block() -> None:
    assert kc.validate(LEGACY, allow_save_config=True) == []


def test_save_config_lines_in_a_generated_file_are_refused() -> None:
    problems = kc.validate(GENERATED + "#*# [extruder]\n")
    assert [p.line for p in problems] == [10]
    assert "SAVE_CONFIG" in problems[0].message


def test_duplicate_section_in_one_file_names_both_lines() -> None:
    problems = kc.validate("[mcu]\nserial: /a\n\n[mcu]\nserial: /b\n")
    assert [(p.line, p.message) for p in problems] == [(4, "duplicate section [mcu] (first at line 1)")]


def test_malformed_headers_and_stray_lines_are_reported_with_their_line() -> None:
    text = "[mcu\nserial: /a\n[ mcu ]\n[printer]\nthis is not an option\n  continued\n[]\n"
    lines = sorted(p.line for p in kc.validate(text))
    assert lines == [1, 2, 3, 5, 6, 7]


def test_gcode_macro_with_indented_lines_and_comments_is_valid() -> None:
    text = "[gcode_macro X]  # a macro\ngcode:\n    G28\n\n    G1 X5 ; move\n[include a.cfg]\n"
    assert kc.validate(text) == []


def test_missing_include_targets_are_named_and_globs_are_skipped() -> None:
    text = "[include RatOS/a.cfg]\n[include RatOS/b.cfg]\n[include macros/*.cfg]\n"
    problems = kc.missing_includes(text, lambda target: target == "RatOS/a.cfg")
    assert [(p.line, p.message) for p in problems] == [(2, "[include RatOS/b.cfg]: no such file on the Pi")]


def test_split_then_merge_keeps_the_block_byte_for_byte() -> None:
    body, block = kc.split_save_config(LEGACY)
    assert body + block == LEGACY
    assert block.startswith(kc.SAVE_CONFIG_MARKER) and block == pihome.save_config_block("vcore-01")
    merged = kc.merge_save_config("[include RatOS.cfg]\n\n\n", block)
    assert merged == "[include RatOS.cfg]\n\n" + block


def test_the_marker_only_counts_at_the_start_of_a_line() -> None:
    text = "[printer]\n# see " + kc.SAVE_CONFIG_MARKER + "\n"
    assert kc.split_save_config(text) == (text, "")


def test_orphan_autosave_lines_are_found() -> None:
    assert kc.orphan_autosave_lines("[printer]\n#*# [extruder]\n") == [2]


def test_adopting_comments_out_what_the_generated_file_now_sets_and_keeps_the_rest() -> None:
    adopted = kc.adopt_user_config(LEGACY, "RatOS.cfg", kc.superseded_by(GENERATED))
    assert kc.includes_file(adopted, "RatOS.cfg")
    assert adopted.index("[include RatOS.cfg]") < adopted.index("#[include RatOS/printers/v-core-3")
    assert "\n#[mcu]\n#serial: /dev/RatOS/btt-octopus-pro-h723-11\n" in adopted
    # no [mcu toolboard_t0] in the generated file: the user's stays active
    assert "\n[mcu toolboard_t0]\nserial: /dev/RatOS/btt-ebb42-12\n" in adopted
    user_macro = "# The owner's own macro, kept across every regeneration.\n[gcode_macro OWNER_PURGE]\ngcode:\n    G1 X5 Y5 F6000\n"
    assert user_macro in adopted and "[printer]\nmax_velocity: 300\n" in adopted
    assert adopted.endswith(pihome.save_config_block("vcore-01"))
    assert kc.validate(adopted, allow_save_config=True) == []


def test_adopting_a_file_without_sections_appends_the_include() -> None:
    assert kc.adopt_user_config("# empty", "RatOS.cfg", lambda name: False) == "# empty\n[include RatOS.cfg]\n"


def test_injected_values_are_refused() -> None:
    assert kc.value_problem("ok-value_1.2") is None
    assert "line break" in kc.value_problem("x\n[mcu]")
    assert "bracket" in kc.value_problem("x[y")
    assert "SAVE_CONFIG" in kc.value_problem("x #*# y")


def test_set_option_replaces_in_place_or_appends_to_the_section() -> None:
    conf = pihome.moonraker_conf()
    pinned = kc.set_option(conf, "update_manager klipper", "pinned_commit", "a" * 40)
    assert pinned == conf.replace("managed_services: klipper\n", f"managed_services: klipper\npinned_commit: {'a' * 40}\n")
    again = kc.set_option(pinned, "update_manager klipper", "pinned_commit", "b" * 40)
    assert again == pinned.replace("a" * 40, "b" * 40)
    assert kc.set_option(conf, "update_manager moonraker", "pinned_commit", "a" * 40) is None


def test_pin_commits_reports_update_managers_that_do_not_exist() -> None:
    text, missing = pin_commits(pihome.moonraker_conf(), {"klipper": "c" * 40, "crowsnest": "d" * 40})
    assert "pinned_commit: " + "c" * 40 in text and missing == ["crowsnest"]


def test_printer_files_output_round_trips_exact_bytes() -> None:
    import base64

    raw = "[printer]\r\nx: 1\t\n\xe9".encode("latin-1")
    lines = ["dir\t/home/pi/printer_data/config\t100",
             "file\tprinter.cfg\t644 pi pi 17\tabc", "missing\tRatOS.cfg",
             "text\tprinter.cfg\t" + base64.b64encode(raw).decode(), "include\tRatOS/a.cfg\t1", "include\tb.cfg\t0"]
    parsed = parse_printer_files(lines)
    assert parsed["free_bytes"] == 102400 and parsed["includes"] == {"RatOS/a.cfg": True, "b.cfg": False}
    text = parsed["files"]["printer.cfg"]["text"]
    assert text.encode("utf-8", errors="surrogateescape") == raw
    assert parsed["files"]["RatOS.cfg"]["exists"] is False
    assert parse_printer_files(["nodir"]) == {}


def test_user_file_modes() -> None:
    rendered = "[include RatOS.cfg]\n"
    assert plan_user_file("keep", None, False, "RatOS.cfg", GENERATED, rendered)[0] == rendered
    text, note, _ = plan_user_file("keep", LEGACY, True, "RatOS.cfg", GENERATED, rendered)
    assert text is None and "no effect" in note
    assert plan_user_file("adopt", rendered, True, "RatOS.cfg", GENERATED, rendered)[0] is None
    regenerated, _, errors = plan_user_file("regenerate", LEGACY, True, "RatOS.cfg", GENERATED, rendered)
    assert errors == [] and regenerated == rendered + "\n" + pihome.save_config_block("vcore-01")
    _, _, errors = plan_user_file("regenerate", "[printer]\n#*# x = 1\n", True, "RatOS.cfg", GENERATED, rendered)
    assert errors and "lose" in errors[0]


def test_no_write_when_the_file_already_holds_the_text() -> None:
    from pyinfra_ratos.facts.printer_files import sha256_text

    current = {"exists": True, "sha256": sha256_text("a\n"), "size": 2, "text": "a\n"}
    assert file_write("RatOS.cfg", "a\n", current, "generated") is None
    write = file_write("RatOS.cfg", "b\n", current, "generated")
    assert isinstance(write, FileWrite) and write.old_sha256 == current["sha256"]


def test_install_checks_upload_and_old_content_before_the_rename() -> None:
    write = FileWrite("RatOS.cfg", "b\n", "a\n", "0" * 64, 2, "generated")
    script = str(install_command("/home/pi/printer_data/config", write, ".RatOS.cfg.pyinfra-ratos.tmp", 5).get_raw_value())
    assert script.index("uploaded copy is incomplete") < script.index("changed on the Pi") < script.index("cp -p")
    assert script.index("cp -p") < script.index("mv -f") < script.index("tail -n +6")


def test_adopting_reports_only_problems_it_introduces() -> None:
    from pyinfra_ratos.operations.printer import new_problems

    quirky = "[printer]\nmax_accel: 1\n\n[printer]\nmax_accel: 2\n"  # klippy merges these
    adopted = kc.adopt_user_config(quirky, "RatOS.cfg", lambda name: False)
    assert new_problems(quirky, adopted) == []
    assert [p.line for p in new_problems(quirky, adopted + "#*# forged\n")] == [8]
