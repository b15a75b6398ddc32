"""The provision and update deploys' host data, validated into :class:`ProvisionSettings` (pure Python).

Keys (defaults in brackets; the printer's and the firmware's keys: ``printer_model``,
``firmware_settings``)::

    klipper_commit       the fleet's pinned Klipper commit, 40 hex digits                  (required)
    klipper_source       a Klipper checkout on the controller holding it (bundles, firmware)
    klipper_remote       origin of a new checkout, an https/http/git/ssh/file URL, user@host:path
                         or an absolute path [https://github.com/Klipper3d/klipper.git]
    klipper_bundle_cache the controller's bundle folder [~/.cache/pyinfra-ratos/bundles]
    hostname             the Pi's hostname [the inventory name, when it is a valid hostname]
    timezone             e.g. "Europe/Copenhagen" [left as it is]
    build_on_pi          true: also install the ARM toolchain (--no-install-recommends) [false]
    provision_services   systemd units enabled and running [klipper, moonraker, klipper-mcu]
    config_backups       the controller's backup folder [~/.local/share/pyinfra-ratos/config-backups];
                         each host's versions go to <config_backups>/<inventory name>/
    config_backup_keep   versions kept per host, 1 to 1000 [20]
    config_backup_max_file_mb    a larger file is left out of a backup, and named [16, at most 64]
    config_backup_max_total_mb   what one backup version holds at most, in MiB [64]
    printer_identity_accept      after a deliberate SD-card swap: the new card's machine-id, which
                                 the identity stop names (pyinfra_ratos/printer/identity.py)
    printer_config_dir, printer_user_config, printer_when_busy, printer_backups: as deploys/printer_config.py

Controller paths (``klipper_source``, ``klipper_bundle_cache``, ``config_backups``) come out with
``~`` expanded; ``printer_config_dir`` is a path on the Pi and keeps its ``~/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra_ratos.data.rules import (
    COMMIT,
    HOST_NAME_FIX,
    SOURCE,
    Rule,
    as_flag,
    controller_path,
    count,
    flag,
    host_name_problem,
    names,
    path,
    problems,
    text,
)
from pyinfra_ratos.printer.model import PRINTER_DEPLOY_RULES

# the defaults the provision and update deploys use (operations/klipper.py, operations/backup.py)
DEFAULT_REMOTE = "https://github.com/Klipper3d/klipper.git"
DEFAULT_KEEP = 20  # config backup versions kept per host

SERVICES = ("klipper", "moonraker", "klipper-mcu")
_HOSTNAME = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_TIMEZONE = r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,2}"
# what git clones from without running a helper: no ext::/fd:: transports, no leading '-' option
_URL_CHARS = r"[A-Za-z0-9._~:/?#@%+=,-]"
_GIT_URL = rf"(https?|git|ssh|file)://{_URL_CHARS}+|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:{_URL_CHARS}+|/{_URL_CHARS}*"

PROVISION_RULES: dict[str, Rule] = {
    "klipper_commit": COMMIT,
    "klipper_source": SOURCE,
    "klipper_remote": Rule(text(_GIT_URL, "a git URL", 2048),
                           "write an https, ssh or file URL, e.g. \"https://github.com/Klipper3d/klipper.git\""),
    "klipper_bundle_cache": Rule(path, "write a folder on this controller, e.g. \"~/.cache/pyinfra-ratos/bundles\"",
                                 optional=True),
    "hostname": Rule(text(_HOSTNAME, "a hostname"),
                     "lower-case letters, digits and '-' (not first or last), at most 63, e.g. \"vcore-01\"",
                     optional=True),
    "timezone": Rule(text(_TIMEZONE, "a time zone name"), "a zone of /usr/share/zoneinfo, e.g. \"Europe/Copenhagen\"",
                     optional=True),
    "build_on_pi": Rule(flag, "write true or false"),
    "provision_services": Rule(names(r"[A-Za-z0-9_@][A-Za-z0-9_@.:-]{0,254}", "a systemd unit name"),
                               "write a list of units, e.g. [\"klipper\", \"moonraker\", \"klipper-mcu\"]"),
    "config_backups": Rule(path, "write a folder on this controller, "
                                 "e.g. \"~/.local/share/pyinfra-ratos/config-backups\"", optional=True),
    "config_backup_keep": Rule(count(1, 1000), "write how many versions to keep per host, e.g. 20"),
    # operations/backup.py and pyinfra_ratos/printer/identity.py
    "config_backup_max_file_mb": Rule(count(1, 64), "write the largest file kept in a backup, in MiB, e.g. 16"),
    "config_backup_max_total_mb": Rule(count(1, 100000), "write the most a backup version holds, in MiB, e.g. 64"),
    "printer_identity_accept": Rule(text(r"[0-9a-f]{32}|SHA256:[A-Za-z0-9+/]{43}", "a machine-id"),
                                    "write the replaced card's /etc/machine-id (32 hex digits), as the "
                                    "identity stop names it", optional=True),
}


@dataclass(frozen=True)
class ProvisionSettings:
    commit: str
    source: str | None
    remote: str
    bundle_cache: str | None
    hostname: str | None
    timezone: str | None
    build_on_pi: bool
    services: tuple[str, ...]
    backups: str | None
    backup_keep: int
    config_dir: str
    user_config: str
    when_busy: str
    file_backups: int


def provision_problems(name: str, data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, "<problem>. Fix: <fix>")`` for every bad provision key of a host (missing commit included)."""
    found = problems({**PROVISION_RULES, **PRINTER_DEPLOY_RULES}, data)
    if data.get("klipper_commit") is None:
        found.insert(0, ("klipper_commit", f"missing. Fix: {COMMIT.fix}"))
    folder = host_name_problem(name)
    if folder:
        found.append(("inventory name", f"{folder}. Fix: {HOST_NAME_FIX}"))
    return found


def _optional_path(value: Any) -> str | None:
    return controller_path(value) if value else None


def provision_settings(name: str, data: Mapping[str, Any]) -> tuple[ProvisionSettings | None, list[str]]:
    """The host's provisioning data, or every problem with it: ``host <name>: field '<key>': ...``."""
    found = provision_problems(name, data)
    if found:
        return None, [f"host {name}: field '{key}': {problem}" for key, problem in found]
    default_hostname = name if PROVISION_RULES["hostname"].problem(name, "") is None else None
    return ProvisionSettings(
        commit=data["klipper_commit"], source=_optional_path(data.get("klipper_source")),
        remote=data.get("klipper_remote", DEFAULT_REMOTE),
        bundle_cache=_optional_path(data.get("klipper_bundle_cache")),
        hostname=data.get("hostname", default_hostname), timezone=data.get("timezone"),
        build_on_pi=bool(as_flag(data.get("build_on_pi", False))),
        services=tuple(data.get("provision_services", SERVICES)),
        backups=_optional_path(data.get("config_backups")), backup_keep=data.get("config_backup_keep", DEFAULT_KEEP),
        config_dir=data.get("printer_config_dir", "~/printer_data/config"),
        user_config=data.get("printer_user_config", "adopt"), when_busy=data.get("printer_when_busy", "write"),
        file_backups=data.get("printer_backups", 5),
    ), []


def user_config_mode(settings: ProvisionSettings, config: Mapping[str, Any]) -> str:
    """What printer.config does with printer.cfg (``config``: the Pi's ``ConfigBackupState``)."""
    # RatOS's initial printer.cfg holds nothing of the user's: replace it, don't adopt it
    return "regenerate" if config.get("initial") and not config.get("save_config") else settings.user_config
