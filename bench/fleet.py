"""``ratos-fleet update`` against bare pyinfra on virtual farms of several sizes (root; by hand).

    python bench/fleet.py [--sizes 10,50,100] [--json FILE]

Per size, one farm where every Pi has ``~/klipper`` on the previous release and one board on old
firmware (3 board types, so 3 distinct firmware identities), then, in this order:

- the baseline: ``pyinfra -y INVENTORY exec -- true`` (best of two runs);
- a full update (``ratos-fleet update --batch-size <size>``: one pyinfra run for the fleet): wall
  time, builds made (``builds.jsonl`` of the farm's firmware cache) and their seconds, and the
  ratio of the wall time to (the builds' seconds + the baseline);
- the update once more (it backs up the config the full update wrote), then a converged update
  (the same command again): wall time, its ratio to the baseline, and the SSH commands each Pi
  received (sshd's ``Starting session`` lines, before/after);
- the peak RSS of the controller (the ``ratos-fleet`` process, from ``wait4``'s rusage).

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
from typing import Any

from pyinfra_ratos.builder import builds_made
from pyinfra_ratos.sim import farm

BIN = Path(sys.executable).parent
BOARDS = ["btt-octopus-pro-h723-11", "btt-octopus-pro-446", "btt-skr-mini-e3-30"]


def scenario_text(pis: int) -> str:
    return "\n".join(
        f'[[pi]]\nname = "bench-{i:03d}"\ncheckout = "old"\n'
        f'[[pi.boards]]\nboard = "{BOARDS[i % len(BOARDS)]}"\nfirmware = "old"\n'
        for i in range(pis)
    )


def timed(argv: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MiB of the process itself, exit code, output tail)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.monotonic() - started
        out.seek(0)
        tail = out.read().decode(errors="replace")[-1500:]
    return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), tail


def ssh_commands(state: Path) -> dict[str, int]:
    counts = {}
    for pi in sorted((state / "pis").iterdir()):
        log = pi / "upper/var/log/ratos-sim/sshd.log"
        counts[pi.name] = log.read_text(errors="replace").count("Starting session") if log.exists() else 0
    return counts


def per_pi_commands(state: Path, before: dict[str, int]) -> float:
    after = ssh_commands(state)
    return sum(after[name] - before.get(name, 0) for name in after) / max(1, len(after))


def update(inventory: Path, size: int, report: Path) -> tuple[float, float, int, str]:
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
        bare = min(r[0] for r in runs)
        bare_cmds = (per_pi_commands(state, before)) / 2
        if any(r[2] for r in runs):
            print(f"warning: bare exec failed:\n{runs[0][3]}", file=sys.stderr)

        full_s, full_rss, full_rc, full_tail = update(inventory, size, tmp / "report-full")
        full_report = json.loads((tmp / "report-full/report.json").read_text())
        statuses = [p["status"] for p in full_report["printers"]]
        builds = builds_made(state / "firmware-cache")
        build_s = sum(float(b.get("seconds", 0)) for b in builds)  # type: ignore[arg-type]

        # the first run after a full update backs up the config that update wrote (3 commands):
        # the fleet is converged from the next run on
        before = ssh_commands(state)
        settle_s, _, _, _ = update(inventory, size, tmp / "report-settle")
        settle_cmds = per_pi_commands(state, before)
        before = ssh_commands(state)
        conv_s, conv_rss, conv_rc, conv_tail = update(inventory, size, tmp / "report-converged")
        conv_cmds = per_pi_commands(state, before)
        conv_report = json.loads((tmp / "report-converged/report.json").read_text())
        conv_statuses = [p["status"] for p in conv_report["printers"]]
        for label, rc, tail in (("full", full_rc, full_tail), ("converged", conv_rc, conv_tail)):
            if rc:
                print(f"warning: {label} update exited {rc}:\n{tail}", file=sys.stderr)
    finally:
        farm.down(state)
    return {
        "pis": size,
        "farm_up_s": round(up_s, 1),
        "bare_exec_s": round(bare, 2),
        "bare_ssh_commands_per_pi": round(bare_cmds, 2),
        "converged_s": round(conv_s, 2),
        "converged_ratio": round(conv_s / bare, 2),
        "ssh_commands_per_pi": round(conv_cmds, 2),
        "after_full_s": round(settle_s, 2),
        "after_full_ssh_commands_per_pi": round(settle_cmds, 2),
        "converged_statuses": {s: conv_statuses.count(s) for s in sorted(set(conv_statuses))},
        "full_update_s": round(full_s, 2),
        "builds": len(builds),
        "identities": len({b.get("identity") for b in builds}),
        "build_s": round(build_s, 2),
        "full_update_ratio": round(full_s / (build_s + bare), 2),
        "full_statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "peak_rss_mb": round(max(full_rss, conv_rss), 1),
        "peak_rss_converged_mb": round(conv_rss, 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'pis':>4} {'bare s':>7} {'conv s':>7} {'ratio':>6} {'ssh/pi':>6} {'full s':>7} {'builds':>6} "
            f"{'ids':>4} {'build s':>7} {'ratio':>6} {'rss MiB':>8} {'conv ms/pi':>10} {'full ms/pi':>10} {'KiB/pi':>7}")
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['pis']:>4} {r['bare_exec_s']:>7.1f} {r['converged_s']:>7.1f} {r['converged_ratio']:>6.2f} "
            f"{r['ssh_commands_per_pi']:>6.1f} {r['full_update_s']:>7.1f} {r['builds']:>6} {r['identities']:>4} "
            f"{r['build_s']:>7.1f} {r['full_update_ratio']:>6.2f} {r['peak_rss_mb']:>8.1f} "
            f"{1000 * r['converged_s'] / r['pis']:>10.0f} {1000 * r['full_update_s'] / r['pis']:>10.0f} "
            f"{1024 * r['peak_rss_mb'] / r['pis']:>7.0f}")
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
