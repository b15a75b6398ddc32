"""``ratos-fleet status``'s word on a printer's configuration: would ``update`` rewrite it?

The third part of "converged" (:data:`pyinfra_ratos.firmware.converged.MEANING`). ``status`` reads
the config folder in the same single SSH command as the audit (``UpdateState``, with the files
``printer.config`` reads) and asks the decision ``plan`` and ``update`` act on
(:func:`pyinfra_ratos.operations.printer.decide_config`, with the ``printer.cfg`` mode the update
deploy uses): read-only, and no ``klipper_source`` needed (the configuration is rendered from the
inventory and the templates, never from a Klipper checkout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyinfra_ratos.facts.config_state import merge_queries
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.operations.printer import config_files_query, decide_config, restart_marker
from pyinfra_ratos.printer import model as pm
from pyinfra_ratos.printer.provision_settings import provision_settings, user_config_mode

UP_TO_DATE, WILL_WRITE, RESTART_OWED, INVALID, UNKNOWN = "up to date", "will write", "restart owed", "invalid", "unknown"
DEFAULT_DIR = "~/printer_data/config"


def _printer(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: data[key] for key in pm.DATA_KEYS if data.get(key) is not None}


def status_reads(host_name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The config half of ``UpdateState``'s arguments for one host: its folder and what
    ``printer.config`` reads there (nothing to read when its printer data does not render)."""
    settings, _ = provision_settings(host_name, data)
    query = config_files_query(_printer(data), catalog=load_catalog(), host_name=host_name)
    return {"config_dir": settings.config_dir if settings else data.get("printer_config_dir", DEFAULT_DIR),
            **merge_queries(query)}


def judge_config(host_name: str, data: Mapping[str, Any], read: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"state", "converged", "files", "reason"}`` of one printer's configuration from its
    ``UpdateState`` (None: not read). ``state``: ``up to date``, ``will write`` (``files`` names
    them), ``restart owed`` (written while it printed, Klipper not restarted since), ``invalid``
    (the update would refuse to write: ``reason``) or ``unknown`` (not read)."""
    if not read:
        return {"state": UNKNOWN, "converged": None, "files": [], "reason": "not read"}
    settings, problems = provision_settings(host_name, data)
    if settings is None:
        return {"state": UNKNOWN, "converged": None, "files": [], "reason": problems[0] if problems else "no settings"}
    config = read.get("config") or {}
    decision = decide_config(host_name, _printer(data), config.get("files"), (read.get("audit") or {}).get("boards"),
                             user_config_mode(settings, config.get("backup") or {}), catalog=load_catalog())
    if decision is None:
        return {"state": UNKNOWN, "converged": None, "files": [], "reason": "the config folder was not read"}
    if decision.failure:
        return {"state": INVALID, "converged": False, "files": [], "reason": decision.failure}
    files = [write.name for write in decision.writes]
    if files:
        named = ", ".join(w.name + (f" ({w.reason})" if w.reason else "") for w in decision.writes)
        return {"state": WILL_WRITE, "converged": False, "files": files,
                "reason": f"update would write {named}: `ratos-fleet plan --diff` shows how"}
    if decision.pending:
        return {"state": RESTART_OWED, "converged": False, "files": [],
                "reason": f"a Klipper restart is owed since the configuration changed ({restart_marker('klipper')})"}
    return {"state": UP_TO_DATE, "converged": True, "files": [], "reason": ""}
