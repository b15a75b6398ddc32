"""The whole inventory's host data, validated before any SSH command: every problem of every host at once.

Pure Python (no connection, no pyinfra state). :func:`validate_inventory` runs each deploy's own
validator (:func:`pyinfra_ratos.printer.model.parse_printer_data`,
:func:`pyinfra_ratos.firmware.settings.firmware_settings`,
:func:`pyinfra_ratos.printer.provision_settings.provision_problems`) on every host, adds what no single
deploy checks (unknown keys with a "did you mean", types of pyinfra's keys, host names), and
raises ONE :class:`InventoryError` with one line per problem::

    host vcore-01: field 'printer_modle': unknown data key. Fix: did you mean 'printer_model'? ...
    host vcore-02: field 'boards[0].port': 'usb3' is not a USB port path. Fix: write it like "1-1.3" ...

``boards`` is parsed once, by :func:`pyinfra_ratos.data.board_entries.parse_boards`, for every deploy.
No line shows the value of a key that may hold a secret (``ssh_password``...), nor more than 60
characters of any value.

Every value a deploy reads is checked whenever a host sets it (each module's rule table:
``printer_model.PRINTER_RULES``, ``PRINTER_DEPLOY_RULES``, ``firmware_settings.FIRMWARE_RULES``,
``provision_settings.PROVISION_RULES``, :data:`SSH_RULES`); so are unknown keys, pyinfra's types,
``boards`` and the host names (each must name its backup folder, and no two the same one).
Which deploys' required keys and cross-checks apply: those named in ``require`` (the deploys the run
applies: ``printer``, ``firmware``, ``provision`` for provision/update), plus each deploy whose own
keys the host sets (``printer_model``... for the printer configuration, ``klipper_source``... for
the firmware, ``timezone``... for provision). A key of your own deploys is declared in the data key
``custom_data_keys`` (a list of names), so it is not taken for a typo.
"""

from __future__ import annotations

import functools
import os
import types
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

from pyinfra_ratos.data.board_entries import BoardSpec, parse_boards  # noqa: F401 - re-exported (tests, report)
from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.data.rules import (
    COMMIT,
    HOST_NAME_FIX,
    a_type,
    Rule,
    controller_path,
    count,
    did_you_mean,
    field_name,
    host_name_problem,
    one_of,
    path,
    shown,
    text,
)
from pyinfra_ratos.data.rules import problems as value_problems

if TYPE_CHECKING:
    from pyinfra_ratos.firmware.settings import FirmwareSettings
    from pyinfra_ratos.printer.model import PrinterSpec

