"""The flash plan: skip, refuse or flash, decided from facts, the catalog and a real built image.

Tests of design.md section 3 are named after the rule they protect.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from typing import Any

import pytest

from pyinfra_ratos.firmware.can import can_attached, flash_order
from pyinfra_ratos.firmware.catalog import Board, load_catalog
from pyinfra_ratos.firmware.image import inspect_image
from pyinfra_ratos.firmware.plan import (
    Artifact,
    DfuDownload,
    EnsureIdle,
    FlashPlan,
    InstallBinary,
    PyusbDownload,
    RequestBootloader,
    RestartService,
    StartKlipper,
    StopKlipper,
    Verify,
    WaitDfu,
    WaitKlipper,
    judge_dfu_result,
    plan_flash,
    with_backend,
)
from pyinfra_ratos.firmware.identity import FirmwareIdentity, identity_of
from pyinfra_ratos.sim.klipper_repo import create_template_repo

CATALOG = load_catalog()
H723 = CATALOG["btt-octopus-pro-h723-11"]
H723_V10 = CATALOG["btt-octopus-pro-h723"]   # heaters on in DFU: never unattended
EBB = CATALOG["btt-ebb36-12"]                # G0B1 at 0x08000000
MANTA = CATALOG["btt-manta-m8p-11"]          # G0B1 at 0x08002000
RPI = CATALOG["rpi"]
GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
IDLE = {"moonraker": True, "klippy_state": "ready", "print_state": "standby", "idle_state": "Idle",
        "sdcard_active": False, "busy": False}
PRINTING = {**IDLE, "print_state": "printing", "idle_state": "Printing", "busy": True}
PAUSED = {**IDLE, "print_state": "paused", "idle_state": "Ready", "busy": True}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory):
    """Build a board with the fake Klipper tree (two make calls) -> an Artifact as on the Pi."""
    root = tmp_path_factory.mktemp("plan")
    repo = root / "klipper"
    version = create_template_repo(repo)["current"]["version"]
    cache: dict[str, Artifact] = {}

    def build(board: Board) -> Artifact:
        if board.id not in cache:
            config, out = root / f"{board.id}.config", root / "build" / board.id
            config.write_text(board.kconfig)
            # a host MCU is cross-built for the (armhf) Pi, as the builder does
            cross = ["CROSS_PREFIX=arm-linux-gnueabihf-"] if board.interface == "linux" else []
            for targets in (["olddefconfig"], []):
                subprocess.run(["make", f"KCONFIG_CONFIG={config}", f"OUT={out}/", *cross, *targets], cwd=repo,
                               env=GIT_ENV, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            resolved = config.read_text()
            image = inspect_image((out / board.firmware_file).read_bytes(), board.firmware_file.rsplit(".")[-1])
            target = "armhf" if board.interface == "linux" else ""
            cache[board.id] = Artifact(identity_of(version, resolved, board, target), image,
                                       str(out / board.firmware_file), resolved)
        return cache[board.id]
    return build


def klipper_usb(board: Board, port: str = "1-1.3", tty: str = "/dev/ttyACM0") -> dict[str, Any]:
    return {"port": port, "vid_pid": "1d50:614e", "mode": "klipper", "manufacturer": "Klipper",
            "product": board.mcu, "serial": board.id, "mcu": board.mcu, "busnum": 1, "devnum": 4,
            "tty": tty, "by_id": f"/dev/serial/by-id/usb-Klipper_{board.mcu}_{board.id}-if00",
            "by_path": None, "ratos_link": f"/dev/RatOS/{board.id}", "dfu_flash_map": None,
            "board_id": board.id, "board_candidates": [b.id for b in CATALOG.values() if b.mcu == board.mcu]}


def dfu_usb(board: Board, port: str) -> dict[str, Any]:
    return {**klipper_usb(board, port), "vid_pid": "0483:df11", "mode": "dfu", "manufacturer": "STMicroelectronics",
            "serial": "200364500000", "mcu": None, "tty": None, "by_id": None, "ratos_link": None,
            "board_id": None}


def running(artifact: Artifact, connected: bool = True, **constants: Any) -> dict[str, Any]:
    return {"version": artifact.identity.version, "build_versions": artifact.image.build_versions,
            "constants": {**artifact.image.config, **constants}, "connected": connected, "matches_host": True}


def plan(board: Board, artifact: Artifact, attached: dict | None = None, mcu: dict | None = None,
         activity: dict | None = None, **flags: Any) -> FlashPlan:
    attached = {"1-1.3": klipper_usb(board)} if attached is None else attached
    flags.setdefault("host_arch", "armhf")  # the Pi's userland (KlipperHost arch)
    return plan_flash(board, attached, mcu, IDLE if activity is None else activity, artifact, **flags)


# ---------------------------------------------------------------- the normal paths

def test_klipper_mode_board_is_flashed_through_its_bootloader_request(artifact) -> None:
    art = artifact(H723)
    result = plan(H723, art, mcu={"version": "v0.12.0-0-g097b935", "constants": {"MCU": "stm32h723xx"},
                                  "connected": True})
    assert result.action == "flash" and result.method == "dfu-util" and result.port == "1-1.3"
    assert result.steps == (
        EnsureIdle(), StopKlipper(), RequestBootloader("/dev/ttyACM0", "1-1.3"), WaitDfu("1-1.3", 10.0),
        # the 384 KiB from the app address to the end of the 512 KiB flash (an STM32H723ZET6) are
        # kept before writing
        DfuDownload(port="1-1.3", address=0x08020000, image=art.path, alt=0, leave=True,
                    capture_length=0x80000 - 0x20000),
        WaitKlipper("1-1.3", 30.0),
    )
    assert result.finally_steps == (StartKlipper(),)
    assert result.verify_steps == (Verify("mcu", art.identity.version),)
    assert (result.before_version, result.expected_version) == ("v0.12.0-0-g097b935", art.identity.version)


def test_board_already_in_dfu_is_flashed_without_a_bootloader_request(artifact) -> None:
    result = plan(H723, artifact(H723), attached={"1-1.3": dfu_usb(H723, "1-1.3")})
    assert result.action == "flash"
    assert not any(isinstance(step, RequestBootloader) for step in result.steps)


def test_board_running_the_identity_is_skipped_with_version_and_identity(artifact) -> None:
    art = artifact(H723)
    result = plan(H723, art, mcu=running(art))
    assert result.skip and result.steps == ()
    assert art.identity.version in result.reason and art.identity.name in result.reason


def test_same_version_with_another_crystal_is_flashed(artifact) -> None:
    art = artifact(H723)
    assert plan(H723, art, mcu=running(art, CLOCK_REF_FREQ=8000000)).action == "flash"


@pytest.mark.parametrize("mcu", [None, {}, {"version": "x", "connected": False}])
def test_board_whose_firmware_is_unknown_is_flashed(artifact, mcu: dict | None) -> None:
    assert plan(H723, artifact(H723), mcu=mcu).action == "flash"


def test_disconnected_mcu_is_not_taken_as_up_to_date(artifact) -> None:
    art = artifact(H723)
    assert plan(H723, art, mcu=running(art, connected=False)).action == "flash"


def test_linux_host_mcu_installs_the_binary_and_restarts_klipper_mcu(artifact) -> None:
    art = artifact(RPI)
    result = plan(RPI, art, attached={}, mcu_name="rpi")
    assert result.action == "flash" and result.method == "linux"
    assert result.steps == (EnsureIdle(), StopKlipper(), InstallBinary(art.path, "/usr/local/bin/klipper_mcu"),
                            RestartService("klipper-mcu"))
    assert result.verify_steps == (Verify("rpi", art.identity.version),)
    assert plan(RPI, art, attached={}, mcu=running(art)).skip


def test_pyusb_backend_is_named_in_the_plan(artifact) -> None:
    assert plan(H723, artifact(H723), backend="pyusb").method == "pyusb"
    with pytest.raises(ValueError, match="dfu-util"):
        plan(H723, artifact(H723), backend="stm32flash")


def test_pyusb_backend_writes_with_the_client_and_never_erases_below_the_app(artifact) -> None:
    art = artifact(H723)
    result = plan(H723, art, backend="pyusb")
    downloads = [step for step in result.steps if isinstance(step, (DfuDownload, PyusbDownload))]
    assert downloads == [PyusbDownload(port="1-1.3", address=0x08020000, image=art.path, protect_below=0x08020000,
                                       capture_length=0x80000 - 0x20000)]
    assert isinstance(result.steps[-1], WaitKlipper)


def test_with_backend_swaps_only_the_download_step(artifact) -> None:
    by_dfu_util = plan(H723, artifact(H723))
    by_pyusb = with_backend(by_dfu_util, "pyusb")
    assert by_pyusb == plan(H723, artifact(H723), backend="pyusb")
    assert with_backend(by_pyusb, "dfu-util") == by_dfu_util
    linux = plan(RPI, artifact(RPI), attached={}, mcu_name="rpi")
    assert with_backend(linux, "pyusb") == linux  # nothing to write over DFU
    with pytest.raises(ValueError, match="pyusb"):
        with_backend(by_dfu_util, "openocd")


# ---------------------------------------------------------------- rule 1: never while printing

@pytest.mark.parametrize("activity", [PRINTING, PAUSED], ids=["printing", "paused"])
def test_rule1_busy_printer_is_never_stopped_or_flashed(artifact, activity: dict) -> None:
    result = plan(H723, artifact(H723), activity=activity)
    assert result.refused and result.steps == () and "busy" in result.reason


def test_rule1_unknown_printer_state_never_counts_as_idle(artifact) -> None:
    result = plan(H723, artifact(H723), activity={})
    assert result.refused and "unknown" in result.reason


def test_rule1_idle_is_rechecked_right_before_klipper_is_stopped(artifact) -> None:
    for result in (plan(H723, artifact(H723)), plan(RPI, artifact(RPI), attached={})):
        assert result.steps[0] == EnsureIdle() and result.steps[1] == StopKlipper()


def test_rule1_a_board_already_up_to_date_is_skipped_even_while_printing(artifact) -> None:
    art = artifact(H723)
    assert plan(H723, art, mcu=running(art), activity=PRINTING).skip


# ---------------------------------------------------------------- rule 2: never unattended

def test_rule2_never_unattended_board_is_refused_without_the_operator_flag(artifact) -> None:
    result = plan(H723_V10, artifact(H723_V10))
    assert result.refused and H723_V10.unattended_reason in result.reason and "attended" in result.reason


def test_rule2_never_unattended_board_is_flashed_with_the_operator_flag(artifact) -> None:
    assert plan(H723_V10, artifact(H723_V10), attended_flash=True).action == "flash"


def test_rule2_the_flag_does_not_override_a_busy_printer(artifact) -> None:
    assert plan(H723_V10, artifact(H723_V10), attended_flash=True, activity=PRINTING).refused


# ---------------------------------------------------------------- rule 3: the image must fit

def test_rule3_image_for_another_mcu_is_refused(artifact) -> None:
    skr3 = CATALOG["btt-skr-3"]  # H743 at the H723's address
    result = plan(skr3, artifact(H723), attached={"1-1.3": klipper_usb(skr3)})
    assert result.refused and "stm32h723xx" in result.reason and "stm32h743xx" in result.reason


def test_rule3_image_for_another_application_address_is_refused(artifact) -> None:
    result = plan(MANTA, artifact(EBB), attached={"1-1.3": klipper_usb(MANTA)})
    assert result.refused and "0x08002000" in result.reason


def test_rule3_g0b1_image_for_0x08002000_is_refused_for_an_ebb_usb_board_by_its_config(artifact) -> None:
    # a 0x08002000 image on a 0x08000000 board: its reset handler (~30 KiB in) still lies inside
    # the image, so only the resolved config stored with the artifact tells
    art = artifact(MANTA)
    assert art.image.vector_in_range(EBB.app_address) and art.image.vector_in_range(MANTA.app_address)
    relabelled = Artifact(FirmwareIdentity(art.identity.version, art.identity.config_sha256, EBB.id),
                          art.image, art.path, art.resolved_config)
    result = plan(EBB, relabelled, attached={"1-1.3": klipper_usb(EBB)})
    assert EBB.interface == "usb" and EBB.mcu == MANTA.mcu
    assert result.refused and "linked for 0x08002000" in result.reason and "0x08000000" in result.reason


def test_rule3_the_resolved_config_is_a_required_part_of_an_artifact(artifact) -> None:
    art = artifact(EBB)
    with pytest.raises(TypeError):
        Artifact(art.identity, art.image, art.path)  # type: ignore[call-arg]
    assert plan(EBB, art, attached={"1-1.3": klipper_usb(EBB)}).action == "flash"


def test_rule3_artifact_built_for_another_board_is_refused(artifact) -> None:
    # same MCU and address, but another board's config (serial, pins): not this board's build
    result = plan(H723_V10, artifact(H723), attached={"1-1.3": klipper_usb(H723_V10)}, attended_flash=True)
    assert result.refused and f"built for board {H723.id}" in result.reason


def test_rule3_config_that_does_not_hash_to_the_identity_is_refused(artifact) -> None:
    art = artifact(H723)
    swapped = Artifact(art.identity, art.image, art.path, art.resolved_config + "CONFIG_X=y\n")
    assert "does not hash" in plan(H723, swapped).reason


def test_rule3_image_whose_version_differs_from_its_identity_is_refused(artifact) -> None:
    art = artifact(H723)
    stale = Artifact(FirmwareIdentity("v0.14.0-0-gdeadbee", art.identity.config_sha256, H723.id),
                     art.image, art.path, art.resolved_config)
    assert "stale or swapped" in plan(H723, stale).reason


def test_rule3_device_at_the_port_running_another_mcu_is_refused(artifact) -> None:
    other = {**klipper_usb(H723), "mcu": "stm32f446xx", "board_id": None, "board_candidates": []}
    result = plan(H723, artifact(H723), attached={"1-1.3": other}, port="1-1.3")
    assert result.refused and "stm32f446xx" in result.reason


# ---------------------------------------------------------------- rule 4: Klipper always restarted

def test_rule4_klipper_is_started_on_every_exit_path_once_stopped(artifact) -> None:
    plans = [plan(H723, artifact(H723)), plan(H723, artifact(H723), attached={"1-1.3": dfu_usb(H723, "1-1.3")}),
             plan(RPI, artifact(RPI), attached={})]
    for result in plans:
        assert StopKlipper() in result.steps
        assert result.finally_steps == (StartKlipper(),)
        assert StartKlipper() not in result.steps  # only the finally block starts it, exactly once


def test_rule4_success_is_verified_by_version_not_by_exit_status(artifact) -> None:
    result = plan(H723, artifact(H723))
    assert result.verify_steps == (Verify("mcu", artifact(H723).identity.version),)
    assert isinstance(result.steps[-1], WaitKlipper) and result.steps[-1].port == result.port


GOOD = "Download\t[=========================] 100%  32768 bytes\nDownload done.\nFile downloaded successfully\n"


@pytest.mark.parametrize("exit_code, tail", [
    (0, ""),
    (74, "Error during download get_status\n"),
    (251, "can't detach\n"),
])
def test_rule4_exit_74_or_251_after_a_good_download_is_not_a_failure(exit_code: int, tail: str) -> None:
    ok, reason = judge_dfu_result(exit_code, GOOD + tail, True, "v1", "v1")
    assert ok and "v1" in reason


def test_rule4_exit_zero_without_the_board_coming_back_is_a_failure() -> None:
    ok, reason = judge_dfu_result(0, GOOD, False, None, "v1")
    assert not ok and "did not come back" in reason


def test_rule4_board_back_with_another_version_is_a_failure() -> None:
    ok, reason = judge_dfu_result(0, GOOD, True, "v0", "v1")
    assert not ok and "v0" in reason and "v1" in reason


def test_rule4_no_download_message_is_a_failure_even_with_exit_zero() -> None:
    assert judge_dfu_result(0, "Opening DFU capable USB device...\n", True, "v1", "v1")[0] is False


@pytest.mark.parametrize("output, why", [
    ("dfu-util: No DFU capable USB device available\n", "no board in DFU"),
    ("dfu-util: Last page at 0x0801ffff is not writeable\n", "write-protected"),
    ('dfu-util: Wrong state after command "ERASE_PAGE" download\n', "error while erasing"),
    ("dfu-util: More than one DFU capable USB device found! Try `--list'\n", "select the board by USB port"),
])
def test_rule4_known_dfu_errors_are_failures_with_a_reason(output: str, why: str) -> None:
    ok, reason = judge_dfu_result(74, GOOD + output, True, "v1", "v1")
    assert not ok and why in reason


# ---------------------------------------------------------------- rule 6: select by USB port

def test_rule6_dfu_download_is_addressed_by_the_boards_usb_port(artifact) -> None:
    attached = {"1-1.2": dfu_usb(H723, "1-1.2"), "1-1.4": dfu_usb(H723, "1-1.4")}
    result = plan(H723, artifact(H723), attached=attached, port="1-1.4")
    downloads = [step for step in result.steps if isinstance(step, DfuDownload)]
    assert [step.port for step in downloads] == ["1-1.4"]
    assert all(step.port == "1-1.4" for step in result.steps if hasattr(step, "port"))


def test_rule6_two_boards_in_dfu_without_a_pinned_port_are_ambiguous(artifact) -> None:
    attached = {"1-1.2": dfu_usb(H723, "1-1.2"), "1-1.4": dfu_usb(H723, "1-1.4")}
    result = plan(H723, artifact(H723), attached=attached)
    assert result.refused and "ambiguous" in result.reason and "1-1.2" in result.reason


def test_rule6_two_boards_reporting_the_same_id_are_ambiguous(artifact) -> None:
    attached = {"1-1.2": klipper_usb(H723, "1-1.2"), "1-1.4": klipper_usb(H723, "1-1.4", "/dev/ttyACM1")}
    assert "ambiguous" in plan(H723, artifact(H723), attached=attached).reason


def test_board_found_by_its_serial_among_others(artifact) -> None:
    attached = {"1-1.2": dfu_usb(EBB, "1-1.2"), "1-1.4": klipper_usb(H723, "1-1.4", "/dev/ttyACM1")}
    assert plan(H723, artifact(H723), attached=attached).port == "1-1.4"


# ---------------------------------------------------------------- boards we cannot flash (yet)

def test_board_not_on_usb_is_refused(artifact) -> None:
    result = plan(H723, artifact(H723), attached={})
    assert result.refused and "not found on USB" in result.reason
    assert "nothing is attached at USB port 1-1.9" in plan(H723, artifact(H723), port="1-1.9").reason


def test_board_in_katapult_is_flashed_through_katapult(artifact) -> None:
    katapult = {**klipper_usb(H723), "mode": "katapult", "vid_pid": "1d50:6177"}
    board = dataclasses.replace(H723, flash_methods=("katapult", "dfu"))
    result = plan(board, artifact(board), attached={"1-1.3": katapult})
    assert (result.action, result.method, result.port) == ("flash", "katapult", "1-1.3")
    assert not any(type(step).__name__ == "RequestBootloader" for step in result.steps)


def test_board_without_katapult_found_in_katapult_is_refused(artifact) -> None:
    katapult = {**klipper_usb(H723), "mode": "katapult", "vid_pid": "1d50:6177"}
    result = plan(H723, artifact(H723), attached={"1-1.3": katapult})
    assert result.refused and "katapult mode" in result.reason and "is the board id right" in result.reason


def test_can_board_without_its_uuid_is_refused_with_the_fix(artifact) -> None:
    can = CATALOG["btt-ebb36-12-can"]
    result = plan(can, artifact(can), attached={})
    assert result.refused and "set its canbus_uuid in the inventory" in result.reason


def test_an_rp2040_running_klipper_is_requested_into_bootsel_by_port_and_written_over_picoboot(artifact) -> None:
    pico = CATALOG["rpi-pico"]
    result = plan(pico, artifact(pico), attached={"1-1.3": klipper_usb(pico)})
    assert (result.action, result.method, result.port) == ("flash", "rp2040", "1-1.3")
    assert [type(step).__name__ for step in result.steps] == [
        "EnsureIdle", "StopKlipper", "RequestBootloader", "WaitBootsel", "PicobootWrite", "WaitKlipper"]
    write = result.steps[4]
    assert write.port == "1-1.3" and write.image.endswith("klipper.uf2") and write.capture_limit == 2 * 1024 * 1024
    assert result.needs_client  # the PICOBOOT client runs from the pyusb venv on the Pi


@pytest.mark.parametrize("board_id", ["rpi-pico", "btt-skr-pico-10"])
def test_an_rp2040_found_in_bootsel_is_written_without_a_request(artifact, board_id: str) -> None:
    board = CATALOG[board_id]
    bootsel = {**klipper_usb(board), "vid_pid": "2e8a:0003", "mode": "rp2040-boot", "mcu": "rp2040", "tty": None,
               "by_id": None, "board_id": None}
    result = plan(board, artifact(board), attached={"1-1.3": bootsel}, port="1-1.3")
    assert (result.action, result.method) == ("flash", "rp2040"), result.reason
    assert "RequestBootloader" not in [type(step).__name__ for step in result.steps]


def test_an_rp2350_in_bootsel_is_not_taken_for_an_rp2040(artifact) -> None:
    pico = CATALOG["rpi-pico"]
    bootsel = {**klipper_usb(pico), "vid_pid": "2e8a:000f", "mode": "rp2040-boot", "mcu": "rp2350", "tty": None}
    result = plan(pico, artifact(pico), attached={"1-1.3": bootsel}, port="1-1.3")
    assert result.refused and "rp2350" in result.reason and "wrong board id or port" in result.reason


def test_dfu_device_that_looks_like_another_board_is_refused(artifact) -> None:
    attached = {"1-1.3": dfu_usb(EBB, "1-1.3")}
    result = plan(H723, artifact(H723), attached=attached, port="1-1.3")
    assert result.refused and "looks like" in result.reason


def test_a_katapult_board_running_klipper_is_requested_into_katapult_by_port(artifact) -> None:
    board = CATALOG["btt-octopus-pro-h723-11-katapult"]
    result = plan(board, artifact(board), attached={"1-1.4": klipper_usb(board, "1-1.4")})
    assert (result.action, result.method, result.port) == ("flash", "katapult", "1-1.4")
    names = [type(step).__name__ for step in result.steps]
    assert names == ["EnsureIdle", "StopKlipper", "RequestBootloader", "WaitKatapult", "KatapultWrite", "WaitKlipper"]
    write = result.steps[4]
    assert (write.address, write.port, write.mcu) == (0x08020000, "1-1.4", "stm32h723xx")


def test_a_katapult_board_found_in_rom_dfu_is_written_over_dfu(artifact) -> None:
    board = CATALOG["btt-octopus-pro-446-katapult"]
    result = plan(board, artifact(board), attached={"1-1.3": dfu_usb(board, "1-1.3")}, port="1-1.3")
    assert (result.action, result.method) == ("flash", "dfu-util")


# ---------------------------------------------------------------- CAN toolboards and bridges

UUID_T0, UUID_BRIDGE = "65efaa4cf65d", "90a4ae022dfc"
EBB_CAN = CATALOG["btt-ebb36-12-can"]
BRIDGE = CATALOG["btt-octopus-pro-h723-11-canbridge"]


def can_fact(answers: bool | None, app: str | None = "Klipper", state: str = "up") -> dict[str, Any]:
    return {"interfaces": {"can0": {"present": state != "absent", "state": state, "bitrate": 1000000,
                                    "txqueuelen": 128}},
            "nodes": {UUID_T0: {"uuid": UUID_T0, "mcu_name": "toolboard_t0", "interface": "can0", "app": app,
                                "answers": answers, "mcu_version": None, "why_unknown": "3 nodes may be unassigned"}}}


def test_a_can_toolboard_is_flashed_through_katapult_over_can_by_its_uuid(artifact) -> None:
    result = plan(EBB_CAN, artifact(EBB_CAN), attached=can_attached(can_fact(True)), canbus_uuid=UUID_T0)
    assert (result.action, result.method, result.port) == ("flash", "katapult-can", f"can0/{UUID_T0}")
    assert [type(step).__name__ for step in result.steps] == [
        "EnsureIdle", "StopKlipper", "CanEnterKatapult", "KatapultCanWrite"]
    write = result.steps[3]
    assert (write.interface, write.uuid, write.address, write.mcu) == ("can0", UUID_T0, 0x08002000, "stm32g0b1xx")


def test_a_silent_can_node_is_refused_by_name_and_nothing_is_stopped(artifact) -> None:
    result = plan(EBB_CAN, artifact(EBB_CAN), attached=can_attached(can_fact(False, None)), canbus_uuid=UUID_T0)
    assert result.refused and not result.hold and not result.steps
    assert f"CAN node toolboard_t0 ({UUID_T0}) does not answer on can0" in result.reason


@pytest.mark.parametrize("fact,words", [
    (can_fact(None, None), "cannot tell whether CAN node toolboard_t0"),
    (can_fact(True, state="down"), "can0 is down"),
    ({}, "not in the printer's config yet"),
])
def test_a_can_node_that_cannot_be_reached_now_is_refused_with_why(artifact, fact, words) -> None:
    attached = can_attached(fact, [(UUID_T0, "toolboard_t0", "can0")])
    result = plan(EBB_CAN, artifact(EBB_CAN), attached=attached, canbus_uuid=UUID_T0)
    assert result.refused and words in result.reason


def test_a_bridge_is_asked_for_its_bootloader_over_can_then_written_over_dfu(artifact) -> None:
    bridge = {**klipper_usb(BRIDGE, "1-1.1"), "vid_pid": "1d50:606f", "mode": "can-bridge", "tty": None}
    result = plan(BRIDGE, artifact(BRIDGE), attached={"1-1.1": bridge}, canbus_uuid=UUID_BRIDGE)
    assert (result.action, result.method, result.port) == ("flash", "can-bridge", "1-1.1")
    assert [type(step).__name__ for step in result.steps] == [
        "EnsureIdle", "StopKlipper", "CanRequestBridgeBootloader", "WaitDfu", "DfuDownload", "WaitKlipper",
        "WaitCanUp"]
    assert (result.steps[2].uuid, result.steps[2].port) == (UUID_BRIDGE, "1-1.1")
    no_uuid = plan(BRIDGE, artifact(BRIDGE), attached={"1-1.1": bridge})
    assert no_uuid.refused and "set its canbus_uuid" in no_uuid.reason


def test_a_bridge_with_katapult_is_written_through_katapult_after_the_can_request(artifact) -> None:
    board = CATALOG["btt-manta-m8p-11-katapult-canbridge"]
    bridge = {**klipper_usb(board, "1-1.1"), "vid_pid": "1d50:606f", "mode": "can-bridge", "tty": None}
    result = plan(board, artifact(board), attached={"1-1.1": bridge}, canbus_uuid=UUID_BRIDGE)
    assert (result.action, result.method) == ("flash", "can-bridge")
    assert [type(step).__name__ for step in result.steps] == [
        "EnsureIdle", "StopKlipper", "CanRequestBridgeBootloader", "WaitKatapult", "KatapultWrite", "WaitKlipper",
        "WaitCanUp"]


def test_an_image_for_another_bus_speed_is_refused_unless_a_bridge_sets_the_speed(artifact) -> None:
    slow = can_fact(True)
    slow["interfaces"]["can0"]["bitrate"] = 500000
    result = plan(EBB_CAN, artifact(EBB_CAN), attached=can_attached(slow), canbus_uuid=UUID_T0)
    assert result.refused and "runs the CAN bus at 1000000 bit/s but can0 is at 500000 bit/s" in result.reason
    bridged = plan(EBB_CAN, artifact(EBB_CAN), attached=can_attached(slow, bridged=True), canbus_uuid=UUID_T0)
    assert bridged.action == "flash"


def test_toolboards_are_flashed_before_usb_boards_and_the_bridge_last() -> None:
    boards = [BRIDGE, H723, EBB_CAN, RPI, CATALOG["btt-ebb42-12-can"]]
    assert [b.id for b in flash_order(boards, lambda b: b.interface)] == [
        "btt-ebb36-12-can", "btt-ebb42-12-can", "btt-octopus-pro-h723-11", "rpi", "btt-octopus-pro-h723-11-canbridge"]
