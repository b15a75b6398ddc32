"""Scenario files: every mistake is named with its Pi, its key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinfra_ratos.sim.scenario import ScenarioError, load_scenario, parse_scenario

KNOWN = {"btt-octopus-pro-h723-11", "btt-ebb42-12"}.__contains__


def _pi(**keys: object) -> dict:
    return {"pi": [{"name": "vcore-01", **keys}]}


def test_minimal_pi_gets_the_documented_defaults() -> None:
    scenario = parse_scenario(_pi(boards=[{"board": "btt-octopus-pro-h723-11"}]), board_known=KNOWN)
    pi = scenario.pi("vcore-01")
    assert (pi.state, pi.network, pi.klipper, pi.moonraker) == ("standby", "online", "active", "active")
    board = pi.boards[0]
    assert (board.mode, board.firmware, board.faults, board.mcu_name, board.port) == ("klipper", "old", (), "mcu", "1-1.1")


def test_second_board_is_a_toolboard_on_the_next_port() -> None:
    scenario = parse_scenario(
        _pi(boards=[{"board": "btt-octopus-pro-h723-11"}, {"board": "btt-ebb42-12"}]), board_known=KNOWN
    )
    assert [(b.mcu_name, b.port) for b in scenario.pis[0].boards] == [("mcu", "1-1.1"), ("toolboard_t0", "1-1.2")]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"state": "printin"}, "pi 'vcore-01': key 'state' is 'printin'; allowed values: standby, printing, paused"),
        ({"network": "wifi"}, "pi 'vcore-01': key 'network' is 'wifi'; allowed values: online, offline"),
        ({"colour": "red"}, "pi 'vcore-01': unknown key 'colour'"),
        ({"boards": [{"board": "btt-nope"}]}, "pi 'vcore-01' board[0]: key 'board' is 'btt-nope', which is not in the board catalog"),
        ({"boards": [{"board": "btt-ebb42-12", "mode": "boot"}]}, "pi 'vcore-01' board[0]: key 'mode' is 'boot'; allowed values: klipper, dfu"),
        ({"boards": [{"board": "btt-ebb42-12", "firmware": "new"}]}, "key 'firmware' is 'new'; allowed values: old, current, blank"),
        ({"boards": [{"board": "btt-ebb42-12", "faults": ["dfu-exit-75"]}]}, "key 'faults' is 'dfu-exit-75'; allowed values: dfu-exit-74"),
        ({"boards": [{"board": "btt-ebb42-12", "port": "usb3"}]}, "key 'port' is 'usb3'; use a USB port path"),
        (
            {"boards": [{"board": "btt-ebb42-12", "port": "1-1.2"}, {"board": "btt-ebb42-12", "port": "1-1.2"}]},
            "key 'port' repeats ['1-1.2']",
        ),
    ],
)
def test_bad_values_name_the_pi_the_key_and_the_allowed_values(keys: dict, message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(_pi(**keys), board_known=KNOWN)
    assert message in str(caught.value)


def test_bad_hostname_and_duplicate_names_are_refused() -> None:
    with pytest.raises(ScenarioError, match="key 'name' is 'VCore_01'; it is the hostname"):
        parse_scenario({"pi": [{"name": "VCore_01"}]})
    with pytest.raises(ScenarioError, match=r"Pi names repeat \['a'\]"):
        parse_scenario({"pi": [{"name": "a"}, {"name": "a"}]})


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[pi]\n")
    with pytest.raises(ScenarioError, match=f"{broken}: not valid TOML"):
        load_scenario(broken)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(ScenarioError, match="no \\[\\[pi\\]\\] tables"):
        load_scenario(empty)


def test_the_shipped_scenarios_are_valid() -> None:
    from pyinfra_ratos.firmware.catalog import load_catalog

    catalog = load_catalog()
    for path in (Path(__file__).parents[2] / "pyinfra_ratos" / "sim" / "scenarios").glob("*.toml"):
        assert load_scenario(path, board_known=catalog.__contains__).pis


def test_printer_state_knobs_default_to_a_healthy_idle_printer() -> None:
    pi = parse_scenario(_pi()).pi("vcore-01")
    assert (pi.klipper, pi.klippy, pi.moonraker_fault, pi.moonraker_hang_seconds) == ("active", "ready", "none", 0)


def test_printer_state_knobs_are_read() -> None:
    pi = parse_scenario(_pi(state="printing", klipper="deactivating", klippy="shutdown",
                            moonraker_fault="hang", moonraker_hang_seconds=120)).pi("vcore-01")
    assert (pi.state, pi.klipper, pi.klippy, pi.moonraker_fault, pi.moonraker_hang_seconds) == (
        "printing", "deactivating", "shutdown", "hang", 120)
    assert parse_scenario(_pi(klipper="activating")).pi("vcore-01").klipper == "activating"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"klippy": "halted"}, "pi 'vcore-01': key 'klippy' is 'halted'; allowed values: ready, shutdown"),
        ({"moonraker_fault": "502"}, "key 'moonraker_fault' is '502'; allowed values: none, 503, hang"),
        ({"moonraker_fault": 503}, "key 'moonraker_fault' is 503; allowed values: none, 503, hang"),
        ({"klipper": "failed"}, "key 'klipper' is 'failed'; allowed values: active, inactive, activating, deactivating"),
        ({"moonraker": "activating"}, "key 'moonraker' is 'activating'; allowed values: active, inactive"),
        ({"moonraker_hang_seconds": -1}, "key 'moonraker_hang_seconds' is -1; use seconds >= 0"),
        ({"moonraker_hang_seconds": "120"}, "key 'moonraker_hang_seconds' is '120'; use seconds >= 0"),
        ({"moonraker_hang_seconds": True}, "key 'moonraker_hang_seconds' is True"),
    ],
)
def test_bad_printer_state_knobs_are_named(keys: dict, message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(_pi(**keys))
    assert message in str(caught.value)