SSH_RULES: dict[str, Rule] = {
    "ssh_hostname": Rule(text(r"[A-Za-z0-9_.:%][A-Za-z0-9_.:%-]{0,252}", "a host name or address"),
                         "write the Pi's address, e.g. \"192.168.1.50\" or \"vcore-01.local\""),
    "ssh_user": Rule(text(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}", "a user name"), "write the Pi's user, e.g. \"pi\""),
    "ssh_port": Rule(count(1, 65535), "write the Pi's SSH port, e.g. 22"),
    "ssh_key": Rule(path, "write the path of your private key file, e.g. \"~/.ssh/id_ed25519\""),
    "ssh_config_file": Rule(path, "write the path of an ssh_config file"),
    "ssh_known_hosts_file": Rule(path, "write the path of the known_hosts file that pins the Pis' host keys"),
    "ssh_strict_host_key_checking": Rule(one_of(("yes", "accept-new", "no", "off", "ask"), "an OpenSSH policy"),
                                         "write \"yes\" and pin the Pis' host keys in ssh_known_hosts_file"),
    "ssh_file_transfer_protocol": Rule(one_of(("sftp", "scp"), "a transfer protocol"), "write sftp or scp"),
}

# keys each part of pyinfra-ratos reads from host data (the validators check their values)
PRINTER_KEYS = ("printer_model", "printer_size", "hotend", "extruder", "probe", "stepper_driver",
                "stepper_current", "printer_templates")
PRINTER_DEPLOY_KEYS = ("printer_user_config", "printer_when_busy", "printer_backups", "printer_config_dir")
FIRMWARE_KEYS = ("klipper_source", "firmware_cache", "flash_backend", "allow_unclean_build", "attended_flash",
                 "firmware_build")
SHARED_KEYS = ("boards", "klipper_commit", "custom_data_keys")
# deploys/provision.py and deploys/update.py (checked by pyinfra_ratos.printer.provision_settings)
PROVISION_KEYS = ("klipper_remote", "klipper_bundle_cache", "hostname", "timezone", "build_on_pi",
                  "provision_services", "config_backups", "config_backup_keep", "config_backup_max_file_mb",
                  "config_backup_max_total_mb", "printer_identity_accept")
SECTIONS = ("printer", "firmware", "provision")


class InventoryError(ValueError):
    """The inventory cannot be used: one line per problem, ``host <name>: field '<field>' ...: <fix>``."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        hosts = {line.split(":", 1)[0] for line in self.lines}
        super().__init__(f"invalid inventory ({len(self.lines)} problems on {len(hosts)} hosts):\n"
                         + "\n".join(f"  {line}" for line in self.lines))


@dataclass(frozen=True)
class HostSettings:
    """A host's validated data: the boards, and each deploy's settings when they apply."""

    host: str
    boards: tuple[BoardSpec, ...]
    printer: PrinterSpec | None
    firmware: FirmwareSettings | None
    data: Mapping[str, Any]


# --- known keys ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def pyinfra_keys() -> Mapping[str, Any]:
    """pyinfra's own data keys: every connector's (ssh_*, docker_* ...) and the global arguments a
    host's data may set (``_sudo``, ``_env`` ...), each with its declared type. Read once per
    process (the connectors are entry points: scanning them cost 3 ms a call)."""
    from pyinfra.api.arguments import AllArguments, all_argument_meta
    from pyinfra.api.connectors import get_all_connectors

    arguments = get_type_hints(AllArguments)
    keys: dict[str, Any] = {key: arguments.get(key, Any) for key in all_argument_meta if key.startswith("_")}
    for connector in get_all_connectors().values():
        data_cls = getattr(connector, "data_cls", None)
        hints = get_type_hints(data_cls) if data_cls is not None else {}
        for key in getattr(connector, "data_meta", None) or {}:
            keys[key] = hints.get(key, Any)
    return types.MappingProxyType(keys)


@functools.lru_cache(maxsize=None)
def value_rules() -> Mapping[str, Rule]:
    """Every deploy's rule for each of its keys (modules imported late: they import this one)."""
    from pyinfra_ratos.firmware.settings import FIRMWARE_RULES
    from pyinfra_ratos.printer.model import PRINTER_DEPLOY_RULES, PRINTER_RULES
    from pyinfra_ratos.printer.provision_settings import PROVISION_RULES

    return types.MappingProxyType({"klipper_commit": COMMIT, **PRINTER_RULES, **PRINTER_DEPLOY_RULES,
                                   **FIRMWARE_RULES, **PROVISION_RULES})


def known_keys() -> tuple[str, ...]:
    return (*PRINTER_KEYS, *PRINTER_DEPLOY_KEYS, *FIRMWARE_KEYS, *SHARED_KEYS, *PROVISION_KEYS, *pyinfra_keys())


def _type_problem(value: Any, expected: Any, key: str) -> str | None:
    """Why ``value`` is not of the (simple) declared type, None when it is or cannot be told."""
    if expected is Any:
        return None
    options = get_args(expected) if get_origin(expected) in (Union, types.UnionType) else (expected,)
    for option in options:
        base = get_origin(option) or option
        if not isinstance(base, type):
            return None
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        if base is int and isinstance(value, bool):
            continue
        if isinstance(value, base):
            return None
    names = " or ".join(getattr(get_origin(o) or o, "__name__", str(o)) for o in options)
    return f"{shown(value, key)} is {a_type(value)}; pyinfra expects {names}"


def _key_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    custom = data.get("custom_data_keys", [])
    if not isinstance(custom, (list, tuple)) or not all(isinstance(k, str) and k.isidentifier() and len(k) <= 64
                                                        for k in custom):
        problems.append(("custom_data_keys", f"{shown(custom)} is not a list of key names. Fix: write [\"my_key\"]"))
        custom = []
    typed = pyinfra_keys()
    known = set(known_keys())
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append((shown(key), "not a string. Fix: name data keys with strings"))
        elif key in typed:
            problem = _type_problem(value, typed[key], key)
            if problem:
                problems.append((key, f"{problem}. Fix: give pyinfra's connector a value of that type"))
            else:
                problems += value_problems(SSH_RULES, {key: value})
        elif key not in known and key not in custom:
            problems.append((field_name(key), f"unknown data key. Fix: {did_you_mean(key, known)} "
                                              "(a key of your own deploy: list it in custom_data_keys)"))
    return problems + value_problems(value_rules(), data)


# --- the whole inventory ---------------------------------------------------------------------


def host_label(host: Any) -> str:
    """A host name as the error lines show it: as it is when plain, else quoted and escaped."""
    if isinstance(host, str) and host and len(host) <= 64 and host.isprintable() and " " not in host:
        return host
    return shown(host)


def _line(host: Any, message: str) -> str:
    """``host <name>: field '<field>' ...``; the validators' own ``<field>: ...`` lines are rewritten."""
    if message.startswith(("field '", "--data ")):
        return f"host {host_label(host)}: {message}"
    name, _, rest = message.partition(": ")
    return f"host {host_label(host)}: field '{name}': {rest}"


def _sections(data: Mapping[str, Any], require: Collection[str]) -> set[str]:
    applied = set(require)
    if any(key in data for key in (*PRINTER_KEYS, *PRINTER_DEPLOY_KEYS)):
        applied.add("printer")
    if any(key in data for key in FIRMWARE_KEYS):
        applied.add("firmware")
    if any(key in data for key in PROVISION_KEYS):
        applied.add("provision")
    return applied


def validate_host(
    host: str, data: Mapping[str, Any], override: Mapping[str, Any], catalog: Mapping[str, Board],
    require: Collection[str] = (),
) -> tuple[HostSettings | None, list[str]]:
    """One host: its settings (None when it has problems) and its problem lines."""
    from pyinfra_ratos.firmware.settings import HostDataError, firmware_settings
    from pyinfra_ratos.printer.model import PrinterDataError, parse_printer_data
    from pyinfra_ratos.printer.provision_settings import provision_problems

    if not isinstance(data, Mapping):
        return None, [_line(host, f"data: {shown(data)} is not a table of data keys. Fix: give the host a dict")]
    problems = _key_problems(data)
    folder = host_name_problem(host)
    if folder:
        problems.append(("inventory name", f"{folder}. Fix: {HOST_NAME_FIX}"))
    boards: list[BoardSpec] = []
    if "boards" in data:
        boards, found = parse_boards(data["boards"], catalog)
        problems += found
    lines = [_line(host, f"{name}: {text}") for name, text in problems]
    sections = _sections(data, require)
    printer = firmware = None
    if "printer" in sections:
        try:
            printer = parse_printer_data(host, data, catalog)
        except PrinterDataError as error:
            lines += [_line(host, message) for message in error.errors]
    if "firmware" in sections:
        try:
            firmware = firmware_settings(host, data, override, catalog)
        except HostDataError as error:
            lines += [_line(host, message) for message in error.errors]
    if "provision" in sections:
        lines += [_line(host, f"{name}: {text}") for name, text in provision_problems(host, data)]
    unique = list(dict.fromkeys(lines))  # deploys that read one key report it the same way: once is enough
    if unique:
        return None, unique
    return HostSettings(host, tuple(boards), printer, firmware, dict(data)), []


def backup_folder_clashes(hosts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Lines for hosts whose backup folder is another's: names the backup code maps to one folder,
    or that differ only in case or Unicode form (one folder on macOS's and Windows' file systems)."""
    from pyinfra_ratos.operations.backup import DEFAULT_ROOT, host_folder

    owners: dict[str, str] = {}
    lines = []
    for host, data in hosts.items():
        root = data.get("config_backups") if isinstance(data, Mapping) else None
        if host_name_problem(host) or (root is not None and path(root, "")):
            continue  # reported on its own
        folder = os.path.normpath(str(host_folder(controller_path(str(root or DEFAULT_ROOT)), host)))
        owner = owners.setdefault(unicodedata.normalize("NFC", folder).casefold(), host)
        if owner != host:
            lines.append(_line(host, f"inventory name: its backup folder {shown(folder)} is host "
                                     f"{host_label(owner)}'s too (names equal but for case or Unicode form): their backups would mix. "
                                     "Fix: give the hosts names that differ in more than case"))
    return lines


def validate_inventory(
    hosts: Mapping[str, Mapping[str, Any]],
    override: Mapping[str, Any],
    catalog: Mapping[str, Board],
    require: Collection[str] = (),
) -> dict[str, HostSettings]:
    """Every host's settings, or :class:`InventoryError` listing every problem of every host.

    + hosts: ``{host name: its data}``, override data included (pyinfra's ``host.data.dict()``)
    + override: the run's ``--data`` values (``attended_flash`` is only accepted from there)
    + catalog: the board catalog (:func:`pyinfra_ratos.firmware.catalog.load_catalog`)
    + require: deploys whose required keys every host must have: ``printer``, ``firmware``,
      ``provision`` (the provision and update deploys)
    """
    unknown = sorted(set(require) - set(SECTIONS))
    if unknown:
        raise ValueError(f"require={unknown!r}: use some of {', '.join(SECTIONS)}")
    settings: dict[str, HostSettings] = {}
    lines: list[str] = []
    for host, data in hosts.items():
        found, problems = validate_host(host, data, override, catalog, require)
        lines += problems
        if found is not None:
            settings[host] = found
    lines += backup_folder_clashes(hosts)
    if lines:
        raise InventoryError(lines)
    return settings
