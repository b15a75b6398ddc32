"""Klipper on the Pi: the host checkout's version, and the firmware version of every MCU."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from pyinfra_ratos.firmware.arch import userland_arch
from pyinfra_ratos.firmware.versions import mcu_matches_host

from .probe import as_dict, as_int, as_str, json_document, probe_command

DEFAULT_URL = "http://127.0.0.1:7125"
DEFAULT_LOG = "~/printer_data/logs/klippy.log"

_SHA = re.compile(r"^[0-9a-f]{40,64}\Z")
_LOADED = re.compile(r"^Loaded MCU '(?P<name>[^']+)' \d+ commands \((?P<version>.*?) / (?P<build>.*)\)\Z")
_CONFIG = re.compile(r"^MCU '(?P<name>[^']+)' config: (?P<constants>.*)\Z")
_GIT = re.compile(r"^Git version: (?P<repr>.*)\Z")


class KlipperHostDict(TypedDict, total=False):
    path: str
    exists: bool
    commit: str
    version: str
    dirty: bool
    branch: str
    remote_url: str
    owner: str
    ssh_user: str
    foreign_owner: bool
    venv: bool
    git_error: str  # why ``git describe`` failed for the SSH user ("detected dubious ownership ...")
    machine: str  # ``uname -m`` of the Pi ("armv7l", "aarch64")
    arch: str  # the userland a host MCU is built for ("armhf", "aarch64"); "" when not one of those


class McuInfo(TypedDict):
    version: str
    build_versions: str
    constants: dict[str, Any]
    connected: bool
    matches_host: bool | None


class McuFirmwareDict(TypedDict, total=False):
    source: str  # "moonraker" | "klippy.log" | "none"
    host_version: str
    klippy_state: str
    state_message: str
    mcus: dict[str, McuInfo]


def _git_out(result: Any) -> str:
    result = as_dict(result)
    return as_str(result.get("out")) if result.get("rc") == 0 else ""


def parse_klipper_host(raw: Mapping[str, Any]) -> KlipperHostDict:
    """The probe's git readings (``remote.probe_klipper``) as the checkout's facts."""
    if not raw or "path" not in raw:
        return {}
    ssh_user = as_str(raw.get("ssh_user"))
    host: KlipperHostDict = {
        "path": as_str(raw.get("path")), "exists": bool(raw.get("exists")), "commit": "", "version": "",
        "dirty": False, "branch": "", "remote_url": "", "owner": "", "ssh_user": ssh_user,
        "foreign_owner": False, "venv": False,
    }
    if "machine" in raw:  # an older probe's output has no machine: the Pi's CPU stays unknown
        host["machine"] = as_str(raw.get("machine"))
        host["arch"] = userland_arch(host["machine"], as_int(raw.get("pointer_bits"))) or ""
    if not host["exists"]:
        return host
    commit = _git_out(raw.get("commit"))
    owner = as_str(raw.get("owner"))
    host.update(
        commit=commit if _SHA.match(commit) else "",
        version=_git_out(raw.get("describe")),
        # from git run with safe.directory, so a foreign checkout's changes still show
        dirty=_git_out(raw.get("describe_trusted")).endswith("-dirty"),
        branch=_git_out(raw.get("branch")),
        remote_url=_git_out(raw.get("remote_url")),
        owner=owner,
        foreign_owner=bool(owner) and owner != ssh_user,
        venv=bool(raw.get("venv")),
    )
    describe = as_dict(raw.get("describe"))
    if describe.get("rc") != 0:
        host["git_error"] = as_str(describe.get("err"))
    return host


class KlipperHost(FactBase[KlipperHostDict]):
    """
    Returns the Klipper checkout at ``path`` (default ``~/klipper`` of the SSH user).

    ``version`` is ``git describe --always --tags --long --dirty`` run as the SSH user, exactly
    as klippy and the firmware build compute it: ``""`` when git fails, which is what a checkout
    owned by another user gives ("dubious ownership": klippy then reports ``?``);
    ``foreign_owner`` flags that trap. ``commit``, ``branch``, ``remote_url`` and ``dirty`` are
    read with ``safe.directory`` so they are known even then. ``venv``: ``klippy-env`` next to
    the checkout has a python. A missing checkout gives ``exists: False``.

    .. code:: python

        {
            "path": "/home/pi/klipper", "exists": True,
            "commit": "4d1f2a3b5c...", "version": "v0.13.0-3-g4d1f2a3b5", "dirty": False,
            "branch": "master", "remote_url": "https://github.com/Klipper3d/klipper.git",
            "owner": "pi", "ssh_user": "pi", "foreign_owner": False, "venv": True,
        }
    """

    @override
    def command(self, path: str = "~/klipper") -> StringCommand:
        return probe_command("klipper", {"path": path})

    @override
    def process(self, output: list[str]) -> KlipperHostDict:
        return parse_klipper_host(json_document(output))

    @staticmethod
    def default() -> KlipperHostDict:
        return {}


def _constant(value: str) -> Any:
    # klippy logs the constants Moonraker serves as numbers: give them the same types
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def parse_klippy_log(lines: list[str]) -> tuple[str, dict[str, McuInfo]]:
    """(host version, MCUs) from klippy.log lines.

    The MCUs are those of the last session (``Start printer at``) that loaded any: a later start
    that failed to connect leaves the boards' firmware as it was. The host version is the last
    ``Git version`` logged, the one klippy runs now.
    """
    sessions: list[list[str]] = [[]]
    host_version = ""
    for line in lines:
        if line.startswith("Start printer at "):
            sessions.append([])
        git = _GIT.match(line)
        if git:
            try:
                host_version = str(ast.literal_eval(git["repr"]))
            except (ValueError, SyntaxError):
                host_version = git["repr"].strip("'\"")
        sessions[-1].append(line)
    for session in reversed(sessions):
        loaded = [m for m in map(_LOADED.match, session) if m]
        if not loaded:
            continue
        mcus: dict[str, McuInfo] = {}
        for match in loaded:
            mcus[match["name"]] = {
                "version": match["version"], "build_versions": match["build"], "constants": {},
                "connected": False, "matches_host": mcu_matches_host(match["version"], host_version),
            }
        for match in filter(None, map(_CONFIG.match, session)):
            if match["name"] in mcus:
                pairs = (item.split("=", 1) for item in match["constants"].split() if "=" in item)
                mcus[match["name"]]["constants"] = {key: _constant(value) for key, value in pairs}
        return host_version, mcus
    return host_version, {}


def _short_name(object_name: str) -> str:
    return object_name.split(" ", 1)[1] if object_name.startswith("mcu ") else object_name


def _result(answer: Any) -> dict[str, Any]:
    answer = as_dict(answer)
    if answer.get("status") != 200:
        return {}
    return as_dict(as_dict(answer.get("body")).get("result"))


def parse_mcu_firmware(raw: Mapping[str, Any]) -> McuFirmwareDict:
    """The probe's Moonraker answers (``remote.probe_moonraker``) as the MCUs' firmware facts."""
    info_status = as_dict(raw.get("info")).get("status")
    disconnected = "disconnected" if info_status == 503 else ""  # Moonraker up, klippy not
    info = _result(raw.get("info"))
    if info:
        host_version = as_str(info.get("software_version"))
        objects = _result(raw.get("list")).get("objects") or []
        status = as_dict(_result(raw.get("query")).get("status"))
        mcus: dict[str, McuInfo] = {}
        for name in objects:
            if not isinstance(name, str) or not (name == "mcu" or name.startswith("mcu ")):
                continue
            found = as_dict(status.get(name))
            # an MCU klippy has not reached yet is an empty object, exactly like an unknown one
            connected = "mcu_version" in found
            version = as_str(found.get("mcu_version"))
            mcus[_short_name(name)] = {
                "version": version,
                "build_versions": as_str(found.get("mcu_build_versions")),
                "constants": as_dict(found.get("mcu_constants")),
                "connected": connected,
                "matches_host": mcu_matches_host(version, host_version) if connected else None,
            }
        return {"source": "moonraker", "host_version": host_version, "klippy_state": as_str(info.get("state")),
                "state_message": as_str(info.get("state_message")), "mcus": mcus}
    log = raw.get("log")
    host_version, mcus = parse_klippy_log([line for line in log if isinstance(line, str)]) if isinstance(log, list) else ("", {})
    if mcus:
        return {"source": "klippy.log", "host_version": host_version, "klippy_state": disconnected,
                "state_message": "", "mcus": mcus}
    return {"source": "none", "host_version": "", "klippy_state": disconnected, "state_message": "", "mcus": {}}


class McuFirmware(FactBase[McuFirmwareDict]):
    """
    Returns the firmware every MCU of the printer runs, as Moonraker reports it (``mcu`` and
    each ``mcu <name>`` object, keyed by the short name), with klippy's own version and state.
    Without Moonraker or klippy, falls back to the last klippy session in ``klippy.log`` that
    loaded MCUs (``source: "klippy.log"``, ``connected: False``).

    ``matches_host`` is :func:`pyinfra_ratos.firmware.versions.mcu_matches_host`: the exact same version
    string as the host, both clean; a dirty, ``?`` or timestamp-suffixed version never matches
    ("rebuild"). ``None`` when the MCU is not connected (no version to compare).

    .. code:: python

        {
            "source": "moonraker", "host_version": "v0.13.0-3-g4d1f2a3b5",
            "klippy_state": "ready", "state_message": "Printer is ready",
            "mcus": {
                "mcu": {"version": "v0.13.0-3-g4d1f2a3b5", "build_versions": "gcc: ...",
                        "constants": {"MCU": "stm32h723xx", "CLOCK_FREQ": 400000000, ...},
                        "connected": True, "matches_host": True},
                "toolboard_t0": {"version": "", "build_versions": "", "constants": {},
                                 "connected": False, "matches_host": None},
            },
        }
    """

    @override
    def command(self, url: str = DEFAULT_URL, klippy_log: str = DEFAULT_LOG) -> StringCommand:
        return probe_command("moonraker", {"url": url, "klippy_log": klippy_log, "mcus": True, "activity": False})

    @override
    def process(self, output: list[str]) -> McuFirmwareDict:
        return parse_mcu_firmware(json_document(output))

    @staticmethod
    def default() -> McuFirmwareDict:
        return {"source": "none", "host_version": "", "klippy_state": "", "state_message": "", "mcus": {}}
