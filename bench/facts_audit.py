"""Fleet audit cost on the virtual farm: the one-command bundle against a bare SSH round trip (root).

    python bench/facts_audit.py [--sizes 10,50] [--repeat 3]

For each farm size it brings a farm up (every Pi with two boards, one Pi in ten offline), then
times, with the real pyinfra CLI over real SSH, the best of ``--repeat`` runs of:

- ``exec -- true``: connect + one empty command per Pi, the floor of any audit;
- ``fact pyinfra_ratos.facts.audit.FleetAudit``: the bundle (one command per Pi);
- the five single facts from one deploy (``host.get_fact`` x5: five round trips per Pi).

and prints the wall time of each, per Pi, and the bundle's ratio to the bare round trip.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyinfra_ratos.sim import farm

BOARDS = ["btt-octopus-pro-h723-11", "btt-ebb42-12", "btt-octopus-pro-446", "btt-skr-mini-e3-30"]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
SINGLE_FACTS_DEPLOY = '''
from pyinfra import host
from pyinfra_ratos.facts.boards import AttachedBoards
from pyinfra_ratos.facts.klipper import KlipperHost, McuFirmware
from pyinfra_ratos.facts.network import NetworkReachability
from pyinfra_ratos.facts.printer import PrinterActivity

for fact in (AttachedBoards, KlipperHost, McuFirmware, PrinterActivity, NetworkReachability):
    host.get_fact(fact)
'''


def scenario_text(pis: int) -> str:
    out = []
    for i in range(pis):
        out.append(f'[[pi]]\nname = "audit-{i:03d}"\n' + ('network = "offline"\n' if i % 10 == 9 else ""))
        for b in range(2):
            out.append(f'[[pi.boards]]\nboard = "{BOARDS[(i + b) % len(BOARDS)]}"\nfirmware = "old"\n')
    return "\n".join(out)


def best_wall(argv: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.monotonic()
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        elapsed = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:4])} ... failed:\n{done.stdout[-3000:]}")
        best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,50")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'pis':>4} {'exec true s':>11} {'bundle s':>9} {'5 facts s':>9} "
          f"{'true ms/pi':>10} {'bundle ms/pi':>12} {'5 facts ms/pi':>13} {'bundle/true':>11}")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="ratos-bench-facts-") as tmp:
            scenario = Path(tmp) / "farm.toml"
            scenario.write_text(scenario_text(size))
            deploy = Path(tmp) / "five_facts.py"
            deploy.write_text(SINGLE_FACTS_DEPLOY)
            state = Path(tmp) / "state"
            farm.up(scenario, state)
            try:
                inventory = str(state / "inventory.py")
                bare = best_wall([PYINFRA, "-y", inventory, "exec", "--", "true"], args.repeat)
                bundle = best_wall([PYINFRA, "-y", inventory, "fact", "pyinfra_ratos.facts.audit.FleetAudit"],
                                   args.repeat)
                singles = best_wall([PYINFRA, "-y", inventory, str(deploy)], args.repeat)
            finally:
                farm.down(state)
            print(f"{size:>4} {bare:>11.2f} {bundle:>9.2f} {singles:>9.2f} {bare / size * 1000:>10.0f} "
                  f"{bundle / size * 1000:>12.0f} {singles / size * 1000:>13.0f} {bundle / bare:>11.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
