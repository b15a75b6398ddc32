"""``ratos-fleet demo``: the main job on a built-in virtual farm, with no hardware.

A print farm the morning after a Klipper release (``scenarios/demo.toml``): six virtual Pis, most
on the previous release, one printing, one Octopus Pro H723 v1.0 (never flashed unattended), one
offline, one board left in DFU, one at the pin with only its printer.cfg to adopt. The demo shows the fleet's status, the plan,
runs the update (canary first, then batches) over real SSH with the real pyinfra API, ends with
the report (terminal table, report.json, report.html) and tears the farm down.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from pyinfra_ratos.sim import farm

SCENARIO = Path(__file__).parent / "scenarios" / "demo.toml"


def run_demo(main: Callable[[list[str]], int], keep: bool = False) -> int:
    """The demo story; ``main``: the CLI's own entry point, so the farm runs the very commands an
    operator types (passed in: the farm never imports the CLI, which loads the farm)."""

    state = Path(tempfile.mkdtemp(prefix="ratos-demo-"))
    inventory = str(state / "inventory.py")
    print(f"== 1. a virtual print farm ({SCENARIO.name}) in {state}", flush=True)
    info = farm.up(SCENARIO, state)
    print(f"   {len(info['pis'])} virtual Pis up in {info['seconds']} s; fleet pinned to "
          f"{info['versions']['current']['version']}", flush=True)
    try:
        print(f"\n== 2. ratos-fleet status {inventory}", flush=True)
        main(["status", inventory])
        print(f"\n== 3. ratos-fleet plan {inventory}   (changes nothing)", flush=True)
        main(["plan", inventory, "--max-in-flight", "3"])
        report = state / "report"
        # a window of 3 printers in flight; the line continued so that it fits 120 columns
        print(f"\n== 4. ratos-fleet update {inventory} --max-in-flight 3 \\\n       --report {report}", flush=True)
        code = main(["update", inventory, "--max-in-flight", "3", "--report", str(report)])
        print(f"\n== 5. ratos-fleet status {inventory}   (after the update)", flush=True)
        main(["status", inventory])
        print(f"\nThe update exited {code}: 3 means no failure, changes made and some pending (one printer\n"
              "printing, one that must be flashed with someone watching: `--attended-flash`).", flush=True)
        print(f"The report (open report.html in a browser): {report}/")
        return 0 if code in (0, 3) else code
    finally:
        if keep:
            print(f"== farm left running; stop it with: ratos-fleet sim down --state {state}")
        else:
            farm.down(state)
            print("== farm down", flush=True)
