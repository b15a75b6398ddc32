"""The firmware pipeline on the virtual farm: real dfu-util over real SSH, one rule per test."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinfra_ratos.firmware.builder import Builder, builds_made
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.firmware.kconfig import render_fragment
from pyinfra_ratos.operations import firmware
from pyinfra_ratos.sim.klipper_repo import build_firmware

from .conftest import RunningFarm, running_farm

SCENARIO = Path(__file__).parent / "scenarios" / "firmware-lab.toml"
DEPLOY = Path(__file__).parents[2] / "deploys" / "firmware.py"
RESULT = re.compile(r'RATOS-RESULT (\{".*\})')


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIO, "farm-firmware") as running:
        yield running


def deploy(lab: RunningFarm, *limit: str, data: str | None = None, verbose: bool = False) -> str:
    args = [str(DEPLOY)]
    for name in limit:
        args += ["--limit", name]
    if data:
        args += ["--data", data]
    if verbose:
        args.append("-vvv")  # command output too: the result records of successful flashes
    return lab.pyinfra(*args, check=False).stdout


def pistate(lab: RunningFarm, pi: str) -> dict:
    return json.loads((lab.upper(pi) / "var/lib/ratos-sim/state.json").read_text())


def mcu_version(lab: RunningFarm, pi: str, name: str = "mcu") -> str | None:
    mcu = next(m for m in pistate(lab, pi)["mcus"] if m["name"] == name)
    return (mcu["firmware"] or {}).get("version") if mcu["present"] else None


def current(lab: RunningFarm) -> str:
    return lab.info["versions"]["current"]["version"]


def grand_total(output: str) -> dict[str, int]:
    """pyinfra's closing "Grand total" row: hosts, success, error, no change ("-" is 0)."""
    row = re.search(r"Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output)
    assert row, output
    values = [0 if v == "-" else int(v) for v in row.groups()]
    return dict(zip(("hosts", "success", "error", "no_change"), values))


def results(output: str) -> list[dict]:
    return [json.loads(match) for match in RESULT.findall(output)]


def test_a_behind_board_is_flashed_through_the_bootloader_request_and_a_rerun_is_a_no_op(lab: RunningFarm) -> None:
    before = pistate(lab, "fw-idle")["klippy_pid"]
    out = deploy(lab, "fw-idle")
    assert mcu_version(lab, "fw-idle") == current(lab), out
    events = [e["event"] for e in lab.usb_events("fw-idle")]
    assert "bootloader-request" in events and "leave-request" in events
    state = pistate(lab, "fw-idle")
    assert state["services"]["klipper"] == "active" and state["klippy_pid"] != before
    rerun = deploy(lab, "fw-idle")
    total = grand_total(rerun)
    # converged: the flash operation has nothing to do, so it is not even added (planned.py)
    assert (total["success"], total["error"], total["no_change"]) == (0, 0, 0), rerun


def test_rule1_a_printing_printer_is_never_stopped(lab: RunningFarm) -> None:
    before = pistate(lab, "fw-printing")
    out = deploy(lab, "fw-printing")
    after = pistate(lab, "fw-printing")
    assert after["klippy_pid"] == before["klippy_pid"] and after["services"]["klipper"] == "active"
    assert mcu_version(lab, "fw-printing") == lab.info["versions"]["old"]["version"]
    assert [e for e in lab.usb_events("fw-printing") if e["event"] != "mode"] == []
    assert grand_total(out)["error"] == 0, out


def test_rule2_the_h723_v10_is_flashed_only_with_the_per_run_attended_flag(lab: RunningFarm) -> None:
    deploy(lab, "fw-h723v10")
    assert mcu_version(lab, "fw-h723v10") == lab.info["versions"]["old"]["version"]
    assert [e for e in lab.usb_events("fw-h723v10") if e["event"] != "mode"] == []
    deploy(lab, "fw-h723v10", data="attended_flash=true")
    assert mcu_version(lab, "fw-h723v10") == current(lab)


def test_rule2_attended_flash_in_the_inventory_is_refused_before_any_command(lab: RunningFarm, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        f"exec(open({str(lab.inventory)!r}).read())\n"
        "pis = [(name, {**data, 'attended_flash': True}) for name, data in pis]\n"
    )
    before = lab.usb_events("fw-h723v10")
    bad = lab.pyinfra(str(DEPLOY), "--limit", "fw-h723v10", check=False, inventory=inventory)
    assert bad.returncode != 0
    assert "host fw-h723v10: field 'attended_flash' is set in the inventory" in bad.stdout
    assert lab.usb_events("fw-h723v10") == before


def test_rule3_an_image_for_another_mcu_or_address_is_refused_before_any_command(lab: RunningFarm, tmp_path: Path) -> None:
    catalog = load_catalog()
    board = catalog["btt-octopus-pro-446"]
    commit = lab.info["versions"]["current"]["commit"]
    builder = Builder(lab.state / "klipper-template", lab.state / "firmware-cache")
    built = builder.build(commit, board, render_fragment(board))
    target = built.directory / "klipper.bin"
    original = target.read_bytes()
    other_mcu = build_firmware(lab.state / "klipper-template", commit, catalog["btt-octopus-pro-h723-11"].kconfig,
                               tmp_path / "h723")
    wrong_address = build_firmware(lab.state / "klipper-template", commit,
                                   board.kconfig.replace("STM32_FLASH_START_8000", "STM32_FLASH_START_0000"),
                                   tmp_path / "f446-at-0")
    pid = pistate(lab, "fw-badimage")["klippy_pid"]
    try:
        for bad, why in ((other_mcu, "stm32h723xx"), (wrong_address, "0x08008000")):
            shutil.copy2(bad / "klipper.bin", target)
            out = deploy(lab, "fw-badimage")
            assert "not flashing" in out and "image does not fit the board" in out and why in out, out
            assert [e for e in lab.usb_events("fw-badimage") if e["event"] != "mode"] == []
            assert pistate(lab, "fw-badimage")["klippy_pid"] == pid
    finally:
        target.write_bytes(original)


@pytest.mark.parametrize("pi", ["fw-exit74", "fw-exit251"])
def test_rule4_dfu_util_exit_74_and_251_count_as_success_once_the_board_is_back(lab: RunningFarm, pi: str) -> None:
    out = deploy(lab, pi)
    assert mcu_version(lab, pi) == current(lab), out
    total = grand_total(out)
    assert total["error"] == 0 and total["success"] > 0, out


def test_rule4_a_board_that_never_returns_fails_that_pi_alone_with_klipper_restarted(lab: RunningFarm) -> None:
    out = deploy(lab, "fw-noreturn", "fw-idle")
    (record,) = [r for r in results(out) if r["board"] == "btt-octopus-pro-h723-11" and r["action"] == "failed"]
    assert "did not come back as Klipper" in record["reason"]
    assert record["klipper_restarted"] is True
    assert pistate(lab, "fw-noreturn")["services"]["klipper"] == "active"
    assert re.search(r"\[fw-noreturn\].*Error", out)
    assert mcu_version(lab, "fw-idle") == current(lab)  # the other printer is fine


def test_rule6_two_boards_in_dfu_are_each_flashed_by_port(lab: RunningFarm) -> None:
    out = deploy(lab, "fw-pair")
    assert mcu_version(lab, "fw-pair", "mcu") == current(lab), out
    assert mcu_version(lab, "fw-pair", "second") == current(lab), out
    ports = {e["port"] for e in lab.usb_events("fw-pair") if e["event"] == "leave-request"}
    assert ports == {"1-1.1", "1-1.2"}
    assert len(re.findall(r"Starting operation: .*\| Upload ", out)) == 1, out  # one identity, one upload


def test_each_identity_is_built_once_for_the_whole_run(lab: RunningFarm) -> None:
    made = builds_made(lab.state / "firmware-cache")
    identities = [b["identity"] for b in made]
    assert len(identities) == len(set(identities))


def flash_contents(lab: RunningFarm, pi: str, port: str) -> bytes:
    return (lab.upper(pi) / "var/lib/ratos-sim/usb" / port / "flash.bin").read_bytes()


def shipped(lab: RunningFarm, pi: str, name: str) -> bytes:
    """The one artifact file ``name`` the pipeline shipped to the Pi."""
    (path,) = (lab.state / "pis" / pi / "home/pi/printer_data/firmware").glob(f"*/{name}")
    return path.read_bytes()


def test_pyusb_backend_catches_a_corrupted_write_by_read_back_and_writes_again(lab: RunningFarm) -> None:
    pi, port = "fw-pyusb", "1-1.1"
    out = deploy(lab, pi, data="flash_backend=pyusb", verbose=True)
    (record,) = [r for r in results(out) if r["board"] == "btt-octopus-pro-h723-11"]
    assert (record["action"], record["backend"], record["read_back"]) == ("flashed", "pyusb", True), out
    assert "the first write read back wrong; attempt 2 read back right" in record["reason"]
    assert [e["event"] for e in lab.usb_events(pi)].count("corrupt-write") == 1
    image = shipped(lab, pi, "klipper.bin")
    assert flash_contents(lab, pi, port)[0x20000:0x20000 + len(image)] == image
    assert mcu_version(lab, pi) == current(lab)
    assert pistate(lab, pi)["services"]["klipper"] == "active"
    stamp = lab.state / "pis" / pi / "home/pi" / firmware.DFU_CLIENT_STAMP
    installed = stamp.stat().st_mtime_ns

    rerun = deploy(lab, pi, data="flash_backend=pyusb", verbose=True)
    assert stamp.stat().st_mtime_ns == installed  # the client went over once
    assert grand_total(rerun)["error"] == 0 and not results(rerun), rerun  # on its identity: no flash


def test_linux_host_mcu_gets_klipper_elf_as_klipper_mcu_and_reports_the_new_version(lab: RunningFarm) -> None:
    pi = "fw-hostmcu"
    assert mcu_version(lab, pi, "rpi") == lab.info["versions"]["old"]["version"]
    out = deploy(lab, pi)
    assert (lab.upper(pi) / "usr/local/bin/klipper_mcu").read_bytes() == shipped(lab, pi, "klipper.elf"), out
    assert mcu_version(lab, pi, "rpi") == current(lab), out
    answer = json.loads(lab.ssh(pi, "curl -s 'http://127.0.0.1:7125/printer/objects/query?mcu%20rpi'").stdout)
    assert answer["result"]["status"]["mcu rpi"]["mcu_version"] == current(lab)
    state = pistate(lab, pi)
    assert state["services"]["klipper-mcu"] == "active" and state["services"]["klipper"] == "active"
    rerun = deploy(lab, pi)
    total = grand_total(rerun)
    assert (total["success"], total["error"]) == (0, 0), rerun


def test_a_single_printer_builds_on_the_pi_as_the_checkout_owner_then_flashes(lab: RunningFarm, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        f"exec(open({str(lab.inventory)!r}).read())\n"
        "pis = [(n, {**d, 'firmware_build': 'pi', 'klipper_source': None}) for n, d in pis]\n"
    )
    out = lab.pyinfra(str(DEPLOY), "--limit", "fw-pibuild", check=False, inventory=inventory).stdout
    assert mcu_version(lab, "fw-pibuild") == current(lab), out
    artifacts = lab.state / "pis" / "fw-pibuild" / "home" / "pi" / "printer_data" / "firmware"
    (built,) = [p for p in artifacts.iterdir() if not p.name.startswith(".")]
    assert built.name.startswith(current(lab) + "-")
    assert (built / "klipper.bin").stat().st_uid == 1000  # built as pi, the checkout's owner
    rerun = lab.pyinfra(str(DEPLOY), "--limit", "fw-pibuild", check=False, inventory=inventory).stdout
    total = grand_total(rerun)
    assert (total["success"], total["error"]) == (0, 0), rerun
