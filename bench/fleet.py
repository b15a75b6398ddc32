"""``ratos-fleet update`` against bare pyinfra on virtual farms of several sizes (root; by hand).

    python bench/fleet.py [--sizes 10,50,100] [--json FILE]

Per size, one farm where every Pi has ``~/klipper`` on the previous release and one board on old
firmware (3 board types, so 3 distinct firmware identities), then, in this order:

- the baseline: ``pyinfra -y INVENTORY exec -- true`` (best of two runs);
- a full update (``ratos-fleet update --batch-size <size>``: one pyinfra run for the fleet): wall
  time, builds made (``builds.jsonl`` of the farm's firmware cache) and their seconds, and the
  ratio of the wall time to (the builds' seconds + the baseline);
- the update once more (it backs up the config the full update wrote), then a converged update
  (the same command again, best of two): wall time, its ratio to the baseline, and the SSH
  commands each Pi received (sshd's ``Starting session`` lines, before/after);
- the peak RSS of the controller (the ``ratos-fleet`` process, from ``wait4``'s rusage);
- CPU: the controller process's own (user + system, from ``wait4``) for the baseline and the
  converged update, and the rest of the machine's meanwhile (``/proc/stat``) per Pi: the virtual
  Pis' work (sshd, the probe, git, Moonraker), which shares this machine's cores with the
  controller here and runs on each Pi's own CPU on a real farm.

Printed side by side, with each figure per Pi, so its growth from the smallest size to the
largest shows whether per-Pi cost stays flat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from pyinfra_ratos.firmware.builder import builds_made
from pyinfra_ratos.sim import farm

BIN = Path(sys.executable).parent
BOARDS = ["btt-octopus-pro-h723-11", "btt-octopus-pro-446", "btt-skr-mini-e3-30"]


def scenario_text(pis: int) -> str:
    return "\n".join(
        f'[[pi]]\nname = "bench-{i:03d}"\ncheckout = "old"\n'
        f'[[pi.boards]]\nboard = "{BOARDS[i % len(BOARDS)]}"\nfirmware = "old"\n'
        for i in range(pis)
    )


@dataclass
class Run:
    seconds: float  # wall
    peak_rss_mb: float  # the process's own ru_maxrss
    cpu_s: float  # the controller process's CPU (user + system, with the children it reaped)
    machine_cpu_s: float  # every process of the machine meanwhile: the controller and the farm
    rc: int
    tail: str

    @property
    def farm_cpu_s(self) -> float:
        """The virtual Pis' share (sshd, the probes, git, Moonraker): on a real farm each Pi's own."""
        return max(0.0, self.machine_cpu_s - self.cpu_s)


def _machine_cpu() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def timed(argv: list[str]) -> Run:
    started, machine = time.monotonic(), _machine_cpu()
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        seconds, machine = time.monotonic() - started, _machine_cpu() - machine
        out.seek(0)
        tail = out.read().decode(errors="replace")[-1500:]
    return Run(seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, machine,
               os.waitstatus_to_exitcode(status), tail)


def ssh_commands(state: Path) -> dict[str, int]:
    counts = {}
    for pi in sorted((state / "pis").iterdir()):
        log = pi / "upper/var/log/ratos-sim/sshd.log"
        counts[pi.name] = log.read_text(errors="replace").count("Starting session") if log.exists() else 0
    return counts


def per_pi_commands(state: Path, before: dict[str, int]) -> float:
    after = ssh_commands(state)
    return sum(after[name] - before.get(name, 0) for name in after) / max(1, len(after))


def update(inventory: Path, size: int, report: Path) -> Run:
    return timed([str(BIN / "ratos-fleet"), "update", str(inventory), "--batch-size", str(size),
                  "--max-failed", "1", "--report", str(report)])


def measure(size: int, tmp: Path) -> dict[str, Any]:
    scenario = tmp / "farm.toml"
    scenario.write_text(scenario_text(size))
    state = tmp / "state"
    up_started = time.monotonic()
    farm.up(scenario, state)
    up_s = time.monotonic() - up_started
    inventory = state / "inventory.py"
    try:
        before = ssh_commands(state)
        runs = [timed([str(BIN / "pyinfra"), "-y", str(inventory), "exec", "--", "true"]) for _ in range(2)]
        bare = min(runs, key=lambda r: r.seconds)
        bare_cmds = (per_pi_commands(state, before)) / 2
        if any(r.rc for r in runs):
            print(f"warning: bare exec failed:\n{runs[0].tail}", file=sys.stderr)

        full = update(inventory, size, tmp / "report-full")
        full_report = json.loads((tmp / "report-full/report.json").read_text())
        statuses = [p["status"] for p in full_report["printers"]]
        builds = builds_made(state / "firmware-cache")
        build_s = sum(float(b.get("seconds", 0)) for b in builds)  # type: ignore[arg-type]

        # the first run after a full update backs up the config that update wrote: the fleet is
        # converged from the next run on
        before = ssh_commands(state)
        settle = update(inventory, size, tmp / "report-settle")
        settle_cmds = per_pi_commands(state, before)
        before = ssh_commands(state)
        conv = min((update(inventory, size, tmp / "report-converged") for _ in range(2)), key=lambda r: r.seconds)
        conv_cmds = per_pi_commands(state, before) / 2
        conv_report = json.loads((tmp / "report-converged/report.json").read_text())
        conv_statuses = [p["status"] for p in conv_report["printers"]]
        for label, run in (("full", full), ("converged", conv)):
            if run.rc:
                print(f"warning: {label} update exited {run.rc}:\n{run.tail}", file=sys.stderr)
    finally:
        farm.down(state)
    return {
        "pis": size,
        "farm_up_s": round(up_s, 1),
        "bare_exec_s": round(bare.seconds, 2),
        "bare_ssh_commands_per_pi": round(bare_cmds, 2),
        "converged_s": round(conv.seconds, 2),
        "converged_ratio": round(conv.seconds / bare.seconds, 2),
        "ssh_commands_per_pi": round(conv_cmds, 2),
        "bare_controller_cpu_s": round(bare.cpu_s, 2),
        "converged_controller_cpu_s": round(conv.cpu_s, 2),
        "controller_cpu_ratio": round(conv.cpu_s / bare.cpu_s, 2),
        "bare_farm_cpu_ms_per_pi": round(1000 * bare.farm_cpu_s / size, 1),
        "converged_farm_cpu_ms_per_pi": round(1000 * conv.farm_cpu_s / size, 1),
        "after_full_s": round(settle.seconds, 2),
        "after_full_ssh_commands_per_pi": round(settle_cmds, 2),
        "converged_statuses": {s: conv_statuses.count(s) for s in sorted(set(conv_statuses))},
        "full_update_s": round(full.seconds, 2),
        "builds": len(builds),
        "identities": len({b.get("identity") for b in builds}),
        "build_s": round(build_s, 2),
        "full_update_ratio": round(full.seconds / (build_s + bare.seconds), 2),
        "full_controller_cpu_s": round(full.cpu_s, 2),
        "full_farm_cpu_ms_per_pi": round(1000 * full.farm_cpu_s / size, 1),
        "full_statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "peak_rss_mb": round(max(full.peak_rss_mb, conv.peak_rss_mb), 1),
        "peak_rss_converged_mb": round(conv.peak_rss_mb, 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'pis':>4} {'bare s':>7} {'conv s':>7} {'ratio':>6} {'ssh/pi':>6} {'full s':>7} {'builds':>6} "
            f"{'ids':>4} {'build s':>7} {'ratio':>6} {'rss MiB':>8} {'conv ms/pi':>10} {'full ms/pi':>10} {'KiB/pi':>7} "
            f"{'ctl cpu x':>9} {'farm cpu ms/pi':>14}")
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['pis']:>4} {r['bare_exec_s']:>7.1f} {r['converged_s']:>7.1f} {r['converged_ratio']:>6.2f} "
            f"{r['ssh_commands_per_pi']:>6.1f} {r['full_update_s']:>7.1f} {r['builds']:>6} {r['identities']:>4} "
            f"{r['build_s']:>7.1f} {r['full_update_ratio']:>6.2f} {r['peak_rss_mb']:>8.1f} "
            f"{1000 * r['converged_s'] / r['pis']:>10.0f} {1000 * r['full_update_s'] / r['pis']:>10.0f} "
            f"{1024 * r['peak_rss_mb'] / r['pis']:>7.0f} {r['controller_cpu_ratio']:>9.2f} "
            f"{r['bare_farm_cpu_ms_per_pi']:>6.1f} / {r['converged_farm_cpu_ms_per_pi']:<6.1f}")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        grow = b["pis"] / a["pis"]
        lines.append(
            f"growth {a['pis']} -> {b['pis']} Pis (x{grow:g}): converged time x{b['converged_s'] / a['converged_s']:.2f}, "
            f"bare exec x{b['bare_exec_s'] / a['bare_exec_s']:.2f}, full update x{b['full_update_s'] / a['full_update_s']:.2f}, "
            f"ssh/pi {a['ssh_commands_per_pi']:g} -> {b['ssh_commands_per_pi']:g}, builds {a['builds']} -> {b['builds']}, "
            f"peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50,100")
    parser.add_argument("--json", type=Path, help="write the figures, one object per size, to this file")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        # overlayfs refuses ':' ',' and spaces in the state dir: a plain /tmp path
        with tempfile.TemporaryDirectory(prefix="ratos-bench-fleet-") as tmp:
            rows.append(measure(size, Path(tmp)))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
