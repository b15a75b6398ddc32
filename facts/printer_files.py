"""The configuration files of a printer as one round trip sees them: metadata, content, includes."""

from __future__ import annotations

import base64
import hashlib
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from .probe import json_document, probe_command

# Bigger files are reported by hash only: a config file is kilobytes, a runaway one is not read.
MAX_TEXT_BYTES = 1024 * 1024


class ConfigFileInfo(TypedDict):
    exists: bool
    mode: str  # octal, "644"
    user: str
    group: str
    size: int
    sha256: str
    text: str | None  # decoded with surrogateescape (bytes round-trip), None when not read


class PrinterFilesDict(TypedDict):
    dir: str  # the config folder, absolute
    free_bytes: int  # free space of its file system, for the writer's pre-check
    files: dict[str, ConfigFileInfo]
    includes: dict[str, bool]  # include target -> present


def shell_path(path: str) -> str:
    """Quote a path for sh, keeping a leading ``~/`` as the remote user's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def decode_text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def encode_text(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def sha256_text(text: str) -> str:
    return hashlib.sha256(encode_text(text)).hexdigest()


def printer_files_args(files: Sequence[str], read: Sequence[str], includes: Sequence[str]) -> dict[str, Any]:
    """The ``files`` part of the probe's ``config`` arguments (``remote.probe_printer_files``)."""
    return {"files": list(files), "read": list(read), "includes": list(includes), "max_text": MAX_TEXT_BYTES}


def probe_lines(document: Mapping[str, Any], part: str) -> list[str] | None:
    """One part of the ``config`` probe's answer: its lines, None when it failed or is absent."""
    lines = document.get(part)
    return lines if isinstance(lines, list) and all(isinstance(line, str) for line in lines) else None


def parse_printer_files(lines: Sequence[str]) -> PrinterFilesDict | dict[str, object]:
    result: PrinterFilesDict = {"dir": "", "free_bytes": 0, "files": {}, "includes": {}}
    for line in lines:
        kind, _, rest = line.partition("\t")
        fields = rest.split("\t")
        if kind == "nodir":
            return {}
        if kind == "dir" and len(fields) == 2:
            result["dir"] = fields[0]
            result["free_bytes"] = int(fields[1]) * 1024 if fields[1].isdigit() else 0
        elif kind == "file" and len(fields) == 3:
            meta = fields[1].split()
            result["files"][fields[0]] = {
                "exists": True, "mode": meta[0], "user": meta[1], "group": meta[2], "size": int(meta[3]),
                "sha256": fields[2], "text": None,
            }
        elif kind == "missing" and len(fields) == 1:
            result["files"][fields[0]] = {"exists": False, "mode": "", "user": "", "group": "", "size": 0,
                                          "sha256": "", "text": None}
        elif kind == "text" and len(fields) == 2 and fields[0] in result["files"]:
            result["files"][fields[0]]["text"] = decode_text(base64.b64decode(fields[1]))
        elif kind == "include" and len(fields) == 2:
            result["includes"][fields[0]] = fields[1] == "1"
    return result


class PrinterFiles(FactBase[PrinterFilesDict]):
    """
    Returns the printer's configuration files in one command: for each of ``files`` whether it
    exists, its mode, owner, size and sha256; the content of those in ``read`` (exact bytes, up to
    1 MiB); whether each ``includes`` target exists (relative to the folder, as klippy resolves
    them); the folder's free space. An empty dict when the folder does not exist.

    .. code:: python

        {"dir": "/home/pi/printer_data/config", "free_bytes": 52428800,
         "files": {"printer.cfg": {"exists": True, "mode": "644", "user": "pi", "group": "pi",
                                   "size": 1532, "sha256": "9f2c...", "text": "[include RatOS.cfg]..."}},
         "includes": {"RatOS/boards/btt-octopus-pro-h723-11/config.cfg": True}}
    """

    @override
    def command(
        self,
        config_dir: str = "~/printer_data/config",
        files: Sequence[str] = (),
        read: Sequence[str] = (),
        includes: Sequence[str] = (),
    ) -> StringCommand:
        return probe_command("config", {"config_dir": config_dir, "files": printer_files_args(files, read, includes)})

    @override
    def process(self, output: list[str]) -> PrinterFilesDict:
        lines = probe_lines(json_document(output), "files")
        # no answer (no python3, a probe error) reads as no folder: the operations then write nothing
        return parse_printer_files(lines) if lines is not None else {}  # type: ignore[return-value]

    @staticmethod
    def default() -> PrinterFilesDict:
        return {}  # type: ignore[typeddict-item]
