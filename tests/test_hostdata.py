"""Inventory validation: every bad field of every host, one clear line each, before any SSH command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.firmware import settings as fs
from pyinfra_ratos.printer import model as pm
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.fleet.hostdata import InventoryError, parse_boards, validate_inventory

CATALOG = load_catalog()
OCTOPUS = "btt-octopus-pro-h723-11"
LINE = re.compile(r"^host (\S+): field '([^']+)'")
ROOT = Path(__file__).resolve().parents[1]


def good(**data: Any) -> dict[str, Any]:
    return {"ssh_hostname": "10.0.0.5", "boards": [{"board": OCTOPUS, "port": "1-1.3"}], **data}


def problems(hosts: dict[str, dict[str, Any]], override: dict[str, Any] | None = None, **kwargs: Any) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        validate_inventory(hosts, override or {}, CATALOG, **kwargs)
    return caught.value.lines


def fields(lines: list[str]) -> list[tuple[str, str]]:
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    return [(m.group(1), m.group(2)) for m in matches if m]


@pytest.fixture
def klipper_source(tmp_path: Path) -> str:
    (tmp_path / "klipper" / ".git").mkdir(parents=True)
    return str(tmp_path / "klipper")


def test_a_valid_host_gives_its_boards_and_only_the_settings_it_uses() -> None:
    settings = validate_inventory({"pi": good()}, {}, CATALOG)["pi"]
    assert [(b.board.id, b.mcu_name, b.port) for b in settings.boards] == [(OCTOPUS, "mcu", "1-1.3")]
    assert settings.printer is None and settings.firmware is None


def test_every_problem_of_every_host_is_one_line_naming_host_and_field() -> None:
    lines = problems({
        "a": good(printer_model="v-core-9"),
        "b": good(boards=[{"board": "nope", "port": "usb3"}]),
    })
    assert fields(lines) == [("a", "printer_model"), ("b", "boards[0].board"), ("b", "boards[0].port")]
    assert all("Fix:" in line for line in lines)


def test_an_unknown_board_id_suggests_the_closest_catalog_id() -> None:
    [line] = problems({"pi": good(boards=[{"board": "btt-octopus-pro-h723-1"}])})
    assert "'btt-octopus-pro-h723-1' is not in the board catalog" in line
    assert "did you mean 'btt-octopus-pro-h723" in line


def test_a_bad_printer_model_lists_the_models() -> None:
    [line] = problems({"pi": good(printer_model="vcore3")})
    assert line.startswith("host pi: field 'printer_model': 'vcore3' is not a known model")
    assert "v-core-3, v-core-4, v-minion" in line


@pytest.mark.parametrize("serial", ["ttyACM0", "/dev/serial/by-id/usb x", 42])
def test_a_malformed_serial_path_is_refused(serial: Any) -> None:
    [line] = problems({"pi": good(boards=[{"board": OCTOPUS, "serial": serial}])})
    assert fields([line]) == [("pi", "boards[0].serial")] and "/dev/serial/by-id/" in line


def test_a_serial_path_with_a_line_break_is_refused_as_config_injection() -> None:
    [line] = problems({"pi": good(boards=[{"board": OCTOPUS, "serial": "/dev/x\n[mcu]"}])})
    assert "line break" in line


@pytest.mark.parametrize("port", ["usb3", "1.3", "1-0", "0-1", "1-1.3.", 13])
def test_a_bad_usb_port_is_refused(port: Any) -> None:
    [line] = problems({"pi": good(boards=[{"board": OCTOPUS, "port": port}])})
    assert fields([line]) == [("pi", "boards[0].port")] and '"1-1.3"' in line


@pytest.mark.parametrize("port", ["1-1", "1-1.3", "3-1.4.2", "1-1.2.3.4.5.6"])
def test_usb_port_paths_are_accepted(port: str) -> None:
    validate_inventory({"pi": good(boards=[{"board": OCTOPUS, "port": port}])}, {}, CATALOG)


def test_wrong_types_are_named() -> None:
    lines = problems({"pi": good(ssh_port="22", ssh_allow_agent="no", printer_model="v-core-3",
                                 printer_size="300", stepper_current=1.2)})
    assert fields(lines) == [("pi", "ssh_port"), ("pi", "ssh_allow_agent"), ("pi", "printer_size"),
                             ("pi", "stepper_current")]
    assert "'22' is a str; pyinfra expects int" in lines[0]


def test_a_misspelt_key_suggests_the_known_one() -> None:
    [line] = problems({"pi": good(printer_modle="v-core-3")})
    assert line.startswith("host pi: field 'printer_modle': unknown data key. Fix: did you mean 'printer_model'?")


def test_a_misspelt_board_key_suggests_the_known_one() -> None:
    [line] = problems({"pi": good(boards=[{"board": OCTOPUS, "prot": "1-1.3"}])})
    assert fields([line]) == [("pi", "boards[0].prot")] and "did you mean 'port'?" in line


def test_keys_of_the_users_own_deploys_are_declared_not_flagged() -> None:
    [line] = problems({"pi": good(farm_room="B")})
    assert "custom_data_keys" in line
    validate_inventory({"pi": good(farm_room="B", custom_data_keys=["farm_room"])}, {}, CATALOG)


def test_pyinfra_printer_and_firmware_keys_are_known(klipper_source: str) -> None:
    data = good(
        ssh_user="pi", ssh_port=22, ssh_key="~/.ssh/id_ed25519", ssh_known_hosts_file="~/.ssh/known_hosts",
        ssh_strict_host_key_checking="yes", ssh_connect_retries=2, ssh_paramiko_connect_kwargs={},
        _sudo=True, _env={"LANG": "C"}, docker_identifier="x",
        printer_model="v-core-3", printer_size=300, hotend="rapido", extruder="orbiter-v2-0", probe="bltouch",
        stepper_driver="tmc2209", stepper_current={"x": 1.6}, printer_templates="~/templates",
        printer_user_config="keep", printer_when_busy="defer", printer_backups=3, printer_config_dir="~/cfg",
        klipper_commit="a" * 40, klipper_source=klipper_source, firmware_cache="~/cache", flash_backend="pyusb",
        allow_unclean_build=False,
    )
    settings = validate_inventory({"pi": data}, {}, CATALOG)["pi"]
    assert settings.printer is not None and settings.firmware is not None


def test_attended_flash_is_accepted_from_the_command_line_only(klipper_source: str) -> None:
    [line] = problems({"pi": good(klipper_source=klipper_source, attended_flash=True)})
    assert line.startswith("host pi: field 'attended_flash' is set in the inventory")
    # --data puts it into every host's data too: that is the accepted way
    found = validate_inventory({"pi": good(klipper_source=klipper_source, attended_flash=True)},
                               {"attended_flash": True}, CATALOG)
    assert found["pi"].firmware is not None and found["pi"].firmware.attended_flash


def test_the_printer_deploy_tuning_keys_are_checked() -> None:
    lines = problems({"pi": good(printer_model="v-core-3", printer_user_config="replace", printer_when_busy="skip",
                                 printer_backups=0)})
    assert [f for _, f in fields(lines)] == ["printer_user_config", "printer_when_busy", "printer_backups"]


def test_a_required_deploy_makes_its_missing_keys_problems() -> None:
    validate_inventory({"pi": good()}, {}, CATALOG)
    lines = problems({"pi": good()}, require=("printer", "firmware"))
    assert [f for _, f in fields(lines)] == ["printer_model", "klipper_source"]


def test_a_bad_klipper_commit_is_refused_whichever_deploy_runs() -> None:
    [line] = problems({"pi": good(klipper_commit="master")})
    assert fields([line]) == [("pi", "klipper_commit")] and "40 lower-case hex digits" in line


def test_a_bad_board_is_reported_once_although_both_deploys_read_boards(klipper_source: str) -> None:
    lines = problems({"pi": good(printer_model="v-core-3", klipper_source=klipper_source,
                                 boards=[{"board": OCTOPUS, "port": "x"}])})
    assert fields(lines) == [("pi", "boards[0].port")]


def test_both_deploys_read_the_same_boards_with_the_same_mcu_names(klipper_source: str) -> None:
    boards = [{"board": OCTOPUS}, {"board": "btt-ebb42-12", "kconfig": {"USB_SERIAL_NUMBER": "t0"}}, {"board": "rpi"}]
    spec = pm.parse_printer_data("pi", {"printer_model": "v-core-3", "boards": boards}, CATALOG)
    firmware = fs.firmware_settings("pi", {"boards": boards, "klipper_source": klipper_source}, {}, CATALOG)
    names = ["mcu", "toolboard_t0", "rpi"]
    assert [e.mcu_name for e in spec.boards] == [t.mcu_name for t in firmware.targets] == names
    assert firmware.targets[1].overrides == {"USB_SERIAL_NUMBER": "t0"}


@pytest.mark.parametrize("kconfig", ["USB_SERIAL_NUMBER=x", {"CLOCK_FREQ": 1}, {"usb_serial_number": "x"}])
def test_a_bad_kconfig_override_is_a_board_problem(kconfig: Any) -> None:
    entries, found = parse_boards([{"board": OCTOPUS, "kconfig": kconfig}], CATALOG)
    assert entries == [] and [f for f, _ in found] == ["boards[0].kconfig"]
    assert found[0][1].count("Fix:") == 1


def test_a_can_board_needs_its_uuid() -> None:
    entries, found = parse_boards([{"board": OCTOPUS}, {"board": "btt-ebb36-12-can"}], CATALOG)
    assert [f for f, _ in found] == ["boards[1].canbus_uuid"]


@pytest.mark.parametrize("entry,field,words", [
    ({"board": "btt-octopus-pro-h723-11-canbridge"}, "boards[0].canbus_uuid", "USB-to-CAN bridge"),
    ({"board": "btt-ebb36-12-can", "canbus_uuid": "A1B2C3D4E5F6"}, "boards[1].canbus_uuid", "lower-case hex"),
    ({"board": "btt-ebb36-12-can", "canbus_uuid": "a1b2c3d4e5"}, "boards[1].canbus_uuid", "12 lower-case hex"),
    ({"board": "btt-ebb36-12-can", "canbus_uuid": "a1b2c3d4e5f6", "port": "1-1.2"}, "boards[1].port",
     "remove port"),
    ({"board": "btt-ebb36-12", "canbus_uuid": "a1b2c3d4e5f6"}, "boards[1].canbus_uuid", "not a CAN node"),
])
def test_a_bad_canbus_uuid_is_named_with_its_field_and_fix(entry: dict, field: str, words: str) -> None:
    boards = [entry] if "canbridge" in entry["board"] else [{"board": OCTOPUS}, entry]
    entries, found = parse_boards(boards, CATALOG)
    assert field in [f for f, _ in found], found
    text = dict(found)[field]
    assert words in text and "Fix:" in text


def test_two_nodes_with_one_uuid_are_refused() -> None:
    boards = [{"board": "btt-octopus-pro-h723-11-canbridge", "canbus_uuid": "a1b2c3d4e5f6"},
              {"board": "btt-ebb36-12-can", "canbus_uuid": "a1b2c3d4e5f6"}]
    assert [f for f, _ in parse_boards(boards, CATALOG)[1]] == ["boards[1].canbus_uuid"]


def test_the_example_inventories_are_valid(tmp_path: Path) -> None:
    # loaded by pyinfra's own inventory code, in a child: pyinfra_cli patches the stdlib for gevent
    (tmp_path / ".git").mkdir()
    script = (
        "import json, sys\n"
        "from pyinfra_ratos.fleet import api as fleet_api\n"
        "from pyinfra_ratos.firmware.catalog import load_catalog\n"
        "from pyinfra_ratos.fleet.hostdata import validate_inventory\n"
        "out = {}\n"
        "for path in sys.argv[2:]:\n"
        "    inventory = fleet_api.load_inventory(path, override_data={'klipper_source': sys.argv[1]})\n"
        "    found = validate_inventory(fleet_api.host_data(inventory), fleet_api.override_data(inventory),\n"
        "                               load_catalog(), require=('printer', 'firmware', 'provision'))\n"
        "    out[path] = {h: sorted(inventory.get_host(h).groups) for h in found}\n"
        "    out[path + ':ssh'] = sorted({(s.data['ssh_known_hosts_file'], s.data['ssh_strict_host_key_checking'])\n"
        "                                 for s in found.values()})\n"
        "print(json.dumps(out))\n"
    )
    paths = [str(ROOT / "inventory" / "single.py"), str(ROOT / "inventory" / "farm.py")]
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), *paths],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert list(found[paths[0]]) == ["vcore-workshop"]
    farm = found[paths[1]]
    assert {h for h, groups in farm.items() if "canary" in groups} == {"vcore3-01", "vminion-01"}
    assert {h for h, groups in farm.items() if "production" in groups} == {"vcore3-02", "vcore3-03", "vcore4-01"}
    # host keys pinned, in the known_hosts file beside the inventory (wherever it is copied)
    assert found[paths[0] + ":ssh"] == found[paths[1] + ":ssh"] == [[str(ROOT / "inventory" / "known_hosts"), "yes"]]


def test_provision_needs_the_fleet_commit_when_required() -> None:
    validate_inventory({"pi": good()}, {}, CATALOG)
    lines = problems({"pi": good()}, require=("provision",))
    assert fields(lines) == [("pi", "klipper_commit")] and "missing" in lines[0]


def test_the_deploys_refuse_a_host_with_the_same_lines_as_the_inventory_check() -> None:
    from pyinfra_ratos.printer.provision_settings import provision_settings

    data = good(klipper_commit="a" * 40, timezone="Europe/Copenhagen\n", config_backup_keep=0)
    settings, errors = provision_settings("pi", data)
    assert settings is None and errors == problems({"pi": data})


def test_controller_paths_are_expanded_and_the_pis_config_folder_is_not(klipper_source: str) -> None:
    from pyinfra_ratos.printer.provision_settings import provision_settings

    data = good(klipper_commit="a" * 40, klipper_source=klipper_source, firmware_cache="~/fw",
                printer_model="v-core-3", config_backups="~/backups", klipper_bundle_cache="~/bundles",
                printer_config_dir="~/cfg")
    settings, _ = provision_settings("pi", data)
    home = str(Path.home())
    assert settings is not None
    assert (settings.backups, settings.bundle_cache) == (f"{home}/backups", f"{home}/bundles")
    assert settings.config_dir == "~/cfg"  # resolved on the Pi, as the Pi user's home
    firmware = validate_inventory({"pi": data}, {}, CATALOG)["pi"].firmware
    assert firmware is not None and str(firmware.cache) == f"{home}/fw"


def test_the_example_known_hosts_is_a_commented_placeholder_and_the_readme_says_how_to_fill_it() -> None:
    known_hosts = ROOT / "inventory" / "known_hosts"
    assert all(not line.strip() or line.startswith("#") for line in known_hosts.read_text().splitlines())
    assert "ssh-keyscan -H" in known_hosts.read_text() and "ssh-keyscan -H" in (ROOT / "README.md").read_text()
