"""The facts over real SSH on the virtual farm: each returns the scenario's truth, never fails a host."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.sim import farm as sim_farm
from pyinfra_ratos.sim.scenario import load_scenario

from .conftest import BOOTLOADER_REQUEST, RunningFarm, start_farm

SCENARIO = Path(__file__).parent / "scenarios" / "facts-lab.toml"
SESSION_LINE = "Starting session: command for pi"
CATALOG = load_catalog()
PIS = [pi.name for pi in load_scenario(SCENARIO).pis]



FILLERS = 14  # plain Pis that make the lab a 20-Pi farm for the audit's SSH count


def filler_pis(count: int) -> str:
    return "".join(
        f'\n[[pi]]\nname = "audit-{i:02d}"\n' + ('network = "offline"\n' if i % 5 == 4 else "")
        + ('[[pi.boards]]\nboard = "btt-octopus-pro-h723-11"\nfirmware = "current"\n' if i % 2 else "")
        for i in range(count)
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    state = tmp_path_factory.mktemp("farm-facts")
    scenario = state.parent / f"{state.name}.toml"
    scenario.write_text(SCENARIO.read_text() + filler_pis(FILLERS))
    running = start_farm(scenario, state)
    try:
        yield running
    finally:
        sim_farm.down(state)


def fact_data(farm: RunningFarm, fact: str, *args: str) -> dict[str, Any]:
    """The real pyinfra CLI's answer for every Pi; the run must not fail any host."""
    result = farm.pyinfra("fact", f"pyinfra_ratos.facts.{fact}", *args)
    progress, text = result.stdout.split("--> Fact data for:", 1)
    assert "Error" not in progress and "fail" not in progress.lower(), result.stdout
    data, _ = json.JSONDecoder().raw_decode(text[text.index("{"):])
    assert sorted(data) == sorted(p["name"] for p in farm.info["pis"])
    return data


def pistate(farm: RunningFarm, pi: str) -> dict[str, Any]:
    return json.loads((farm.upper(pi) / "var/lib/ratos-sim/state.json").read_text())


def ssh_commands(farm: RunningFarm, pi: str) -> int:
    log = farm.upper(pi) / "var/log/ratos-sim/sshd.log"
    return log.read_text().count(SESSION_LINE) if log.exists() else 0


@pytest.fixture(scope="module")
def boards(lab: RunningFarm) -> dict[str, Any]:
    return fact_data(lab, "boards.AttachedBoards")


@pytest.mark.parametrize("pi", PIS)
def test_attached_boards_show_each_plugged_board_on_its_port_in_its_mode(
    lab: RunningFarm, boards: dict[str, Any], pi: str
) -> None:
    expected = {b["port"]: b for b in lab.pi(pi)["boards"] if b["mode"] != "absent"}
    found = boards[pi]
    assert sorted(found) == sorted(expected)
    for port, board in expected.items():
        info, catalog = found[port], CATALOG[board["board"]]
        assert info["mode"] == board["mode"], port
        assert catalog.mcu == info["mcu"] or info["mcu"] is None, port
        assert board["board"] in info["board_candidates"] or board["mode"] == "katapult"
        if board["serial"].startswith(board["board"]):  # a RatOS serial names the board
            assert info["board_id"] == board["board"]
        assert (info["tty"] is not None) == (board["mode"] in ("klipper", "katapult"))
        assert (info["dfu_flash_map"] is not None) == (board["mode"] == "dfu")


def test_two_boards_in_dfu_are_told_apart_by_port_and_flash_layout(boards: dict[str, Any]) -> None:
    dfu = boards["fx-dfu"]
    assert [dfu[p]["mode"] for p in ("1-1.1", "1-1.2")] == ["dfu", "dfu"]
    assert dfu["1-1.1"]["mcu"] == "stm32h723xx" and dfu["1-1.2"]["mcu"] == "stm32f446xx"
    assert len(dfu["1-1.2"]["dfu_flash_map"]["sectors"]) == 8
    assert dfu["1-1.1"]["serial"] != dfu["1-1.2"]["serial"]


