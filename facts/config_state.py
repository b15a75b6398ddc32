"""The printer's config folder for a whole update in one SSH command: backup state and files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from pyinfra_ratos.operations.backup import ConfigBackupStateDict, backup_state_args, parse_backup_state

from .printer_files import PrinterFilesDict, parse_printer_files, printer_files_args, probe_lines
from .probe import json_document, probe_command


class ConfigStateDict(TypedDict):
    backup: ConfigBackupStateDict  # = ConfigBackupState(config_dir)
    files: PrinterFilesDict  # = PrinterFiles(config_dir, files, read, includes)


def merge_queries(*queries: dict[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    """One ``PrinterFiles`` query answering each of ``queries`` (None ones are skipped)."""
    merged: dict[str, dict[str, None]] = {"files": {}, "read": {}, "includes": {}}
    for query in queries:
        for key, names in (query or {}).items():
            merged[key].update(dict.fromkeys(names))
    return {key: tuple(names) for key, names in merged.items()}


def config_state_args(config_dir: str, files: Sequence[str] = (), read: Sequence[str] = (),
                      includes: Sequence[str] = ()) -> dict[str, Any]:
    """The probe's ``config`` arguments for both parts."""
    return {"config_dir": config_dir, "backup": backup_state_args(),
            "files": printer_files_args(files, read, includes)}


def parse_config_state(document: Mapping[str, Any]) -> ConfigStateDict:
    """Each part through its own fact's parser; a part without an answer is ``{}`` (no folder)."""
    backup, files = probe_lines(document, "backup"), probe_lines(document, "files")
    return {"backup": parse_backup_state(backup) if backup is not None else {},
            "files": parse_printer_files(files) if files is not None else {}}  # type: ignore[typeddict-item]


class ConfigState(FactBase[ConfigStateDict]):
    """
    Returns ``ConfigBackupState`` and ``PrinterFiles`` of the config folder from ONE command,
    each under its own key with exactly the value the single fact gives (``{}`` without the
    folder), so a backup, ``printer.config`` and ``moonraker.pins`` share one round trip
    (``current=`` / ``current_files=``). Build ``files``/``read``/``includes`` with
    :func:`merge_queries` of the operations' ``files_query``/``config_files_query``.

    .. code:: python

        {"backup": {"dir": "/home/pi/printer_data/config", "files": {...}, "digest": "4be1...", ...},
         "files": {"dir": "/home/pi/printer_data/config", "free_bytes": 52428800, "files": {...},
                   "includes": {...}}}
    """

    @override
    def command(
        self,
        config_dir: str = "~/printer_data/config",
        files: Sequence[str] = (),
        read: Sequence[str] = (),
        includes: Sequence[str] = (),
    ) -> StringCommand:
        return probe_command("config", config_state_args(config_dir, files, read, includes))

    @override
    def process(self, output: list[str]) -> ConfigStateDict:
        return parse_config_state(json_document(output))

    @staticmethod
    def default() -> Any:
        return {"backup": {}, "files": {}}
