"""Per-board result records: JSON-able, validated, summarised."""

from __future__ import annotations

import json

import pytest

from pyinfra_ratos.firmware.plan import FlashPlan
from pyinfra_ratos.run.results import FlashRecord, record_for_plan, summarise


def record(action: str = "flashed", **changes: object) -> FlashRecord:
    fields = dict(host="vcore-01", board="btt-octopus-pro-h723-11", port="1-1.3", mcu_name="mcu",
                  before_version="v0.12.0-0-g097b935", after_version="v0.13.0-3-gb846a96", action=action,
                  method="dfu-util", duration_s=4.2, verified=True, read_back=None, reason="flashed and verified")
    fields.update(changes)
    return FlashRecord(**fields)  # type: ignore[arg-type]


def test_record_round_trips_through_json() -> None:
    data = record().to_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"host", "board", "port", "mcu_name", "before_version", "after_version", "action",
                         "method", "duration_s", "verified", "read_back", "reason"}


def test_unknown_action_or_method_is_refused() -> None:
    with pytest.raises(ValueError, match="action"):
        record(action="done")
    with pytest.raises(ValueError, match="method"):
        record(method="stm32flash")


def test_summary_counts_every_action_and_the_total() -> None:
    records = [record(), record(), record("skipped"), record("failed", verified=False), record("refused")]
    assert summarise(records) == {"flashed": 2, "skipped": 1, "failed": 1, "refused": 1, "planned": 0, "total": 5}
    assert summarise([]) == {"flashed": 0, "skipped": 0, "failed": 0, "refused": 0, "planned": 0, "total": 0}


def test_plans_become_records_before_anything_runs() -> None:
    skip = FlashPlan("skip", "btt-ebb36-12", "btt-ebb36-12: already runs v1 (identity v1-abc)",
                     before_version="v1", expected_version="v1")
    refuse = FlashPlan("refuse", "btt-octopus-pro-h723", "btt-octopus-pro-h723: printer is busy (printing)")
    flash = FlashPlan("flash", "rpi", "rpi: install", method="linux", before_version="v0", expected_version="v1")
    skipped, refused, planned = (record_for_plan("vcore-01", "mcu", plan) for plan in (skip, refuse, flash))
    assert (skipped.action, skipped.after_version, skipped.verified) == ("skipped", "v1", True)
    assert (refused.action, refused.verified, refused.reason) == ("refused", False, refuse.reason)
    assert (planned.action, planned.method, planned.after_version) == ("planned", "linux", None)