def test_every_mode_is_seen_with_its_usb_identity(boards: dict[str, Any]) -> None:
    modes = boards["fx-modes"]
    assert {p: (b["vid_pid"], b["mode"]) for p, b in modes.items()} == {
        "1-1.1": ("1d50:614e", "klipper"), "1-1.2": ("1d50:6177", "katapult"),
        "1-1.3": ("1d50:606f", "can-bridge"), "1-1.4": ("2e8a:0003", "rp2040-boot"),
    }
    assert modes["1-1.2"]["by_id"] == "/dev/serial/by-id/usb-katapult_stm32g0b1xx_4E2D1A6B3C7F9E01-if00"
    # two catalog boards are RP2040s (Pico, SKR Pico): a BOOTSEL device could be either
    assert "rpi-pico" in modes["1-1.4"]["board_candidates"] and modes["1-1.4"]["board_id"] is None
    assert modes["1-1.1"]["ratos_link"] is None  # no udev on the virtual Pis


def test_klipper_host_reads_each_checkout_and_flags_the_one_root_owns(lab: RunningFarm) -> None:
    hosts = fact_data(lab, "klipper.KlipperHost")
    for pi, host in hosts.items():
        describe = lab.ssh(pi, "git -C ~/klipper describe --always --tags --long --dirty", check=False)
        assert host["exists"] and host["venv"] and host["ssh_user"] == "pi"
        assert host["version"] == describe.stdout.strip()
        assert host["foreign_owner"] == (pi == "fx-root")
        assert host["commit"] and host["remote_url"] == "https://github.com/Klipper3d/klipper.git"
    assert hosts["fx-root"]["version"] == "" and hosts["fx-root"]["owner"] == "root"


def test_mcu_firmware_matches_what_each_board_runs(lab: RunningFarm) -> None:
    firmware = fact_data(lab, "klipper.McuFirmware")
    current = firmware["fx-current"]
    truth = pistate(lab, "fx-current")
    assert current["source"] == "moonraker" and current["host_version"] == truth["host_version"]
    assert set(current["mcus"]) == {m["name"] for m in truth["mcus"]}
    assert all(m["connected"] and m["matches_host"] for m in current["mcus"].values())
    # a board in DFU is not connected and has no version to compare
    assert {m["connected"] for m in firmware["fx-dfu"]["mcus"].values()} == {False}
    assert {m["matches_host"] for m in firmware["fx-dfu"]["mcus"].values()} == {None}
    # the root-owned checkout makes klippy's own version "?": nothing matches it
    assert firmware["fx-root"]["host_version"] == "?" and not firmware["fx-root"]["mcus"]["mcu"]["matches_host"]
    # no Moonraker: klippy.log tells what the board ran when klippy last connected
    nomoon = firmware["fx-nomoon"]
    old = pistate(lab, "fx-nomoon")["mcus"][0]["firmware"]["version"]
    assert nomoon["source"] == "klippy.log" and nomoon["mcus"]["mcu"]["version"] == old
    assert nomoon["mcus"]["mcu"]["matches_host"] is False
    # klipper never started on the offline Pi: nothing to tell
    assert firmware["fx-offline"]["source"] == "none" and firmware["fx-offline"]["klippy_state"] == "disconnected"


def test_printer_activity_is_busy_exactly_where_a_job_runs_or_nobody_can_tell(lab: RunningFarm) -> None:
    activity = fact_data(lab, "printer.PrinterActivity")
    busy = {pi: activity[pi]["busy"] for pi in PIS}
    assert busy == {"fx-modes": False, "fx-dfu": True, "fx-current": False, "fx-nomoon": True,
                    "fx-offline": False, "fx-root": True}
    assert activity["fx-nomoon"]["moonraker"] is False and activity["fx-nomoon"]["klipper_service"] == "active"
    assert activity["fx-offline"]["klipper_service"] == "inactive"
    assert activity["fx-dfu"]["print_state"] == "paused" and activity["fx-dfu"]["idle_state"] == "Ready"


