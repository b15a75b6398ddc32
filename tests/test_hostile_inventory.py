"""Hostile inventory values: each refused before any SSH command, naming host and field, never a traceback.

Two halves: a corpus of (key, bad value) pairs that only grows (every value that once got past
validation goes in), and properties driven by hypothesis: every string a deploy reads, with shell
syntax, a control character or a huge tail put anywhere into a valid value, is refused; a value
of a wrong type is refused; and any value at all, for any key, any board field or any host name,
ends in a valid inventory or an InventoryError whose every line names host and field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.fleet.hostdata import InventoryError, known_keys, validate_inventory

CATALOG = load_catalog()
OCTOPUS, EBB42, EBB36_CAN = "btt-octopus-pro-h723-11", "btt-ebb42-12", "btt-ebb36-12-can"
REQUIRE = ("printer", "firmware", "provision")
SECRET = "hunter2-do-not-echo"
LINE = re.compile(r"host .+?: (field '|--data )")  # a host name that is not plain is shown quoted


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    checkout = tmp_path_factory.mktemp("klipper")
    (checkout / ".git").mkdir()
    return str(checkout)


def full_host(source: str) -> dict[str, Any]:
    """A host that sets every key pyinfra-ratos reads, each to a valid value."""
    return {
        "ssh_hostname": "10.0.0.5", "ssh_user": "pi", "ssh_port": 22, "ssh_key": "~/.ssh/id_ed25519",
        "ssh_password": SECRET, "ssh_known_hosts_file": "~/farm/known_hosts", "ssh_strict_host_key_checking": "yes",
        "boards": [
            {"board": OCTOPUS, "port": "1-1.3", "serial": "/dev/serial/by-id/usb-Klipper_stm32h723xx_0-if00",
             "kconfig": {"USB_SERIAL_NUMBER": "octopus-01"}},
            {"board": EBB42, "port": "1-1.4"},
            {"board": EBB36_CAN, "mcu_name": "toolboard_t1", "canbus_uuid": "a1b2c3d4e5f6"},
        ],
        "printer_model": "v-core-3", "printer_size": 300, "hotend": "rapido", "extruder": "orbiter-v2-0",
        "probe": "bltouch", "stepper_driver": "tmc2209", "stepper_current": {"x": 1.6, "z": 1.2},
        "printer_templates": "~/ratos-templates", "printer_user_config": "adopt", "printer_when_busy": "write",
        "printer_backups": 5, "printer_config_dir": "~/printer_data/config",
        "klipper_commit": "a" * 40, "klipper_source": source, "firmware_cache": "~/.cache/firmware",
        "flash_backend": "dfu-util", "allow_unclean_build": "no", "firmware_build": "controller",
        "klipper_remote": "https://github.com/Klipper3d/klipper.git", "klipper_bundle_cache": "~/.cache/bundles",
        "hostname": "vcore-01", "timezone": "Europe/Copenhagen", "build_on_pi": "yes",
        "provision_services": ["klipper", "moonraker"], "config_backups": "~/backups", "config_backup_keep": 20,
        "custom_data_keys": ["farm_room"], "farm_room": "B",
    }


def outcome(hosts: dict[Any, Any], override: dict[str, Any] | None = None) -> list[str]:
    """The problem lines of an inventory ([] when it is valid); any other exception fails the test."""
    try:
        validate_inventory(hosts, override or {}, CATALOG, require=REQUIRE)
    except InventoryError as error:
        assert error.lines and all(LINE.match(line) for line in error.lines), error.lines
        assert all(len(line) < 700 for line in error.lines), "an error line quotes too much"
        return error.lines
    return []


def refused(lines: list[str], host: str, field: str) -> bool:
    return any(line.startswith((f"host {host}: field '{field}", f"host {host!r}: field '{field}")) for line in lines)


# --- where a value goes ----------------------------------------------------------------------

Setter = Callable[[dict[str, Any], Any], dict[str, Any]]


def top(key: str) -> Setter:
    return lambda data, value: {**data, key: value}


def board(index: int, key: str) -> Setter:
    return lambda data, value: {**data, "boards": [{**entry, key: value} if n == index else entry
                                                    for n, entry in enumerate(data["boards"])]}


def kconfig(make: Callable[[Any], dict[Any, Any]]) -> Setter:
    return lambda data, value: board(0, "kconfig")(data, make(value))


def first(key: str) -> Setter:
    return lambda data, value: {**data, key: [value, *data[key][1:]]}


def _never(value: Any) -> bool:
    return False


def _none(value: Any) -> bool:
    return value is None


def _int_64(value: Any) -> bool:
    return isinstance(value, int) and -2**63 <= value < 2**64


# name -> (where the value goes, the field named, a valid string, which non-strings are valid)
TARGETS: dict[str, tuple[Setter, str, str, Callable[[Any], bool]]] = {
    **{key: (top(key), key, example, accepts) for key, example, accepts in [
        ("klipper_commit", "a" * 40, _none), ("hostname", "vcore-01", _none),
        ("timezone", "Europe/Copenhagen", _none),
        ("klipper_remote", "https://github.com/Klipper3d/klipper.git", _never),
        ("klipper_bundle_cache", "~/.cache/bundles", _none), ("config_backups", "~/backups", _none),
        ("printer_config_dir", "~/printer_data/config", _never), ("printer_templates", "~/ratos-templates", _none),
        ("firmware_cache", "~/.cache/firmware", _none), ("flash_backend", "pyusb", _never),
        ("firmware_build", "controller", _never), ("printer_model", "v-core-4", _never),
        ("hotend", "rapido", _none), ("extruder", "orbiter-v2-0", _none), ("probe", "bltouch", _none),
        ("stepper_driver", "tmc5160", _never), ("printer_user_config", "keep", _never),
        ("printer_when_busy", "defer", _never), ("build_on_pi", "true", lambda v: isinstance(v, bool)),
        ("allow_unclean_build", "off", lambda v: isinstance(v, bool)), ("ssh_hostname", "192.168.1.50", _never),
        ("ssh_user", "pi", _never), ("ssh_key", "~/.ssh/id_ed25519", _never),
        ("ssh_known_hosts_file", "~/farm/known_hosts", _never), ("ssh_strict_host_key_checking", "yes", _never),
    ]},
    "klipper_source": (top("klipper_source"), "klipper_source", "", _never),  # example: the fixture's checkout
    "boards[0].port": (board(0, "port"), "boards[0].port", "1-1.3", _none),
    "boards[0].serial": (board(0, "serial"), "boards[0].serial", "/dev/serial/by-id/usb-Klipper_x-if00", _none),
    "boards[0].mcu_name": (board(0, "mcu_name"), "boards[0].mcu_name", "mcu", _none),
    "boards[0].board": (board(0, "board"), "boards[0].board", OCTOPUS, _never),
    "boards[2].canbus_uuid": (board(2, "canbus_uuid"), "boards[2].canbus_uuid", "a1b2c3d4e5f6", _never),
    "kconfig value": (kconfig(lambda v: {"USB_SERIAL_NUMBER": v}), "boards[0].kconfig", "octopus-01", _int_64),
    "kconfig symbol": (kconfig(lambda v: {v: "x"}), "boards[0].kconfig", "USB_SERIAL_NUMBER", _never),
    "provision_services[0]": (first("provision_services"), "provision_services", "klipper", _never),
    "custom_data_keys[0]": (first("custom_data_keys"), "custom_data_keys", "farm_room", _never),
}

# (key or target, bad value): every value that ever got past validation goes here
CORPUS: list[tuple[str, Any]] = [
    *[(key, "a" * 40 + "\n") for key in ("klipper_commit",)],
    ("boards[0].port", "1-1.3\n"), ("boards[0].mcu_name", "mcu\n"), ("boards[0].serial", "/dev/x\n"),
    ("boards[2].canbus_uuid", "a1b2c3d4e5f6\n"), ("hotend", "rapido\n"), ("extruder", "orbiter-v2-0\n"),
    ("probe", "bltouch\n"), ("kconfig symbol", "USB_SERIAL_NUMBER\n"), ("hostname", "vcore-01\n"),
    ("timezone", "Europe/Copenhagen\n"), ("provision_services[0]", "klipper\n"),
    ("klipper_commit", "$(touch /tmp/pwned)"), ("hostname", "`reboot`"), ("timezone", "UTC;reboot"),
    ("klipper_remote", "--upload-pack=touch /tmp/pwned"), ("klipper_remote", "ext::sh -c touch% /tmp/pwned"),
    ("klipper_remote", "https://x/$(id)"), ("klipper_remote", ""), ("klipper_remote", 5),
    ("printer_config_dir", "~/printer_data/config'; rm -rf ~; '"), ("printer_config_dir", "~pi/config"),
    ("printer_config_dir", "x\0y"), ("printer_config_dir", ""), ("printer_config_dir", None),
    ("firmware_cache", 5), ("firmware_cache", "x\0y"), ("firmware_cache", "~/cache\n"),
    ("config_backups", 5), ("config_backups", "x\0y"), ("config_backups", "${IFS}"),
    ("klipper_bundle_cache", ["~/b"]), ("klipper_bundle_cache", "x\0y"), ("printer_templates", "x\0y"),
    ("printer_templates", 7), ("klipper_source", "x\0y"), ("klipper_source", "/nonexistent/klipper"),
    ("klipper_source", 5), ("klipper_source", "/" + "a" * 300), ("klipper_source", "/root/" * 600), ("kconfig value", "x\ny"), ("kconfig value", "$(shell touch /tmp/pwned)"),
    ("kconfig value", "a" * 300), ("kconfig value", 10**5000), ("kconfig value", 1.5), ("kconfig value", None),
    ("kconfig symbol", 5), ("kconfig symbol", ("USB",)), ("kconfig symbol", "usb_serial_number"),
    ("kconfig symbol", "CLOCK_FREQ"), ("boards[0].board", 5), ("boards[0].board", ["x"]),
    ("boards[0].board", "x" * 10**5),
    ("boards[0].port", 13), ("boards[0].port", "1-1.3 "), ("boards[0].serial", "ttyACM0"),
    ("boards[0].mcu_name", "MCU"), ("boards[0].mcu_name", ""), ("boards[2].canbus_uuid", "A1B2C3D4E5F6"),
    ("printer_model", ["v-core-3"]), ("printer_model", {"v-core-3": 1}), ("printer_model", "v-core-3\n"),
    ("stepper_driver", ["tmc2209"]), ("printer_user_config", ["keep"]), ("printer_when_busy", {}),
    ("flash_backend", ["pyusb"]), ("firmware_build", ["pi"]), ("build_on_pi", "yes\n"), ("build_on_pi", 1),
    ("allow_unclean_build", " true"), ("printer_backups", 0), ("printer_backups", 10**100), ("printer_backups", True),
    ("config_backup_keep", -1), ("config_backup_keep", "20"), ("printer_size", "300"), ("printer_size", 301),
    ("stepper_current", {"x": math.nan}), ("stepper_current", {"x": math.inf}), ("stepper_current", {1: 1.0}),
    ("stepper_current", [1.6]), ("provision_services", "klipper"), ("provision_services", [None]),
    ("provision_services", ["-klipper"]), ("custom_data_keys", "farm_room"), ("custom_data_keys", ["farm room"]),
    ("ssh_hostname", "-oProxyCommand=touch /tmp/pwned"), ("ssh_hostname", "10.0.0.5\n"), ("ssh_user", "pi;id"),
    ("ssh_port", 0), ("ssh_port", 70000), ("ssh_port", "22"), ("ssh_strict_host_key_checking", "accept-new\n"),
    ("ssh_known_hosts_file", "x\0y"), ("ssh_key", 5), ("_sudo", "yes"), ("_sudo_user", 0),
    ("boards", "btt-octopus-pro-h723-11"), ("boards", {"board": OCTOPUS}), ("boards", [OCTOPUS]),
    ("boards", b"\x00" * 10**6), ("boards", [{"board": OCTOPUS}] * 100), ("boards", []),
    ("attended_flash", True),
]
DUPLICATES = [
    ("port", [{"board": OCTOPUS, "port": "1-1.3"}, {"board": EBB42, "port": "1-1.3"}], "boards[1].port"),
    ("serial", [{"board": OCTOPUS, "serial": "/dev/serial/by-id/a"},
                {"board": EBB42, "serial": "/dev/serial/by-id/a"}], "boards[1].serial"),
    ("mcu_name", [{"board": OCTOPUS}, {"board": EBB42, "mcu_name": "mcu"}], "boards[1].mcu_name"),
    ("canbus_uuid", [{"board": OCTOPUS}, {"board": EBB36_CAN, "canbus_uuid": "a1b2c3d4e5f6"},
                     {"board": EBB36_CAN, "mcu_name": "toolboard_t1", "canbus_uuid": "a1b2c3d4e5f6"}],
     "boards[2].canbus_uuid"),
]
HOST_NAMES = ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "a\0b", "a\nb", "\x1b[31mred", "-rf", " pi", "x" * 300]
SECRET_KEYS = ["ssh_password", "ssh_key_password", "_sudo_password", "_su_password"]
EVIL = ["\n", "\r\n", "\0", "\x1b[31m", "\x07", "$(touch /tmp/pwned)", "`id`", ";reboot", "'", '"', "${IFS}",
        "|", "&", "\\", "\u202e", "\x85"]


def _set(source: str, target: str, value: Any) -> dict[str, Any]:
    setter = TARGETS[target][0] if target in TARGETS else top(target)
    try:
        return setter(full_host(source), value)
    except TypeError:  # a list as a Kconfig symbol: no inventory can hold that dict
        assume(False)
        raise


def _field(target: str) -> str:
    return TARGETS[target][1] if target in TARGETS else target


def test_the_full_host_is_valid(source: str) -> None:
    assert outcome({"vcore-01": full_host(source)}) == []


@pytest.mark.parametrize(("target", "value"), CORPUS, ids=[f"{t}-{n}" for n, (t, _) in enumerate(CORPUS)])
def test_every_corpus_value_is_refused_naming_host_and_field(source: str, target: str, value: Any) -> None:
    lines = outcome({"vcore-01": _set(source, target, value)})
    assert refused(lines, "vcore-01", _field(target)), lines


@pytest.mark.parametrize(("key", "boards", "field"), DUPLICATES, ids=[d[0] for d in DUPLICATES])
def test_two_boards_of_one_host_never_share_a_port_serial_mcu_name_or_uuid(
    source: str, key: str, boards: list[dict[str, Any]], field: str,
) -> None:
    lines = outcome({"vcore-01": {**full_host(source), "boards": boards}})
    assert refused(lines, "vcore-01", field) and f"boards[{field[7]}]" not in lines[0].split(":")[-2], lines


@pytest.mark.parametrize("name", HOST_NAMES)
def test_a_host_name_that_cannot_be_a_folder_is_refused(source: str, name: str) -> None:
    lines = outcome({name: {**full_host(source), "hostname": "vcore-01"}})
    assert any("field 'inventory name'" in line for line in lines), lines
    assert not any(char in "".join(lines) for char in "\0\n\x1b"), "the name is printed escaped"


@pytest.mark.parametrize("names", [("Vcore-01", "vcore-01"), ("caf\u00e9", "cafe\u0301")])
def test_two_hosts_sharing_one_backup_folder_are_refused(source: str, names: tuple[str, str]) -> None:
    lines = outcome({name: {**full_host(source), "hostname": "vcore-01"} for name in names})
    assert refused(lines, names[1], "inventory name") and "backups would mix" in lines[-1], lines


def test_hosts_with_their_own_backup_roots_may_share_a_name_modulo_case(source: str) -> None:
    assert outcome({"Vcore-01": {**full_host(source), "hostname": "vcore-01", "config_backups": "~/a"},
                    "vcore-01": {**full_host(source), "config_backups": "~/b"}}) == []


@pytest.mark.parametrize("key", SECRET_KEYS)
@pytest.mark.parametrize("value", [12345, [SECRET], {"pw": SECRET}, SECRET.encode()])
def test_a_mistyped_secret_is_named_but_never_echoed(source: str, key: str, value: Any) -> None:
    lines = outcome({"vcore-01": {**full_host(source), key: value}})
    assert refused(lines, "vcore-01", key), lines
    assert SECRET not in "".join(lines) and "12345" not in "".join(lines)


def test_a_bad_git_url_is_shown_without_its_password(source: str) -> None:
    lines = outcome({"vcore-01": {**full_host(source), "klipper_remote": f"https://me:{SECRET}@github.com/k.git\n"}})
    assert refused(lines, "vcore-01", "klipper_remote") and SECRET not in "".join(lines) and "me:***@" in lines[0]


def test_a_bad_key_beside_a_secret_does_not_echo_the_secret(source: str) -> None:
    lines = outcome({"vcore-01": {**full_host(source), "ssh_port": "22", "my_api_token": SECRET}})
    assert SECRET not in "\n".join(lines) and refused(lines, "vcore-01", "my_api_token")


# --- properties ------------------------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(target=st.sampled_from(sorted(TARGETS)), evil=st.sampled_from(EVIL + ["x" * 100_000]), where=st.floats(0, 1))
def test_shell_syntax_a_control_character_or_a_huge_tail_anywhere_in_a_value_is_refused(
    source: str, target: str, evil: str, where: float,
) -> None:
    valid = TARGETS[target][2] or source
    cut = round(where * len(valid))
    value = valid[:cut] + evil + valid[cut:]
    lines = outcome({"vcore-01": _set(source, target, value)})
    assert refused(lines, "vcore-01", _field(target)), (value, lines)


NOT_STRINGS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.binary(max_size=20),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.tuples(st.text(max_size=5)), st.just(object()), st.just(10**5000), st.just(Path("/tmp")),
)


@PROPERTY
@given(target=st.sampled_from(sorted(TARGETS)), value=NOT_STRINGS)
def test_a_value_of_a_wrong_type_is_refused(source: str, target: str, value: Any) -> None:
    lines = outcome({"vcore-01": _set(source, target, value)})
    if not TARGETS[target][3](value):
        assert refused(lines, "vcore-01", _field(target)), (value, lines)


KEYS = ["board", "port", "serial", "mcu_name", "canbus_uuid", "kconfig", "USB_SERIAL_NUMBER", "x", "y", "z", "e"]


class Nasty:
    """An inventory is Python: a value whose every dunder but identity fails."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise RuntimeError("bool")

    def __len__(self) -> int:
        raise RuntimeError("len")

    def __iter__(self) -> Any:
        raise RuntimeError("iter")


