"""``ratos-fleet demo``: the main job on a built-in virtual farm, with no hardware.

Brings a virtual farm up, runs the real pyinfra CLI with the package's read-only status deploy
over real SSH, and tears the farm down again.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from pyinfra_ratos.sim import farm

SCENARIO = Path(__file__).parent / "scenarios" / "three-pis.toml"


def _deploy_file(name: str) -> Path:
    import pyinfra_ratos.deploys

    return Path(pyinfra_ratos.deploys.__file__).parent / name


def run_demo(keep: bool = False) -> int:
    state = Path(tempfile.mkdtemp(prefix="ratos-demo-"))
    print(f"== bringing up the virtual farm of {SCENARIO.name} in {state}", flush=True)
    info = farm.up(SCENARIO, state)
    print(f"   {len(info['pis'])} Pis up in {info['seconds']} s", flush=True)
    try:
        print("== pyinfra: read-only status deploy over SSH", flush=True)
        pyinfra = Path(sys.executable).parent / "pyinfra"
        result = subprocess.run(
            [str(pyinfra), "-y", str(state / "inventory.py"), str(_deploy_file("status.py"))], check=False
        )
        return result.returncode
    finally:
        if keep:
            print(f"== farm left running; stop it with: ratos-fleet sim down --state {state}")
        else:
            farm.down(state)
            print("== farm down", flush=True)
