"""Record fact fixtures from a running virtual farm (root; run by hand, not by pytest).

    python tests/facts/capture.py STATE_DIR [--label LABEL] [--pis a,b] [--facts boards.AttachedBoards,...]

For every Pi and fact it runs the fact's real command over OpenSSH, and writes
``tests/facts/<module.Fact>/<pi>[-<label>].json`` with the command, the output lines and the
value ``process`` gives. Review the values before keeping them: the farm tests
(``tests/farm/test_facts.py``) are what prove them true.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
from pathlib import Path
from typing import Any

from test_fixtures import FIXTURES, rendered_command  # this folder is sys.path[0]

FACTS: dict[str, dict[str, Any]] = {
    "boards.AttachedBoards": {},
    "klipper.KlipperHost": {},
    "klipper.McuFirmware": {},
    "printer.PrinterActivity": {},
    "network.NetworkReachability": {"hosts": ["127.0.2.1:9418"]},
    "firmware.FirmwareArtifacts": {},
    "audit.FleetAudit": {},
}


def fact_class(name: str) -> Any:
    module, cls = name.rsplit(".", 1)
    return getattr(importlib.import_module(f"pyinfra_ratos.facts.{module}"), cls)


def ssh(state: Path, address: str, command: str) -> str:
    argv = ["ssh", "-i", str(state / "id_ed25519"), "-o", f"UserKnownHostsFile={state / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"pi@{address}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout


def capture(state: Path, pi: dict[str, Any], name: str, kwargs: dict[str, Any], label: str) -> Path:
    fact = fact_class(name)()
    output = ssh(state, pi["address"], fact.command(**kwargs).get_raw_value()).splitlines()
    record = {
        "kwargs": kwargs,
        "command": rendered_command(fact, [], kwargs),
        "output": output,
        "fact": json.loads(json.dumps(fact.process(output))),
    }
    path = FIXTURES / name / f"{pi['name']}{'-' + label if label else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state", type=Path)
    parser.add_argument("--label", default="")
    parser.add_argument("--pis", default="")
    parser.add_argument("--facts", default=",".join(FACTS))
    args = parser.parse_args()
    info = json.loads((args.state / "farm.json").read_text())
    wanted = set(filter(None, args.pis.split(",")))
    for pi in info["pis"]:
        if wanted and pi["name"] not in wanted:
            continue
        for name in args.facts.split(","):
            print(capture(args.state, pi, name, FACTS[name], args.label))


if __name__ == "__main__":
    main()
