"""CAN printers on the virtual farm: `ratos-fleet update` over real SSH, the bus in each Pi's own
network namespace (sim.can), toolboards through Katapult over CAN, bridges over USB."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import RunningFarm, running_farm

SCENARIO = Path(__file__).parent / "scenarios" / "can-lab.toml"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIO, "farm-can") as running:
        yield running


@pytest.fixture(scope="module")
def first_update(lab: RunningFarm, tmp_path_factory: pytest.TempPathFactory) -> dict:
    printers = lab.first_update(tmp_path_factory.mktemp("can-report"))
    for name, entry in printers.items():
        entry["klippy_after"] = klippy_state(lab, name)
    return printers


def first(seen: list[dict], port: str, event: str) -> float:
    return next(e["t"] for e in seen if e["port"] == port and e["event"] == event)


def klippy_state(lab: RunningFarm, pi: str) -> str:
    out = lab.ssh(pi, "curl -s http://127.0.0.1:7125/printer/objects/query?webhooks", check=False).stdout
    try:
        return json.loads(out)["result"]["status"]["webhooks"]["state"]
    except (ValueError, KeyError):
        return "disconnected"


def versions(entry: dict) -> dict[str, str | None]:
    return {board["mcu_name"]: board["after_version"] for board in entry["boards"]}


def test_a_bridge_printer_flashes_its_toolboards_over_can_before_the_bridge(lab: RunningFarm,
                                                                           first_update: dict) -> None:
    entry = first_update["can-bridge"]
    assert entry["status"] == "changed" and entry["klipper_restarted"], entry
    assert versions(entry) == {"toolboard_t0": lab.version("current"), "toolboard_t1": lab.version("current"), "mcu": lab.version("current")}
    # the bridge is asked for its bootloader over CAN, then written in its ROM DFU with dfu-util
    assert {b["mcu_name"]: b["method"] for b in entry["boards"]} == {
        "toolboard_t0": "katapult-can", "toolboard_t1": "katapult-can", "mcu": "dfu-util"}
    assert all(b["read_back"] for b in entry["boards"]), entry
    seen = lab.usb_events("can-bridge")
    bridge_reset = first(seen, "1-1.1", "bootloader-request")
    for uuid in ("65efaa4cf65d", "90a4ae022dfc"):  # the emulator's log: both toolboards done first
        assert first(seen, f"can0/{uuid}", "katapult-complete") < bridge_reset
    assert first(seen, "can0", "can-down") >= bridge_reset  # the bridge's reset took the bus down
    assert seen[-1]["event"] == "can-up" or any(e["event"] == "can-up" and e["t"] > bridge_reset for e in seen)
    assert entry["klippy_after"] == "ready"


def test_a_bridge_with_katapult_comes_back_in_katapult_and_is_written_through_it(lab: RunningFarm,
                                                                                 first_update: dict) -> None:
    entry = first_update["can-katbridge"]
    assert entry["status"] == "changed", entry
    assert versions(entry) == {"mcu": lab.version("current"), "toolboard_t0": lab.version("current")}
    assert {b["mcu_name"]: b["method"] for b in entry["boards"]} == {"toolboard_t0": "katapult-can",
                                                                    "mcu": "katapult"}
    seen = lab.usb_events("can-katbridge")
    reset = first(seen, "1-1.1", "bootloader-request")
    assert first(seen, "can0/90a4ae022dfc", "katapult-complete") < reset < first(seen, "1-1.1", "katapult-connect")
    assert entry["klippy_after"] == "ready"


def test_a_toolboard_behind_a_usb_can_adapter_goes_first_then_the_usb_mainboard(lab: RunningFarm,
                                                                               first_update: dict) -> None:
    entry = first_update["can-adapter"]
    assert entry["status"] == "changed", entry
    assert versions(entry) == {"toolboard_t0": lab.version("current"), "mcu": lab.version("current")}
    seen = lab.usb_events("can-adapter")
    assert first(seen, "can0/65efaa4cf65d", "katapult-complete") < first(seen, "1-1.1", "bootloader-request")
    assert not [e for e in seen if e["event"] == "can-down"]  # an adapter's bus stays up
    assert entry["klippy_after"] == "ready"


def test_a_silent_toolboard_is_named_and_its_printer_left_as_it_was(lab: RunningFarm, first_update: dict) -> None:
    entry = first_update["can-silent"]
    assert entry["status"] == "failed", entry
    assert "CAN node toolboard_t0 (a1b2c3d4e5f6) does not answer on can0" in entry["reason"], entry
    assert "nothing was changed" in entry["reason"]
    assert not entry["klipper_restarted"]
    assert not [e for e in lab.usb_events("can-silent") if e["event"] in ("bootloader-request", "erase", "unplug")]
    assert versions(entry)["mcu"] in (None, lab.version("old"))


def test_the_rerun_of_the_converged_printers_is_a_no_op(lab: RunningFarm, first_update: dict, tmp_path: Path) -> None:
    pids = {name: lab.klippy_pid(name) for name in ("can-bridge", "can-adapter")}
    before = len(lab.usb_events("can-bridge"))
    again = lab.update(tmp_path, "can-bridge", "can-adapter")
    assert again.returncode == 0, again.stdout + again.stderr
    printers = {p["host"]: p for p in json.loads((tmp_path / "report.json").read_text())["printers"]}
    assert {name: p["status"] for name, p in printers.items()} == {"can-bridge": "converged",
                                                                  "can-adapter": "converged"}, again.stdout
    assert {name: lab.klippy_pid(name) for name in pids} == pids
    assert len(lab.usb_events("can-bridge")) == before  # not one frame that changed anything


def test_a_transfer_error_on_a_toolboard_rolls_the_printer_back_to_its_working_pair(lab: RunningFarm,
                                                                                    first_update: dict) -> None:
    entry = first_update["can-xfer"]
    assert entry["status"] == "failed" and entry["klipper_restarted"], entry
    assert "block 3 of the image" in entry["reason"] and "rolled back" in entry["reason"], entry
    assert versions(entry) == {"toolboard_t0": lab.version("old"), "mcu": lab.version("old")}
    seen = [e["event"] for e in lab.usb_events("can-xfer") if e["port"] == "1-1.1"]
    assert "bootloader-request" not in seen  # the bridge was never touched
    assert entry["klippy_after"] == "ready"


def test_a_bridge_that_never_comes_back_in_its_bootloader_ends_on_the_old_pair(lab: RunningFarm,
                                                                               first_update: dict) -> None:
    entry = first_update["can-gone"]
    assert entry["status"] == "failed" and entry["klipper_restarted"], entry
    assert "did not enter DFU on USB port 1-1.1" in entry["reason"], entry
    assert versions(entry) == {"toolboard_t0": lab.version("old"), "mcu": lab.version("old")}
    seen = lab.usb_events("can-gone")
    completes = [e["t"] for e in seen if e["port"] == "can0/65efaa4cf65d" and e["event"] == "katapult-complete"]
    assert len(completes) == 2 and completes[1] > first(seen, "1-1.1", "bootloader-request")  # given back over CAN
    assert entry["klippy_after"] == "ready"


def test_two_unassigned_nodes_are_never_queried_so_none_goes_bus_off(lab: RunningFarm, first_update: dict) -> None:
    entry = first_update["can-busoff"]
    assert entry["status"] == "failed", entry
    assert "a query could push them into bus-off, so none was sent" in entry["reason"], entry
    assert not [e for e in lab.usb_events("can-busoff") if e["event"] in ("bus-off", "bootloader-request")]
    assert not entry["klipper_restarted"]
