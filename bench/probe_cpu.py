"""The CPU a converged update's one command costs a virtual Pi, in parts (root; by hand).

    python bench/probe_cpu.py [--runs 40] [--reference OLD_REMOTE_PY]

On a one-Pi farm, inside ONE SSH session (so sshd's session cost is not counted), runs each
command ``--runs`` times and reads the CPU of the shell's children (``times``): ``true`` (a
process), ``python3 -I -S -c pass`` (the interpreter the probe needs), the probe of
``UpdateState`` with this tree's ``facts/remote.py`` and, with ``--reference``, with another
version of that file (e.g. main's), side by side. Moonraker's stand-in answers the probe's
requests in its own process, which is not counted here (on a real Pi it is Moonraker's own work).
What the probe costs above the interpreter is the product's own Pi-side work.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import tempfile
from pathlib import Path

from pyinfra_ratos.facts import probe
from pyinfra_ratos.facts.update_state import UpdateState
from pyinfra_ratos.sim import farm

SCENARIO = '[[pi]]\nname = "probe-01"\n[[pi.boards]]\nboard = "btt-octopus-pro-446"\nfirmware = "current"\n'


def source_of(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return "\n".join(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")) + "\n"


def update_command(source: str) -> str:
    """The UpdateState command a converged update sends, shipping ``source`` as the probe."""
    shipped, probe.SHIPPED = probe.SHIPPED, probe.shipped(source)
    try:
        return UpdateState().command(files=["printer.cfg", "RatOS.cfg", "moonraker.conf"], read=["printer.cfg"],
                                     hosts=["github.com:443"]).get_raw_value()
    finally:
        probe.SHIPPED = shipped


def cpu_ms(state: Path, info: dict, command: str, runs: int) -> float:
    pi = info["pis"][0]
    loop = f"times >/dev/null; for i in $(seq {runs}); do {command} >/dev/null 2>&1; done; times"
    argv = ["ssh", "-i", str(state / "id_ed25519"), "-o", f"UserKnownHostsFile={state / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(info["ssh_port"]),
            f"pi@{pi['address']}", "bash -c " + shlex.quote(loop)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600).stdout.split()
    # `times`: shell user, shell sys, children user, children sys ("0m0.123s")
    def seconds(text: str) -> float:
        minutes, rest = text.split("m")
        return 60 * float(minutes) + float(rest.rstrip("s"))
    return 1000 * (seconds(out[-2]) + seconds(out[-1])) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--reference", type=Path, help="another facts/remote.py to compare with")
    args = parser.parse_args()
    commands = {"/bin/true": "/bin/true", "python3 -I -S -c pass": "python3 -I -S -c pass",
                "probe (this tree)": update_command(probe.SOURCE)}
    # the probe's parts, each alone (each with the interpreter's start)
    parts = {"boards": {}, "klipper": {"path": "~/klipper"},
             "moonraker": {"url": "http://127.0.0.1:7125", "klippy_log": "~/printer_data/logs/klippy.log"},
             "network": {"klipper_path": "~/klipper", "hosts": ["github.com:443"], "moonraker_url": "http://127.0.0.1:7125",
                         "timeout": 3.0}}
    for name, part in parts.items():
        commands[f"  part: {name}"] = probe.probe_command(name, part).get_raw_value()
    commands["  git describe --dirty"] = "git -C ~/klipper describe --always --tags --long --dirty"
    commands["  git rev-parse"] = "git -C ~/klipper rev-parse HEAD --abbrev-ref HEAD"
    if args.reference:
        commands["probe (reference)"] = update_command(source_of(args.reference))
    with tempfile.TemporaryDirectory(prefix="ratos-bench-probe-") as tmp:
        (Path(tmp) / "farm.toml").write_text(SCENARIO)
        state = Path(tmp) / "state"
        info = farm.up(Path(tmp) / "farm.toml", state)
        try:
            rows = {}
            for _ in range(2):  # interleaved twice: the best of two per command
                for label, command in commands.items():
                    value = cpu_ms(state, info, command, args.runs)
                    rows[label] = min(rows.get(label, value), value)
        finally:
            farm.down(state)
    for label, value in rows.items():
        print(f"{label:<24} {value:6.1f} ms CPU per run")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
