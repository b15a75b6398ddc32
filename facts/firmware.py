"""Firmware builds already on the Pi, identified by their own bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from pyinfra_ratos.firmware.kconfig import application_address, parse_config

from .probe import as_dict, as_int, as_str, json_document, probe_command

DEFAULT_DIRECTORY = "~/printer_data/firmware"


class ArtifactFile(TypedDict):
    sha256: str
    size: int


class FirmwareArtifact(TypedDict):
    path: str
    files: dict[str, ArtifactFile]
    image: str | None  # the file the version/MCU were read from (klipper.bin first)
    version: str | None
    build_versions: str | None
    mcu: str | None
    app_address: int | None  # linked for, from the artifact's resolved config


def linked_address(config_lines: Any) -> int | None:
    """Where the artifact's image is linked, from the resolved config stored with it.

    The probe sends the config's lines that decide it (``CONFIG_FLASH_APPLICATION_ADDRESS``, the
    ``STM32_FLASH_START_xxxx`` choice). A ``.bin`` does not say where it loads and its reset
    handler lies ~30 KiB in, so its bytes cannot tell 0x08000000 from 0x08002000: without a
    config the address is unknown (None), never guessed. None for a Linux MCU too.
    """
    if not isinstance(config_lines, list):
        return None
    return application_address(parse_config("\n".join(line for line in config_lines if isinstance(line, str))))


def parse_firmware_artifacts(raw: Mapping[str, Any]) -> dict[str, FirmwareArtifact]:
    """The probe's listing (``remote.probe_artifacts``) as one artifact per identity directory."""
    artifacts: dict[str, FirmwareArtifact] = {}
    for identity, entry in sorted(raw.items()):
        entry = as_dict(entry)
        if "files" not in entry:
            continue
        image = as_dict(entry.get("image"))
        dictionary = as_dict(image.get("dict"))
        files = {
            name: {"sha256": as_str(f.get("sha256")), "size": as_int(f.get("size")) or 0}
            for name, f in sorted(as_dict(entry.get("files")).items()) if isinstance(f, dict)
        }
        artifacts[identity] = {
            "path": as_str(entry.get("path")),
            "files": files,  # type: ignore[typeddict-item]
            "image": as_str(image.get("file")) or None,
            "version": as_str(dictionary.get("version")) or None,
            "build_versions": as_str(dictionary.get("build_versions")) or None,
            "mcu": as_str(dictionary.get("mcu")) or None,
            "app_address": linked_address(entry.get("config")),
        }
    return artifacts


class FirmwareArtifacts(FactBase[dict[str, FirmwareArtifact]]):
    """
    Returns the firmware builds in ``directory`` (``~/printer_data/firmware/<identity>/``): every
    file's sha256 and size, and the version and MCU decoded from the data dictionary embedded in
    the image itself (``klipper.bin``, else ``.uf2``/``.elf``), never from a side file, and the
    application address the image is linked for, from the resolved ``config`` stored with it
    (see :func:`linked_address`; None without one, and for a Linux MCU).

    .. code:: python

        {
            "v0.13.0-3-g4d1f2a3b5-3f2a9c0d1e2b": {
                "path": "/home/pi/printer_data/firmware/v0.13.0-3-g4d1f2a3b5-3f2a9c0d1e2b",
                "files": {"klipper.bin": {"sha256": "9b1c...", "size": 31240}, "config": {...}},
                "image": "klipper.bin", "version": "v0.13.0-3-g4d1f2a3b5",
                "build_versions": "gcc: ...", "mcu": "stm32h723xx", "app_address": 134348800,
            },
        }
    """

    @override
    def command(self, directory: str = DEFAULT_DIRECTORY) -> StringCommand:
        return probe_command("artifacts", {"directory": directory})

    @override
    def process(self, output: list[str]) -> dict[str, FirmwareArtifact]:
        return parse_firmware_artifacts(json_document(output))

    @staticmethod
    def default() -> dict[str, FirmwareArtifact]:
        return {}
