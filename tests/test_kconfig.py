"""Kconfig fragments per board and host, and catching what olddefconfig silently drops."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pyinfra_ratos.firmware.catalog import Board, load_catalog
from pyinfra_ratos.firmware.kconfig import (Hex, KconfigError, application_address, load_kconfig_symbols, parse_config,
                                   render_fragment, scan_kconfig, verify_resolved)
from pyinfra_ratos.sim.klipper_repo import create_template_repo

CATALOG = load_catalog()
H723 = CATALOG["btt-octopus-pro-h723-11"]
EBB = CATALOG["btt-ebb36-12"]
GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


@pytest.fixture(scope="module")
def klipper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("kconfig") / "klipper"
    create_template_repo(repo)
    return repo


@pytest.fixture()
def resolve(klipper: Path, tmp_path: Path):
    """Run the fake Klipper tree's real ``make olddefconfig`` on a fragment; the resolved text."""
    def run(fragment: str) -> str:
        config = tmp_path / "board.config"
        config.write_text(fragment)
        subprocess.run(["make", f"KCONFIG_CONFIG={config}", f"OUT={tmp_path}/out/", "olddefconfig"],
                       cwd=klipper, env=GIT_ENV, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return config.read_text()
    return run


def symbols(problems: list) -> set[str]:
    return {problem.symbol for problem in problems}


# ---------------------------------------------------------------- rendering

def test_no_overrides_render_the_catalog_fragment() -> None:
    assert render_fragment(H723) == H723.kconfig


def test_override_replaces_the_catalog_line_in_place() -> None:
    text = render_fragment(H723, {"USB_SERIAL_NUMBER": "printer-7-mcu"})
    assert 'CONFIG_USB_SERIAL_NUMBER="printer-7-mcu"' in text
    assert f'"{H723.id}"' not in text
    assert text.splitlines().index('CONFIG_USB_SERIAL_NUMBER="printer-7-mcu"') == \
        H723.kconfig.splitlines().index(f'CONFIG_USB_SERIAL_NUMBER="{H723.id}"')


def test_overrides_in_any_order_render_the_same_text() -> None:
    first = render_fragment(H723, {"INITIAL_PINS": "PA1", "CONFIG_SERIAL_BAUD": 115200})
    second = render_fragment(H723, {"SERIAL_BAUD": 115200, "INITIAL_PINS": "PA1"})
    assert first == second
    assert first.endswith('CONFIG_INITIAL_PINS="PA1"\nCONFIG_SERIAL_BAUD=115200\n')


def test_override_repeating_the_catalog_value_changes_nothing() -> None:
    assert render_fragment(H723, {"USB_SERIAL_NUMBER": H723.id, "LOW_LEVEL_OPTIONS": True}) == H723.kconfig


def test_string_override_is_quoted_and_escaped_as_kconfig_does() -> None:
    text = render_fragment(H723, {"INITIAL_PINS": 'say "hi" \\o/'})
    assert 'CONFIG_INITIAL_PINS="say \\"hi\\" \\\\o/"' in text
    assert parse_config(text)["INITIAL_PINS"] == 'say "hi" \\o/'


def test_bool_int_and_hex_overrides_render_like_a_config_file() -> None:
    text = render_fragment(H723, {"WANT_ADC": False, "CANBUS_FREQUENCY": 500000, "USB_DEVICE_ID": Hex(0x614E)})
    assert "# CONFIG_WANT_ADC is not set" in text
    assert "CONFIG_CANBUS_FREQUENCY=500000" in text
    assert "CONFIG_USB_DEVICE_ID=0x614e" in text


@pytest.mark.parametrize("key", ["usb_serial_number", "CONFIG_USB-SERIAL", "X Y", ""])
def test_override_with_a_malformed_symbol_name_is_refused(key: str) -> None:
    with pytest.raises(KconfigError, match="upper-case"):
        render_fragment(H723, {key: "x"})


@pytest.mark.parametrize("symbol", ["MCU", "CONFIG_FLASH_APPLICATION_ADDRESS", "CLOCK_REF_FREQ", "USBSERIAL"])
def test_override_of_a_derived_symbol_is_refused_with_the_fix(symbol: str) -> None:
    with pytest.raises(KconfigError, match="derived.*MACH_"):
        render_fragment(H723, {symbol: "y"})


@pytest.mark.parametrize("value", [1.5, None, ["a"], "two\nlines"])
def test_override_of_a_value_kconfig_cannot_hold_is_refused(value: object) -> None:
    with pytest.raises(KconfigError, match="INITIAL_PINS"):
        render_fragment(H723, {"INITIAL_PINS": value})  # type: ignore[dict-item]


def test_the_same_symbol_given_twice_is_refused() -> None:
    with pytest.raises(KconfigError, match="twice"):
        render_fragment(H723, {"SERIAL_BAUD": 1, "CONFIG_SERIAL_BAUD": 2})


# ---------------------------------------------------------------- parsing

def test_parse_config_reads_the_three_line_shapes() -> None:
    text = ("# Generated\nCONFIG_MACH_STM32=y\nCONFIG_MCU=\"stm32h723xx\"\n# CONFIG_MACH_AVR is not set\n"
            "CONFIG_FLASH_APPLICATION_ADDRESS=0x8020000\n#\n# USB ids\n#\nCONFIG_CLOCK_FREQ=520000000\n")
    assert parse_config(text) == {
        "MACH_STM32": "y", "MCU": "stm32h723xx", "MACH_AVR": "n",
        "FLASH_APPLICATION_ADDRESS": "0x8020000", "CLOCK_FREQ": "520000000",
    }


# ---------------------------------------------------------------- verification on real resolutions

@pytest.mark.parametrize("board", CATALOG.values(), ids=CATALOG.keys())
def test_every_catalog_board_resolves_to_its_catalog_facts(board: Board, resolve) -> None:
    fragment = render_fragment(board)
    assert verify_resolved(board, fragment, resolve(fragment)) == []


def test_low_level_options_off_drops_the_25m_crystal(resolve) -> None:
    fragment = render_fragment(H723).replace("CONFIG_LOW_LEVEL_OPTIONS=y\n", "")
    problems = verify_resolved(H723, fragment, resolve(fragment))
    assert {"STM32_CLOCK_REF_25M", "CLOCK_REF_FREQ"} <= symbols(problems)
    crystal = next(problem for problem in problems if problem.symbol == "CLOCK_REF_FREQ")
    assert crystal.resolved == "8000000" and H723.id in crystal.message
    # the RatOS serial hides behind the same option: the board would lose its /dev/RatOS name
    assert "USB_SERIAL_NUMBER" in symbols(problems)


def test_misspelled_symbol_vanishes_and_is_named(resolve, klipper: Path) -> None:
    # H7's first visible offset is 0x20000, so the address survives: only the typo tells
    fragment = render_fragment(H723).replace("STM32_FLASH_START_20000", "STM32_FLASH_STRAT_20000")
    problems = verify_resolved(H723, fragment, resolve(fragment), load_kconfig_symbols(klipper))
    assert symbols(problems) == {"STM32_FLASH_STRAT_20000"}
    assert problems[0].cause == "unknown" and "misspelled" in problems[0].message


def test_a_hidden_crystal_choice_is_named_with_its_fix_not_called_a_typo(resolve, klipper: Path) -> None:
    # kconfiglib writes no option at all of a choice whose prompt is hidden
    fragment = render_fragment(H723).replace("CONFIG_LOW_LEVEL_OPTIONS=y\n", "")
    resolved = resolve(fragment)
    assert "STM32_CLOCK_REF" not in resolved
    crystal = next(p for p in verify_resolved(H723, fragment, resolved, load_kconfig_symbols(klipper))
                   if p.symbol == "STM32_CLOCK_REF_25M")
    assert crystal.cause == "hidden-choice"
    assert '"Clock Reference" is hidden' in crystal.message and "CONFIG_LOW_LEVEL_OPTIONS=y" in crystal.message
    assert "misspelled" not in crystal.message


def test_an_offset_the_chip_does_not_offer_is_named_with_the_choice_it_took(resolve, klipper: Path) -> None:
    fragment = render_fragment(EBB).replace("STM32_FLASH_START_0000", "STM32_FLASH_START_20000")
    problems = verify_resolved(EBB, fragment, resolve(fragment), load_kconfig_symbols(klipper))
    offset = next(p for p in problems if p.symbol == "STM32_FLASH_START_20000")
    assert offset.cause == "not-offered"
    assert "does not offer" in offset.message and "MACH_STM32H7" in offset.message
    assert "resolved to CONFIG_STM32_FLASH_START_2000" in offset.message  # G0's first visible option
    assert "FLASH_APPLICATION_ADDRESS" in symbols(problems)


def test_without_the_kconfig_files_a_vanished_symbol_lists_the_possible_causes() -> None:
    problems = verify_resolved(H723, "CONFIG_STM32_CLOCK_REF_25M=y\n", "CONFIG_MCU=\"stm32h723xx\"\n")
    crystal = next(p for p in problems if p.symbol == "STM32_CLOCK_REF_25M")
    assert crystal.cause == "absent" and "hidden" in crystal.message and "does not offer" in crystal.message


def test_kconfig_scan_keeps_choices_prompt_conditions_and_menu_dependencies() -> None:
    known = scan_kconfig(["""
menu "USB ids"
    depends on USB && LOW_LEVEL_OPTIONS
config USB_SERIAL_NUMBER
    string "USB serial number" if !USB_SERIAL_NUMBER_CHIPID
    help
      config NOT_A_SYMBOL inside help text
endmenu
choice
    prompt "Clock Reference" if LOW_LEVEL_OPTIONS
    config CLOCK_8M
        bool "8 MHz crystal"
    config CLOCK_25M
        bool "25 MHz crystal" if MACH_H7
endchoice
"""])
    assert known.defined == {"USB_SERIAL_NUMBER", "CLOCK_8M", "CLOCK_25M"}
    assert known.conditions["USB_SERIAL_NUMBER"] == ("USB && LOW_LEVEL_OPTIONS", "!USB_SERIAL_NUMBER_CHIPID")
    assert known.choice_of["CLOCK_25M"].members == ("CLOCK_8M", "CLOCK_25M")
    assert known.choice_of["CLOCK_25M"].condition == "LOW_LEVEL_OPTIONS"
    assert known.conditions["CLOCK_25M"] == ("MACH_H7",)


def test_application_address_is_kconfigs_or_derived_from_the_stm32_offset() -> None:
    assert application_address({"FLASH_APPLICATION_ADDRESS": "0x8002000"}) == 0x08002000
    assert application_address({"MACH_STM32": "y", "STM32_FLASH_START_20000": "y"}) == 0x08020000
    assert application_address({"MACH_STM32": "y", "STM32_FLASH_START_0000": "y"}) == 0x08000000
    assert application_address({"MACH_LINUX": "y"}) is None


def test_can_speed_override_on_a_usb_board_is_reported_as_dropped(resolve) -> None:
    fragment = render_fragment(H723, {"CANBUS_FREQUENCY": 500000})
    problems = verify_resolved(H723, fragment, resolve(fragment))
    assert symbols(problems) == {"CANBUS_FREQUENCY"}
    assert problems[0].requested == "500000" and problems[0].resolved == "1000000"


def test_wrong_model_is_reported_by_mcu_and_address(resolve) -> None:
    board = CATALOG["btt-manta-m8p-11"]  # G0B1 at 0x08002000
    fragment = render_fragment(H723)
    problems = verify_resolved(board, fragment, resolve(fragment))
    assert {"MCU", "FLASH_APPLICATION_ADDRESS", "CLOCK_REF_FREQ"} <= symbols(problems)
    address = next(problem for problem in problems if problem.symbol == "FLASH_APPLICATION_ADDRESS")
    assert "0x8002000" in address.message and board.id in address.message


def test_interface_other_than_the_catalogs_is_reported(resolve) -> None:
    fragment = render_fragment(H723).replace("CONFIG_STM32_USB_PA11_PA12=y", "CONFIG_STM32_CANBUS_PA11_PB9=y")
    problems = verify_resolved(H723, fragment, resolve(fragment))
    assert {"USBSERIAL", "CANBUS"} <= symbols(problems)


def test_linux_board_has_no_mcu_symbol_and_that_is_fine(resolve) -> None:
    rpi = CATALOG["rpi"]
    resolved = resolve(render_fragment(rpi))
    assert "MCU" not in parse_config(resolved)
    assert verify_resolved(rpi, render_fragment(rpi), resolved) == []


def test_requested_not_set_that_resolves_on_is_reported() -> None:
    problems = verify_resolved(H723, "# CONFIG_WANT_ADC is not set\n", "CONFIG_WANT_ADC=y\n")
    assert "WANT_ADC" in symbols(problems)


def test_numbers_compare_by_value_not_by_spelling() -> None:
    resolved = ('CONFIG_MCU="stm32h723xx"\nCONFIG_FLASH_APPLICATION_ADDRESS=0x8020000\n'
                "CONFIG_CLOCK_REF_FREQ=25000000\nCONFIG_USBSERIAL=y\nCONFIG_USB_VENDOR_ID=0x1d50\n")
    assert verify_resolved(H723, "CONFIG_USB_VENDOR_ID=0x1D50\n", resolved) == []
