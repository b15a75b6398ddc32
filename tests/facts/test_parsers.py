"""The facts' pure parsers: the decisions the fixtures record, stated as behaviour."""

from __future__ import annotations

import json
import shlex
import subprocess

from pyinfra_ratos.facts.boards import parse_attached_boards, parse_dfu_flash_map
from pyinfra_ratos.facts.firmware import linked_address, parse_firmware_artifacts
from pyinfra_ratos.facts.klipper import parse_klipper_host, parse_klippy_log, parse_mcu_firmware
from pyinfra_ratos.facts.network import parse_network_reachability
from pyinfra_ratos.facts.printer import parse_printer_activity
from pyinfra_ratos.facts.probe import SHIPPED, SOURCE, json_document, probe_command

DOWN = {"status": 0, "body": None}


def _device(vid: str, pid: str, manufacturer: str, product: str, serial: str, alt0: str | None = None,
            tty: str | None = None) -> dict:
    return {"attrs": {"idVendor": vid, "idProduct": pid, "manufacturer": manufacturer, "product": product,
                      "serial": serial, "busnum": "1", "devnum": "4", "bDeviceClass": "00"},
            "interfaces": {"1.0": {"interface": alt0, "class": "fe", "tty": [tty] if tty else [], "net": []}}}


def test_h723_dfu_flash_map_is_eight_128k_sectors_from_0x08000000() -> None:
    flash = parse_dfu_flash_map("@Internal Flash   /0x08000000/8*128Kg")
    assert flash is not None and flash["name"] == "Internal Flash" and flash["base"] == 0x08000000
    assert [s["size"] for s in flash["sectors"]] == [128 * 1024] * 8
    assert flash["sectors"][-1]["start"] == 0x08000000 + 7 * 128 * 1024


