"""Virtual farm start-up, tear-down and memory per Pi, for farms of several sizes (root).

    python bench/farm_scale.py [--sizes 10,50] [--boards 2]

Prints one row per size: seconds to bring the farm up, seconds to take it down, and the memory
(PSS, so shared pages are split fairly) of each Pi's processes plus its share of the daemon.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pyinfra_ratos.sim import farm, procs

BOARDS = ["btt-octopus-pro-h723-11", "btt-ebb42-12", "btt-octopus-pro-446", "btt-skr-mini-e3-30"]


def scenario_text(pis: int, boards: int) -> str:
    out = []
    for i in range(pis):
        out.append(f'[[pi]]\nname = "bench-{i:03d}"\n')
        for b in range(boards):
            out.append(f'[[pi.boards]]\nboard = "{BOARDS[(i + b) % len(BOARDS)]}"\nfirmware = "old"\n')
    return "\n".join(out)


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def farm_memory_kib(state: Path) -> tuple[int, int]:
    """(PSS of all Pis' processes, PSS of the daemon)."""
    pid_namespaces = set()
    for pidfile in state.glob("pis/*/init.pid"):
        pid = procs.pidfile_alive(str(pidfile))
        if pid:
            pid_namespaces.add(os.readlink(f"/proc/{pid}/ns/pid"))
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") in pid_namespaces:
                    total += pss_kib(int(entry))
            except OSError:
                continue
    daemon = procs.pidfile_alive(str(state / "daemon.pid"))
    return total, pss_kib(daemon) if daemon else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,50")
    parser.add_argument("--boards", type=int, default=2)
    args = parser.parse_args()
    print(f"{'pis':>5} {'boards':>6} {'up s':>7} {'down s':>7} {'MiB/pi':>7} {'daemon MiB':>10}")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="ratos-bench-") as tmp:
            scenario = Path(tmp) / "farm.toml"
            scenario.write_text(scenario_text(size, args.boards))
            state = Path(tmp) / "state"
            started = time.monotonic()
            farm.up(scenario, state)
            up_s = time.monotonic() - started
            pis_kib, daemon_kib = farm_memory_kib(state)
            started = time.monotonic()
            farm.down(state)
            down_s = time.monotonic() - started
            print(
                f"{size:>5} {args.boards:>6} {up_s:>7.1f} {down_s:>7.1f} "
                f"{(pis_kib + daemon_kib) / size / 1024:>7.1f} {daemon_kib / 1024:>10.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
