"""The CanBus fact: the probe's CAN part (run as shipped) and its pure parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyinfra_ratos.facts.can import parse_can_bus
from pyinfra_ratos.facts.probe import SOURCE

UUID_T0, UUID_T1, UUID_BRIDGE = "65efaa4cf65d", "90a4ae022dfc", "0123456789ab"


def shipped_probe() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "probe"}
    exec(compile(SOURCE, "probe", "exec"), namespace)  # the script as it travels: canbus.py + remote.py
    return namespace


def moonraker(**mcus: Any) -> dict[str, Any]:
    status = {"print_stats": {"state": "standby"}, "idle_timeout": {"state": "Idle"}, **mcus}
    return {"info": {"status": 200}, "query": {"status": 200, "body": {"result": {"status": status}}}}


def config(tmp_path: Path) -> Path:
    (tmp_path / "printer.cfg").write_text(
        "[include RatOS.cfg]\n[mcu]\ncanbus_uuid: %s\n#[mcu old]\n#canbus_uuid: ffffffffffff\n" % UUID_BRIDGE)
    (tmp_path / "RatOS.cfg").write_text(
        "[mcu toolboard_t0]\ncanbus_uuid: %s\n\n[mcu toolboard_t1]\ncanbus_uuid: %s\ncanbus_interface: can1\n"
        % (UUID_T0.upper(), UUID_T1))
    return tmp_path


def test_the_nodes_come_from_the_printers_config_and_its_includes(tmp_path: Path) -> None:
    probe = shipped_probe()
    sections = probe["_config_sections"](str(config(tmp_path)))
    assert sections["mcu"] == {"canbus_uuid": UUID_BRIDGE}
    assert sections["mcu toolboard_t1"]["canbus_interface"] == "can1"
    assert "mcu old" not in sections


def test_no_query_is_sent_when_klippy_talks_to_every_node(tmp_path: Path) -> None:
    probe = shipped_probe()
    up = {"mcu_version": "v0.13.0-3-gb846a96"}
    raw = probe["probe_can"]({"config_dir": str(config(tmp_path)), "interface": "can0"},
                             moonraker(**{"mcu": up, "mcu toolboard_t0": up, "mcu toolboard_t1": up}))
    assert raw["queries"] == {}
    fact = parse_can_bus(raw)
    assert set(fact["interfaces"]) == {"can0", "can1"}
    assert fact["nodes"][UUID_T0] == {"uuid": UUID_T0, "mcu_name": "toolboard_t0", "interface": "can0",
                                      "mcu_version": "v0.13.0-3-gb846a96", "app": "Klipper", "answers": True,
                                      "why_unknown": ""}


def test_two_nodes_klippy_cannot_reach_are_never_queried(tmp_path: Path) -> None:
    probe = shipped_probe()
    raw = probe["probe_can"]({"config_dir": str(config(tmp_path)), "interface": "can0"}, moonraker())
    fact = parse_can_bus(raw)
    assert raw["queries"]["can0"]["sent"] is False
    assert fact["nodes"][UUID_T0]["answers"] is None
    assert "bus-off" in fact["nodes"][UUID_T0]["why_unknown"]


def test_a_printing_printer_is_never_queried(tmp_path: Path) -> None:
    probe = shipped_probe()
    busy = moonraker(print_stats={"state": "printing"}, mcu={"mcu_version": "v1"})
    (tmp_path / "printer.cfg").write_text("[mcu]\nserial: /dev/x\n[mcu toolboard_t0]\ncanbus_uuid: %s\n" % UUID_T0)
    raw = probe["probe_can"]({"config_dir": str(tmp_path)}, busy)
    assert raw["queries"]["can0"] == {"sent": False, "refusal": raw["queries"]["can0"]["refusal"], "found": []}
    assert "busy" in raw["queries"]["can0"]["refusal"]


def test_a_printer_without_can_costs_nothing(tmp_path: Path) -> None:
    (tmp_path / "printer.cfg").write_text("[mcu]\nserial: /dev/serial/by-id/x\n")
    assert shipped_probe()["probe_can"]({"config_dir": str(tmp_path)}, moonraker()) == {}
    assert parse_can_bus({}) == {"interfaces": {}, "nodes": {}}


def test_a_query_that_heard_nothing_makes_the_node_silent() -> None:
    raw = {"interfaces": {"can0": {"present": True, "state": "up", "bitrate": 1000000, "txqueuelen": 128}},
           "nodes": [{"section": "mcu toolboard_t0", "uuid": UUID_T0, "interface": "can0", "mcu_version": None},
                     {"section": "mcu toolboard_t1", "uuid": UUID_T1, "interface": "can0", "mcu_version": None}],
           "queries": {"can0": {"sent": True, "refusal": None, "found": [{"uuid": UUID_T1, "app": "Katapult"}]}}}
    nodes = parse_can_bus(raw)["nodes"]
    assert (nodes[UUID_T0]["answers"], nodes[UUID_T0]["app"]) == (False, None)
    assert (nodes[UUID_T1]["answers"], nodes[UUID_T1]["app"]) == (True, "Katapult")
