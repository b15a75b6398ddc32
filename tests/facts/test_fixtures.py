"""Fact fixtures in pyinfra's own layout: ``tests/facts/<module.Fact>/<case>.json``.

Each file holds ``arg`` (a list) and/or ``kwargs`` for ``command``, the ``command`` it renders
to, the captured ``output`` lines and the ``fact`` value ``process`` must return. In recorded
commands the on-Pi probe script is written ``$PROBE``: the script is proven on the farm and by
``test_remote.py``, and the fixtures stay readable.
"""

from __future__ import annotations

import importlib
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.facts.probe import SHIPPED, SOURCE_PLACEHOLDER

FIXTURES = Path(__file__).parent


def rendered_command(fact: Any, args: list[Any], kwargs: dict[str, Any]) -> str:
    raw = fact.command(*args, **kwargs).get_raw_value()
    return raw.replace(shlex.quote(SHIPPED), SOURCE_PLACEHOLDER)


def _cases() -> list[Any]:
    cases = []
    for path in sorted(FIXTURES.glob("*.*/*.json")):
        cases.append(pytest.param(path, id=f"{path.parent.name}/{path.stem}"))
    return cases


@pytest.mark.parametrize("path", _cases())
def test_fact_fixture(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    module, cls = path.parent.name.rsplit(".", 1)
    fact = getattr(importlib.import_module(f"pyinfra_ratos.facts.{module}"), cls)()
    args = data.get("arg", [])
    args = args if isinstance(args, list) else [args]
    kwargs = data.get("kwargs", {})
    if "command" in data:
        assert rendered_command(fact, args, kwargs) == data["command"]
    got = json.loads(json.dumps(fact.process(data["output"])))
    assert got == data["fact"]


def test_every_fact_has_fixtures() -> None:
    names = {path.parent.name for path in FIXTURES.glob("*.*/*.json")}
    assert names >= {
        "boards.AttachedBoards", "klipper.KlipperHost", "klipper.McuFirmware", "printer.PrinterActivity",
        "network.NetworkReachability", "firmware.FirmwareArtifacts", "audit.FleetAudit",
    }