ANYTHING = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(), st.builds(Nasty),
              st.sampled_from(EVIL + ["a" * 40, "1-1.3", OCTOPUS, "mcu", "~/x", "x\0y"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(st.text(max_size=12), st.integers(), st.sampled_from(KEYS)),
                                            inner, max_size=4)),
    max_leaves=12,
)


@PROPERTY
@given(key=st.sampled_from(sorted(set(known_keys()) | {"boards", "unknown_key", "ssh_pasword"})), value=ANYTHING)
def test_any_value_for_any_key_is_accepted_or_named_never_a_traceback(source: str, key: str, value: Any) -> None:
    lines = outcome({"vcore-01": {**full_host(source), key: value}})
    assert not lines or any(f"field '{key}" in line or "field 'boards" in line or "field 'custom_data_keys" in line
                            or "field 'farm_room" in line or "field 'klipper_source" in line for line in lines), lines


@PROPERTY
@given(boards=st.lists(st.dictionaries(st.sampled_from(["board", "port", "serial", "mcu_name", "canbus_uuid",
                                                        "kconfig", "prot"]), ANYTHING, max_size=6), max_size=4))
def test_any_boards_list_is_accepted_or_named_never_a_traceback(source: str, boards: list[dict[str, Any]]) -> None:
    lines = outcome({"vcore-01": {**full_host(source), "boards": boards}})
    assert all(re.match(r"host vcore-01: field '(boards|printer_model)", line) for line in lines), lines


@PROPERTY
@given(names=st.lists(st.text(max_size=20), min_size=1, max_size=3, unique=True))
def test_any_host_name_is_accepted_or_named_never_a_traceback(source: str, names: list[str]) -> None:
    lines = outcome({name: {**full_host(source), "hostname": "vcore-01"} for name in names})
    assert all("field 'inventory name'" in line for line in lines), lines
