"""Firmware builds already on the Pi, identified by their own bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from pyinfra_ratos.catalog import Board

from .boards import default_catalog
from .probe import as_dict, as_int, as_str, json_document, probe_command

DEFAULT_DIRECTORY = "~/printer_data/firmware"
RAM = (0x20000000, 0x3FFFFFFF)  # Cortex-M: the initial stack pointer is an SRAM address


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
    app_address: int | None


def app_address(image: Mapping[str, Any], known: list[int]) -> int | None:
    """Where the image must be loaded, from its vector table.

    A ``.uf2``/``.elf`` says where it loads: the vector table's address (RP2040 images without a
    bootloader start with the 256-byte boot2). A ``.bin`` does not: its reset handler lies inside
    the image, so the load address is the highest of ``known`` (the catalog's application
    addresses for its MCU) that puts the handler inside the loaded image.
    """
    base, size = as_int(image.get("base")), as_int(image.get("size")) or 0
    for vector in image.get("vectors") or []:
        if not (isinstance(vector, list) and len(vector) == 3 and all(isinstance(v, int) for v in vector)):
            continue
        offset, stack, reset = vector
        if not RAM[0] <= stack <= RAM[1]:
            continue
        handler = reset & ~1
        if base is not None:
            if base + offset <= handler < base + size:
                return base + offset
            continue
        if offset:
            continue  # a flat .bin has its vector table first
        fits = [address for address in known if address <= handler < address + size]
        return max(fits) if fits else None
    return None


def parse_firmware_artifacts(
    raw: Mapping[str, Any], catalog: Mapping[str, Board] | None = None
) -> dict[str, FirmwareArtifact]:
    """The probe's listing (``remote.probe_artifacts``) as one artifact per identity directory."""
    catalog = default_catalog() if catalog is None else catalog
    artifacts: dict[str, FirmwareArtifact] = {}
    for identity, entry in sorted(raw.items()):
        entry = as_dict(entry)
        if "files" not in entry:
            continue
        image = as_dict(entry.get("image"))
        dictionary = as_dict(image.get("dict"))
        mcu = as_str(dictionary.get("mcu")) or None
        known = sorted({b.app_address for b in catalog.values() if b.mcu == mcu and b.interface != "linux"})
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
            "mcu": mcu,
            "app_address": app_address(image, known) if image else None,
        }
    return artifacts


class FirmwareArtifacts(FactBase[dict[str, FirmwareArtifact]]):
    """
    Returns the firmware builds in ``directory`` (``~/printer_data/firmware/<identity>/``): every
    file's sha256 and size, and the version and MCU decoded from the data dictionary embedded in
    the image itself (``klipper.bin``, else ``.uf2``/``.elf``), never from a side file, and the
    application address from the image's vector table (see :func:`app_address`).

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