def test_network_reachability_tells_the_offline_pi_apart(lab: RunningFarm) -> None:
    network = fact_data(lab, "network.NetworkReachability", "hosts=127.0.2.1:9418")
    for pi, value in network.items():
        online = lab.pi(pi)["network"] == "online"
        assert value["default_route"] is online and value["dns"] is online, pi
        assert value["reachable"] == {"github.com:443": online, "127.0.2.1:9418": online}, pi
        assert value["moonraker"] is (pi != "fx-nomoon"), pi


def test_firmware_artifacts_are_identified_by_their_own_bytes(lab: RunningFarm) -> None:
    fragment = CATALOG["btt-ebb42-12"].kconfig
    directory = "~/printer_data/firmware/build-ebb42"
    lab.ssh("fx-current", (
        f"mkdir -p {directory} && cat > {directory}/config <<'EOF'\n{fragment}\nEOF\n"
        f"cd ~/klipper && make KCONFIG_CONFIG={directory}/config OUT=/tmp/ebb42/ olddefconfig >/dev/null"
        f" && make KCONFIG_CONFIG={directory}/config OUT=/tmp/ebb42/ >/dev/null"
        f" && cp /tmp/ebb42/klipper.bin {directory}/ && echo '{{\"version\": \"lies\"}}' > {directory}/identity.json"
    ))
    built = json.loads(lab.ssh("fx-current", "cat /tmp/ebb42/klipper.dict").stdout)
    artifact = fact_data(lab, "firmware.FirmwareArtifacts")["fx-current"]["build-ebb42"]
    assert artifact["version"] == built["version"] and artifact["mcu"] == "stm32g0b1xx"
    assert artifact["app_address"] == CATALOG["btt-ebb42-12"].app_address
    sha = lab.ssh("fx-current", f"sha256sum {directory}/klipper.bin").stdout.split()[0]
    assert artifact["files"]["klipper.bin"]["sha256"] == sha


def test_the_audit_bundle_gives_each_single_facts_value_in_one_ssh_command(lab: RunningFarm) -> None:
    singles = {
        "boards": fact_data(lab, "boards.AttachedBoards"),
        "klipper": fact_data(lab, "klipper.KlipperHost"),
        "mcu_firmware": fact_data(lab, "klipper.McuFirmware"),
        "activity": fact_data(lab, "printer.PrinterActivity"),
        "network": fact_data(lab, "network.NetworkReachability"),
    }
    before = {pi: ssh_commands(lab, pi) for pi in PIS}
    audit = fact_data(lab, "audit.FleetAudit")
    assert {pi: ssh_commands(lab, pi) - before[pi] for pi in PIS} == {pi: 1 for pi in PIS}
    for pi in PIS:
        for key, values in singles.items():
            assert audit[pi][key] == values[pi], (pi, key)


def test_auditing_a_twenty_pi_farm_costs_one_ssh_command_per_pi(lab: RunningFarm) -> None:
    names = [p["name"] for p in lab.info["pis"]]
    assert len(names) == 20
    before = {pi: ssh_commands(lab, pi) for pi in names}
    audit = fact_data(lab, "audit.FleetAudit")
    assert {pi: ssh_commands(lab, pi) - before[pi] for pi in names} == {pi: 1 for pi in names}
    offline = {pi for pi, value in audit.items() if not value["network"]["default_route"]}
    assert offline == {"fx-offline"} | {f"audit-{i:02d}" for i in range(FILLERS) if i % 5 == 4}
    fillers = [value for pi, value in audit.items() if pi.startswith("audit-")]
    assert all(value["klipper"]["exists"] and not value["activity"]["busy"] for value in fillers)


def test_a_board_sent_to_its_bootloader_is_seen_in_dfu_on_the_same_port(lab: RunningFarm) -> None:
    tty = lab.ssh("fx-modes", "ls /dev/serial/by-path/*usb-0:1.1:1.0").stdout.strip()
    lab.ssh("fx-modes", f"python3 -c '{BOOTLOADER_REQUEST}' {tty}")
    deadline = time.monotonic() + 15
    while True:
        board = fact_data(lab, "boards.AttachedBoards")["fx-modes"].get("1-1.1", {})
        if board.get("mode") == "dfu" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert board["mode"] == "dfu" and board["mcu"] == "stm32h723xx" and board["tty"] is None
    assert board["board_id"] is None  # the ROM's serial is not the RatOS one