def test_f446_dfu_flash_map_has_mixed_sector_sizes() -> None:
    flash = parse_dfu_flash_map("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg")
    assert flash is not None
    assert [s["size"] // 1024 for s in flash["sectors"]] == [16, 16, 16, 16, 64, 128, 128, 128]


def test_a_board_in_dfu_gets_its_mcu_from_the_flash_layout_alone() -> None:
    raw = {"devices": {"1-1.3": _device("0483", "df11", "STMicroelectronics", "STM32  BOOTLOADER", "800DA10DF712",
                                         alt0="@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg")}}
    board = parse_attached_boards(raw)["1-1.3"]
    assert board["mode"] == "dfu" and board["mcu"] == "stm32f446xx"
    assert board["board_id"] is None
    assert board["board_candidates"] == ["btt-octopus-11", "btt-octopus-11-canbridge", "btt-octopus-pro-446",
                                         "btt-octopus-pro-446-katapult"]


def test_a_ratos_toolboard_serial_names_its_catalog_board() -> None:
    raw = {"devices": {"1-1.2": _device("1d50", "614e", "Klipper", "stm32g0b1xx", "btt-ebb42-12-t0", tty="ttyACM1")},
           "links": {"RatOS": {"btt-ebb42-12-t0": "ttyACM1"}}}
    board = parse_attached_boards(raw)["1-1.2"]
    assert board["board_id"] == "btt-ebb42-12" and board["ratos_link"] == "/dev/RatOS/btt-ebb42-12-t0"
    assert "btt-ebb36-12" in board["board_candidates"]


def test_a_chip_uid_serial_leaves_the_board_open_among_its_mcus_boards() -> None:
    raw = {"devices": {"1-1.1": _device("1d50", "614e", "Klipper", "stm32h723xx", "29001A001151313531383332")}}
    board = parse_attached_boards(raw)["1-1.1"]
    assert board["board_id"] is None and "btt-octopus-pro-h723-11" in board["board_candidates"]


def test_a_serial_naming_a_board_with_another_mcu_is_not_trusted() -> None:
    raw = {"devices": {"1-1.1": _device("1d50", "614e", "Klipper", "stm32f446xx", "btt-octopus-pro-h723-11")}}
    assert parse_attached_boards(raw)["1-1.1"]["board_id"] is None


def test_devices_that_are_no_board_are_left_out() -> None:
    raw = {"devices": {"1-1.1": _device("046d", "0825", "", "C270 HD WEBCAM", "1")}}
    assert parse_attached_boards(raw) == {}


def test_the_same_version_from_moonraker_matches_and_an_unconnected_mcu_is_unknown() -> None:
    ok = {"status": 200}
    raw = {
        "info": {**ok, "body": {"result": {"state": "error", "state_message": "mcu 'EBBCan': Unable to connect",
                                           "software_version": "v0.13.0-3-gb846a96"}}},
        "list": {**ok, "body": {"result": {"objects": ["webhooks", "mcu", "mcu EBBCan", "print_stats"]}}},
        "query": {**ok, "body": {"result": {"status": {
            "mcu": {"mcu_version": "v0.13.0-3-gb846a96", "mcu_build_versions": "gcc", "mcu_constants": {"MCU": "stm32h723xx"}},
            "mcu EBBCan": {}}}}},
    }
    firmware = parse_mcu_firmware(raw)
    assert firmware["source"] == "moonraker" and firmware["klippy_state"] == "error"
    assert firmware["mcus"]["mcu"]["matches_host"] is True
    assert firmware["mcus"]["EBBCan"] == {"version": "", "build_versions": "", "constants": {},
                                          "connected": False, "matches_host": None}


def test_klippy_log_gives_the_last_loaded_mcus_and_the_current_host_version() -> None:
    lines = [
        "Git version: 'v0.12.0-0-g097b935'", "Start printer at x",
        "Loaded MCU 'mcu' 123 commands (v0.12.0-0-g097b935 / gcc)", "MCU 'mcu' config: CLOCK_FREQ=180000000 MCU=stm32f446xx",
        "Git version: 'v0.13.0-3-gb846a96'", "Start printer at y",
        "Loaded MCU 'mcu' 125 commands (v0.13.0-3-gb846a96 / gcc)", "MCU 'mcu' config: CLOCK_FREQ=180000000 MCU=stm32f446xx",
        "Start printer at z",  # a later start that reached no MCU
    ]
    host, mcus = parse_klippy_log(lines)
    assert host == "v0.13.0-3-gb846a96"
    assert mcus["mcu"]["version"] == host and mcus["mcu"]["matches_host"] is True
    assert mcus["mcu"]["constants"] == {"CLOCK_FREQ": 180000000, "MCU": "stm32f446xx"}


def test_a_printing_printer_is_busy_and_a_paused_one_too() -> None:
    def activity(print_state: str, idle: str) -> bool:
        query = {"status": 200, "body": {"result": {"status": {
            "print_stats": {"state": print_state}, "idle_timeout": {"state": idle},
            "virtual_sdcard": {"is_active": print_state == "printing"}, "webhooks": {"state": "ready"}}}}}
        return parse_printer_activity({"info": {"status": 200, "body": {"result": {}}}, "query": query})["busy"]

    assert activity("printing", "Printing") and activity("paused", "Ready")
    assert not activity("standby", "Idle") and not activity("complete", "Idle")
    assert activity("standby", "Printing")  # a G-code macro running from the console


def test_without_moonraker_the_printer_counts_as_busy_unless_klipper_is_stopped() -> None:
    assert parse_printer_activity({"info": DOWN, "klipper_service": "active"})["busy"]
    assert parse_printer_activity({"info": DOWN, "klipper_service": ""})["busy"]
    assert parse_printer_activity({})["busy"]
    assert not parse_printer_activity({"info": DOWN, "klipper_service": "inactive"})["busy"]


def test_a_checkout_owned_by_root_has_no_version_for_pi_but_keeps_its_commit() -> None:
    failed = {"rc": 128, "out": "", "err": "fatal: detected dubious ownership in repository at '/home/pi/klipper'"}
    host = parse_klipper_host({
        "path": "/home/pi/klipper", "exists": True, "ssh_user": "pi", "owner": "root", "venv": True,
        "describe": failed, "describe_trusted": {"rc": 0, "out": "v0.13.0-3-gb846a96-dirty"},
        "commit": {"rc": 0, "out": "b846a96b558d6af7d6635658cfd38aadb2c88f31"},
    })
    assert host["version"] == "" and host["foreign_owner"] and host["dirty"]
    assert host["commit"].startswith("b846a96") and "dubious ownership" in host["git_error"]


def test_network_separates_moonraker_from_the_hosts_checked() -> None:
    network = parse_network_reachability({
        "default_route": False, "dns": {"github.com": False}, "targets": ["github.com:443"],
        "tcp": {"github.com:443": False, "127.0.0.1:7125": True}, "remote": "github.com:443",
        "moonraker_target": "127.0.0.1:7125",
    })
    assert network == {"default_route": False, "dns": False, "resolved": {"github.com": False},
                       "reachable": {"github.com:443": False}, "remote": "github.com:443", "moonraker": True}


def test_an_artifacts_address_is_read_from_its_resolved_config_never_guessed_from_its_bytes() -> None:
    # an EBB USB image is linked at 0x08000000; its reset handler ~30 KiB in would also fit 0x08002000
    image = {"base": None, "size": 40960, "vectors": [[0, 0x20024000, 0x08007805]], "file": "klipper.bin",
             "dict": {"mcu": "stm32g0b1xx", "version": "v0.13.0-730-g84104bbbd"}}
    ebb = ['CONFIG_MACH_STM32=y', 'CONFIG_MCU="stm32g0b1xx"', "CONFIG_STM32_FLASH_START_0000=y",
           "CONFIG_FLASH_APPLICATION_ADDRESS=0x8000000"]
    found = parse_firmware_artifacts({
        "ebb": {"path": "/p/ebb", "files": {}, "image": image, "config": ebb},
        "no-config": {"path": "/p/x", "files": {}, "image": image, "config": None},
    })
    assert found["ebb"]["app_address"] == 0x08000000
    assert found["no-config"]["app_address"] is None


def test_linked_address_follows_kconfig_or_the_stm32_offset_choice() -> None:
    assert linked_address(["CONFIG_FLASH_APPLICATION_ADDRESS=0x8002000"]) == 0x08002000
    assert linked_address(["CONFIG_MACH_STM32=y", "CONFIG_STM32_FLASH_START_20000=y"]) == 0x08020000
    assert linked_address(['CONFIG_MCU="rp2040"', "CONFIG_FLASH_APPLICATION_ADDRESS=0x10000100"]) == 0x10000100
    assert linked_address(["CONFIG_MACH_LINUX=y"]) is None
    assert linked_address("garbage") is None and linked_address(None) is None


def test_the_last_json_line_wins_and_garbage_is_empty() -> None:
    assert json_document(['{"a": 1}', "{}"]) == {}
    assert json_document(["Traceback", '{"a": 1}']) == {"a": 1}
    assert json_document(["sh: 1: python3: not found"]) == {}


def test_the_command_exits_0_and_prints_an_empty_object_without_python3(tmp_path) -> None:
    (tmp_path / "sh").symlink_to("/bin/sh")  # a PATH holding a shell and nothing else
    command = probe_command("boards").get_raw_value()
    done = subprocess.run(["/bin/sh", "-c", command], env={"PATH": str(tmp_path)}, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "{}"


def test_user_values_travel_as_one_quoted_json_argument() -> None:
    command = probe_command("klipper", {"path": "~/it's $(rm -rf ~)"}).get_raw_value()
    words = shlex.split(command)
    assert words[:4] == ["python3", "-I", "-S", "-c"] and words[4] == SHIPPED and words[5] == "klipper"
    assert json.loads(words[6]) == {"path": "~/it's $(rm -rf ~)"}


def test_a_stray_module_in_the_home_folder_does_not_shadow_the_standard_library(tmp_path) -> None:
    """The probe runs in the SSH user's home: a ``json.py`` there must not be imported."""
    (tmp_path / "json.py").write_text("raise SystemExit('shadowed')\n")
    done = subprocess.run(["/bin/sh", "-c", probe_command("no-such-probe").get_raw_value()], cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout) == {"error": "unknown probe 'no-such-probe'"}


def test_the_shipped_program_is_the_source_compressed() -> None:
    """What travels unpacks to exactly the probe's source, in base64 (no quote for the shell to
    multiply), and is well under half its size."""
    import base64
    import zlib

    blob = SHIPPED.split("a2b_base64('", 1)[1].rsplit("')", 1)[0]
    assert zlib.decompress(base64.b64decode(blob)).decode("utf-8") == SOURCE
    assert "'" not in blob and len(SHIPPED) < len(SOURCE) / 2
