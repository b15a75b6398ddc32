"""The printer's config folder for a whole update in one SSH command: backup state and files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from pyinfra.api import FactBase
from typing_extensions import override

from pyinfra_ratos.operations.backup import ConfigBackupState, ConfigBackupStateDict, parse_backup_state

from .printer_files import PrinterFilesDict, parse_printer_files, printer_files_command

# a line neither command prints: each prints only tab-separated records it names
_SPLIT = "=pyinfra-ratos-config-state="


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


def split_output(output: Sequence[str]) -> tuple[list[str], list[str]]:
    lines = list(output)
    at = lines.index(_SPLIT) if _SPLIT in lines else len(lines)
    return lines[:at], lines[at + 1 :]


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
    ) -> str:
        # each part in a subshell: both end with `exit 0`
        return "\n".join([
            f"( {ConfigBackupState().command(config_dir)} )",
            f"echo {_SPLIT}",
            f"( {printer_files_command(config_dir, files, read, includes)} )",
        ])

    @override
    def process(self, output: list[str]) -> ConfigStateDict:
        backup_lines, files_lines = split_output(output)
        return {"backup": parse_backup_state(backup_lines),
                "files": parse_printer_files(files_lines)}  # type: ignore[typeddict-item]

    @staticmethod
    def default() -> Any:
        return {"backup": {}, "files": {}}
