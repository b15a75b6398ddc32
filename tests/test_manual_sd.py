"""Boards only an SD card flashes: the file is staged under the bootloader's name, the procedure is
given, and the board is held, so the printer's Klipper stays where its firmware matches it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pyinfra_ratos.firmware.builder import Builder
from pyinfra_ratos.firmware.catalog import CatalogError, load_board, load_catalog
from pyinfra_ratos.firmware.kconfig import render_fragment
from pyinfra_ratos.printer import gate
from pyinfra_ratos.sim.klipper_repo import create_template_repo

from test_flash_plan import IDLE, artifact, klipper_usb, plan  # noqa: F401 - the built-artifact fixture

SKR2 = load_catalog()["btt-skr-2"]


def running(art) -> dict:
    return {"version": art.identity.version, "constants": dict(art.image.config), "connected": True}


def test_the_skr2_is_in_the_catalog_as_an_sd_card_board_with_klippers_values() -> None:
    assert (SKR2.flash_methods, SKR2.sd_firmware_name, SKR2.app_address) == (("manual-sd",), "firmware.bin", 0x08008000)
    assert "CONFIG_STM32_FLASH_START_8000=y" in SKR2.kconfig and SKR2.crystal == 8_000_000
    assert "dfu" not in SKR2.flash_methods  # its ROM DFU needs the BOOT0 jumper: never reached by software


def test_an_sd_card_board_must_say_which_file_its_bootloader_reads(tmp_path: Path) -> None:
    text = SKR2.source.read_text().replace('sd_firmware_name = "firmware.bin"\n', "")
    (tmp_path / "btt-skr-2.toml").write_text(text)
    with pytest.raises(CatalogError, match="sd_firmware_name"):
        load_board(tmp_path / "btt-skr-2.toml")


def test_a_behind_sd_board_is_held_with_the_exact_procedure_and_its_file_shipped(artifact) -> None:
    art = artifact(SKR2)
    result = plan(SKR2, art, attached={"1-1.3": klipper_usb(SKR2)},
                  mcu={"version": "v0.12.0-0-g097b935", "constants": {"MCU": "stm32f407xx"}, "connected": True})
    assert (result.action, result.method, result.hold, result.ship) == ("refuse", "manual-sd", True, True)
    folder = art.path.rsplit("/", 1)[0]
    assert f"{folder}/firmware.bin" in result.procedure[0] and "FAT32 SD card as firmware.bin" in result.procedure[0]
    assert "power" in result.procedure[1] and art.identity.version in result.procedure[2]
    assert all(step in result.reason for step in result.procedure)  # the report carries the reason
    # the gate keeps Klipper where it is while the board waits for its card
    assert gate.klipper_move_refused(True, [result.reason]).startswith("not updating Klipper: btt-skr-2")


def test_once_the_board_runs_its_build_it_is_skipped_and_klipper_may_move(artifact) -> None:
    art = artifact(SKR2)
    assert plan(SKR2, art, attached={}, mcu=running(art)).skip


def test_a_busy_printer_is_not_asked_for_a_card_swap_but_still_held(artifact) -> None:
    busy = {**IDLE, "print_state": "printing", "busy": True}
    result = plan(SKR2, artifact(SKR2), attached={}, activity=busy)
    assert result.refused and result.hold and "busy" in result.reason


def test_the_build_files_the_image_under_the_name_the_bootloader_reads(tmp_path: Path) -> None:
    commit = create_template_repo(tmp_path / "klipper")["current"]["commit"]
    built = Builder(tmp_path / "klipper", tmp_path / "cache").build(commit, SKR2, render_fragment(SKR2))
    assert (built.directory / "firmware.bin").read_bytes() == (built.directory / "klipper.bin").read_bytes()
    manifest = json.loads((built.directory / "identity.json").read_text())
    assert sorted(manifest["files"]) == ["config", "firmware.bin", "klipper.bin"]
    # a board without an SD name gets no such copy
    plain = dataclasses.replace(SKR2, id="x", sd_firmware_name=None, flash_methods=("dfu",))
    assert not (Builder(tmp_path / "klipper", tmp_path / "cache2").build(commit, plain, render_fragment(plain))
                .directory / "firmware.bin").exists()
