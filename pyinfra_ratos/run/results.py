"""Per-board results of a firmware run, as plain JSON-able records, and their summary.

One record per (host, board): what it ran before and after, what was done and why. The report
of a fleet update is a list of these. Pure Python, no pyinfra import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyinfra_ratos.firmware import methods
from pyinfra_ratos.firmware.plan import FlashPlan
from pyinfra_ratos.firmware.steps import BACKENDS

ACTIONS = ("flashed", "skipped", "failed", "refused", "planned")


def known_methods() -> tuple[str, ...]:
    """What a record's ``method`` may say: the DfuSe backends and every registered method's name."""
    return tuple(dict.fromkeys((*BACKENDS, *methods.METHODS)))

# plan action -> record action before anything ran
_PLAN_ACTIONS = {"skip": "skipped", "refuse": "refused", "flash": "planned"}


@dataclass(frozen=True)
class FlashRecord:
    host: str
    board: str
    port: str | None
    mcu_name: str
    before_version: str | None
    after_version: str | None
    action: str
    method: str | None
    duration_s: float
    verified: bool
    read_back: bool | None
    reason: str

    def __post_init__(self) -> None:
        # a typo here would silently vanish from the summary counts
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if self.method is not None and self.method not in known_methods():
            raise ValueError(f"method {self.method!r} is not one of {', '.join(known_methods())}")

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))  # every field a plain value: asdict's deep copy is not needed


def record_for_plan(host: str, mcu_name: str, plan: FlashPlan) -> FlashRecord:
    """The record of a plan before it runs (skipped / refused / planned)."""
    after = plan.before_version if plan.action != "flash" else None
    # a skip is itself a verification: the MCU reported the artifact's version and constants
    return FlashRecord(
        host=host, board=plan.board_id, port=plan.port, mcu_name=mcu_name,
        before_version=plan.before_version, after_version=after, action=_PLAN_ACTIONS[plan.action],
        method=plan.method, duration_s=0.0, verified=plan.action == "skip", read_back=None,
        reason=plan.reason,
    )


def summarise(records: Iterable[FlashRecord]) -> dict[str, int]:
    """Counts per action plus ``total``; every action is present (0 when none)."""
    counts = dict.fromkeys(ACTIONS, 0)
    total = 0
    for record in records:
        counts[record.action] += 1
        total += 1
    counts["total"] = total
    return counts


# --- what this process's deploys planned, per host, for the fleet report ------------------------
# pyinfra decides at plan time (skips, refusals) what the report must say after the run; the
# deploys note it here and ``ratos-fleet update`` merges it with what the operations then did.

RUN: dict[str, dict[str, Any]] = {}


def note(host: str, **fields: Any) -> None:
    """Remember fields of a host's run (``klipper``, ``skipped``, ``ops`` ...)."""
    RUN.setdefault(host, {"boards": {}, "ops": {}}).update(fields)


def note_board(host: str, record: FlashRecord) -> None:
    RUN.setdefault(host, {"boards": {}, "ops": {}})["boards"][record.mcu_name] = record.to_dict()


def note_op(host: str, role: str, meta: Any) -> None:
    """Keep an operation's meta (``config``, ``klipper``...) to read its outcome after the run."""
    RUN.setdefault(host, {"boards": {}, "ops": {}})["ops"][role] = meta


def clear_run() -> None:
    RUN.clear()


def note_backup_skipped(host: str, skipped: dict[str, str]) -> None:
    """The files the config backup left out (over its size limits), {path: why}."""
    RUN.setdefault(host, {"boards": {}, "ops": {}})["backup_skipped"] = dict(skipped)


def with_backup_notes(host: str, config: dict[str, Any]) -> dict[str, Any]:
    """A report's ``config`` entry with the files the backup left out named (``backup_skipped``,
    and in its reason when it has none)."""
    skipped = RUN.get(host, {}).get("backup_skipped") or {}
    if not skipped:
        return config
    text = "config backup left out " + "; ".join(f"{name} ({why})" for name, why in sorted(skipped.items()))
    return {**config, "backup_skipped": dict(skipped), "reason": config.get("reason") or text}


class FleetRun:
    """What the pyinfra States of one fleet run share (one State per printer, set as the State's
    ``fleet_run``): what the run has seen across its printers, e.g. two names reaching one machine."""
