"""The board catalog: packaged boards are consistent, user folders override, bad files explain the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinfra_ratos.firmware.catalog import BOARDS_DIR, CatalogError, get_board, load_catalog, part_flash_size
from pyinfra_ratos.firmware.dfu.memory import parse_memory_map

RATOS_IDS = [
    "btt-octopus-pro-h723", "btt-octopus-pro-h723-11", "btt-octopus-pro-446", "btt-octopus-11",
    "btt-octopus-11-407", "btt-octopus-pro-429", "btt-manta-m8p-11", "btt-manta-m8p-20",
    "btt-skr-mini-e3-30", "btt-skr-3", "btt-skr-3-ez", "btt-skr-3-ez-h723", "btt-kraken",
    "btt-octopus-max-ez", "btt-ebb36-11", "btt-ebb42-11", "btt-ebb36-12", "btt-ebb42-12", "rpi",
    "rpi-pico",
]


def write_board(folder: Path, board_id: str, **changes: str) -> Path:
    """A copy of the packaged H723 v1.1 file under another id, with some lines replaced."""
    text = (BOARDS_DIR / "btt-octopus-pro-h723-11.toml").read_text()
    text = text.replace('id = "btt-octopus-pro-h723-11"', f'id = "{board_id}"')
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / f"{board_id}.toml"
    path.write_text(text)
    return path


def test_every_ratos_board_of_the_spec_is_packaged() -> None:
    catalog = load_catalog()
    assert set(RATOS_IDS) <= set(catalog)


@pytest.mark.parametrize("board_id", ["btt-octopus-pro-h723", "btt-ebb36-11", "btt-ebb42-11"])
def test_boards_with_heaters_on_in_dfu_are_never_flashed_unattended(board_id: str) -> None:
    board = get_board(board_id)
    assert board.unattended_flash is False
    assert "heater" in board.unattended_reason.lower()


def test_stm32_usb_boards_keep_their_crystal_and_serial_in_the_fragment() -> None:
    for board in load_catalog().values():
        if board.is_stm32 and board.interface == "usb":
            assert "CONFIG_LOW_LEVEL_OPTIONS=y" in board.kconfig
            assert f'CONFIG_USB_SERIAL_NUMBER="{board.id}"' in board.kconfig
            katapult = {"katapult": "1d50:6177"} if "katapult" in board.flash_methods else {}
            assert board.usb == {"klipper": "1d50:614e", "dfu": "0483:df11", **katapult}
            assert board.dfu_flash_map.startswith("@Internal Flash")


def test_katapult_variants_start_where_katapult_lets_the_application_start() -> None:
    # Arksine/katapult src/stm32/Kconfig: 8 KiB on G0, 32 KiB (default) on F4, 128 KiB on H7
    expected = {"btt-manta-m8p-11-katapult": 0x08002000, "btt-octopus-pro-446-katapult": 0x08008000,
                "btt-octopus-pro-h723-11-katapult": 0x08020000}
    for board_id, address in expected.items():
        board = get_board(board_id)
        assert (board.app_address, board.flash_methods) == (address, ("katapult", "dfu"))
        plain = get_board(board_id.removesuffix("-katapult"))
        assert (board.mcu, board.mcu_part, board.dfu_flash_map) == (plain.mcu, plain.mcu_part, plain.dfu_flash_map)


def test_derived_facts_of_known_boards() -> None:
    h723 = get_board("btt-octopus-pro-h723-11")
    assert (h723.mcu, h723.app_address, h723.crystal) == ("stm32h723xx", 0x08020000, 25_000_000)
    # the Octopus Pro H723 carries an STM32H723ZET6: 512 KiB, four 128 KiB sectors
    assert (h723.mcu_part, h723.dfu_flash_map) == ("STM32H723ZET6", "@Internal Flash   /0x08000000/4*128Kg")
    assert get_board("btt-octopus-11").app_address == 0x08008000
    assert get_board("btt-manta-m8p-11").app_address == 0x08002000
    assert get_board("btt-ebb36-12").app_address == 0x08000000
    pico = get_board("rpi-pico")
    assert (pico.firmware_file, pico.flash_methods, pico.usb["rp2040_boot"]) == ("klipper.uf2", ("rp2040",), "2e8a:0003")
    host = get_board("rpi")
    assert (host.mcu, host.interface, host.firmware_file, host.flash_methods) == ("linux", "linux", "klipper.elf", ("linux",))


def test_a_user_folder_adds_and_overrides_boards(tmp_path: Path) -> None:
    write_board(tmp_path, "my-h723")
    write_board(tmp_path, "btt-octopus-pro-h723-11", **{'name = "BTT Octopus Pro H723 v1.1"': 'name = "Mine"'})
    catalog = load_catalog([tmp_path])
    assert catalog["my-h723"].mcu == "stm32h723xx"
    assert catalog["btt-octopus-pro-h723-11"].name == "Mine"
    assert catalog["btt-octopus-pro-h723-11"].source == tmp_path / "btt-octopus-pro-h723-11.toml"


@pytest.mark.parametrize(
    ("changes", "key", "fix"),
    [
        ({'mcu = "stm32h723xx"\n': ""}, "mcu", "set mcu"),
        ({"toolboard = false": "toolbord = false"}, "toolbord", "use one of"),
        ({'interface = "usb"': 'interface = "wifi"'}, "interface", "one of usb, can"),
        ({"app_address = 0x08020000": "app_address = 0x08000000"}, "app_address", "0x08020000"),
        ({"CONFIG_LOW_LEVEL_OPTIONS=y\n": ""}, "kconfig", "CONFIG_LOW_LEVEL_OPTIONS=y"),
        ({"CONFIG_STM32_CLOCK_REF_25M=y": "CONFIG_STM32_CLOCK_REF_8M=y"}, "kconfig", "CLOCK_REF_25M"),
        ({"unattended_flash = true": "unattended_flash = false"}, "unattended_reason", "unattended_reason ="),
        ({'dfu = "0483:df11"': 'dfu = "0483:DF11"'}, "usb.dfu", "1d50:614e"),
        ({'interface = "usb"': 'interface = "usbcan"'}, "can_bitrate", "can_bitrate = 1000000"),
        ({'interface = "usb"': 'interface = "usbcan"\ncan_bitrate = 250000'}, "can_bitrate", "1000000, 500000"),
        ({'interface = "usb"': 'interface = "usbcan"\ncan_bitrate = 500000'}, "kconfig",
         "CONFIG_CANBUS_FREQUENCY=500000"),
        ({'interface = "usb"': 'interface = "usb"\ncan_bitrate = 500000'}, "can_bitrate", "remove the key"),
    ],
)
def test_a_bad_board_file_names_the_file_the_key_and_the_fix(tmp_path: Path, changes: dict[str, str], key: str, fix: str) -> None:
    path = write_board(tmp_path, "bad-board", **changes)
    with pytest.raises(CatalogError) as error:
        load_catalog([tmp_path])
    message = str(error.value)
    assert str(path) in message
    assert f"key '{key}'" in message
    assert fix in message


def test_can_boards_state_their_bus_speed_in_data_and_in_their_fragment() -> None:
    catalog = load_catalog()
    can = [b for b in catalog.values() if b.interface in ("can", "usbcan")]
    assert {b.id for b in can} >= {"btt-ebb36-12-can", "btt-ebb42-12-can", "btt-octopus-pro-h723-11-canbridge",
                                   "btt-octopus-11-canbridge", "btt-manta-m8p-11-canbridge",
                                   "btt-manta-m8p-20-canbridge"}
    for board in can:
        assert f"CONFIG_CANBUS_FREQUENCY={board.can_bitrate}" in board.kconfig
        expected = ["katapult-can", "dfu"] if board.interface == "can" else ["can-bridge"]
        assert list(board.flash_methods) == expected, board.id
        assert board.dfu_flash_map and board.usb.get("dfu") == "0483:df11"


def test_an_id_that_differs_from_the_file_name_is_refused(tmp_path: Path) -> None:
    path = write_board(tmp_path, "one-board")
    path.rename(tmp_path / "other-name.toml")
    with pytest.raises(CatalogError, match="key 'id'.*other-name"):
        load_catalog([tmp_path])


def test_invalid_toml_is_reported_with_its_file(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text('id = "broken"\nname = \n')
    with pytest.raises(CatalogError, match="broken.toml: not valid TOML"):
        load_catalog([tmp_path])


def test_an_unknown_board_id_lists_the_known_ones() -> None:
    with pytest.raises(CatalogError, match="unknown board id 'btt-octopus-pro-h723-10'.*btt-octopus-pro-h723-11"):
        get_board("btt-octopus-pro-h723-10")


STM32_BOARDS = [board for board in load_catalog().values() if board.is_stm32]


@pytest.mark.parametrize("board", STM32_BOARDS, ids=[board.id for board in STM32_BOARDS])
def test_each_boards_dfu_map_matches_its_parts_flash_size_and_application_address(board) -> None:
    assert board.mcu_part, f"{board.id}: name the exact STM32 part (mcu_part) the DFU map follows"
    assert board.mcu_part.lower().startswith(board.mcu[:-2])  # stm32h723 of stm32h723xx
    memory = parse_memory_map(board.dfu_flash_map)
    assert memory.start == 0x08000000
    assert memory.end - memory.start == part_flash_size(board.mcu_part), (
        f"{board.id}: the map describes {(memory.end - memory.start) // 1024} KiB, "
        f"the {board.mcu_part} has {part_flash_size(board.mcu_part) // 1024} KiB")
    # the application starts on a sector boundary inside the map (a bootloader keeps whole sectors)
    sector = memory.sector_at(board.app_address)
    assert sector is not None and sector.address == board.app_address
    assert all(s.erasable and s.writeable for s in memory.sectors)


def test_part_numbers_give_st_flash_sizes() -> None:
    assert part_flash_size("STM32G0B1CBT6") == 128 * 1024
    assert part_flash_size("STM32H723ZET6") == 512 * 1024
    assert part_flash_size("STM32H723ZGT6") == 1024 * 1024
    assert part_flash_size("STM32H743VIT6") == 2048 * 1024
    assert part_flash_size("stm32h723") is None


def test_a_part_of_another_mcu_is_refused(tmp_path: Path) -> None:
    write_board(tmp_path, "my-h723", **{'mcu_part = "STM32H723ZET6"': 'mcu_part = "STM32G0B1CBT6"'})
    with pytest.raises(CatalogError, match="mcu_part.*not a part of stm32h723xx"):
        load_catalog([tmp_path])
