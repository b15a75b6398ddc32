"""``ratos-fleet update`` against bare pyinfra on virtual farms of several sizes (root; by hand).

    python bench/fleet.py [--sizes 10,100,250] [--throughput 100] [--window 10] [--json FILE]

Per size, one farm where every Pi has ``~/klipper`` on the previous release and one board on old
firmware (3 board types, so 3 distinct firmware identities), then, in this order:

- the baseline: ``pyinfra -y INVENTORY exec -- true`` (two runs, then one before each converged update);
- a full update (``ratos-fleet update --max-in-flight <size>``: the whole fleet in flight): wall
  time, builds made (``builds.jsonl`` of the farm's firmware cache) and their seconds, and the
  ratio of the wall time to (the builds' seconds + the baseline);
- the update once more (it backs up the config the full update wrote), then ``--reps`` (5) pairs
  alternated: a bare exec, then a converged update (the same command again): the best wall time,
  its ratio to the best bare exec, and the SSH commands each Pi received (sshd's ``Starting
  session`` lines, before/after);
- the peak RSS of the controller (the ``ratos-fleet`` process, from ``wait4``'s rusage);
- CPU: the controller process's own (user + system, from ``wait4``) for the baseline and the
  converged update: the ratio is the median of the alternated pairs' ratios (with its range: one
  noisy bare run on a shared machine moved a single ratio by +-0.4), and the rest of the machine's meanwhile (``/proc/stat``) per Pi: the virtual
  Pis' work (sshd, the probe, git, Moonraker), which shares this machine's cores with the
  controller here and runs on each Pi's own CPU on a real farm.

- the same ratio against ``pyinfra exec`` of the update's own probe command (``--reps`` pairs
  alternated again): bare pyinfra then makes every Pi do the update's Pi-side work, so the farm
  loads the shared cores alike and the ratio is the controller's own overhead;
- instructions (valgrind's callgrind, when installed), one run each of bare exec and the converged
  update: the controller's work, which CPU time on cores shared with the farm (and with other
  machines' guests) only approximates;
- a converged provision (``pyinfra -y INVENTORY deploys/provision.py``, its second run): wall,
  controller CPU and SSH commands per Pi.

Printed side by side, with each figure per Pi, so its growth from the smallest size to the
largest shows whether per-Pi cost stays flat.

Throughput (``--throughput N``, before the sizes): two fresh farms of N Pis where one printer in ten
is slow (three boards, one of each type, each with ``slow-erase``), each fully
updated once, with the old batches (``barriers``: a batch waits for its slowest printer) and
once with the rolling window, both of ``--window`` printers. Printed: each fleet time, the median
printer time of that run and the ideal (printers / window x median printer time), side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
PROVISION = Path(__file__).resolve().parents[1] / "deploys" / "provision.py"
BOARDS = ["btt-octopus-pro-h723-11", "btt-octopus-pro-446", "btt-skr-mini-e3-30"]




def scenario_text(pis: int, slow_every: int = 0) -> str:
    """Every Pi on the previous release with one board on old firmware; with ``slow_every``, one
    Pi in that many has three boards instead (one of each type), each with ``slow-erase``."""
    text = []
    for i in range(pis):
        pi = f'[[pi]]\nname = "bench-{i:03d}"\ncheckout = "old"\n'
        if slow_every and i % slow_every == slow_every // 2:
            pi += "".join(f'[[pi.boards]]\nboard = "{board}"\nfirmware = "old"\nport = "1-1.{n + 1}"\n'
                          f'faults = ["slow-erase"]\n' for n, board in enumerate(BOARDS))
        else:
            pi += f'[[pi.boards]]\nboard = "{BOARDS[i % len(BOARDS)]}"\nfirmware = "old"\n'
        text.append(pi)
    return "\n".join(text)


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
    return timed([str(BIN / "ratos-fleet"), "update", str(inventory), "--max-in-flight", str(size),
                  "--max-failed", "100", "--report", str(report)])


def fleet_run(inventory: Path, window: int, barriers: bool, report: Path) -> Run:
    """``run_fleet`` in a child process (``--barriers`` is no CLI option: the old batches exist
    for this comparison)."""
    return timed([sys.executable, __file__, "--child-update", str(inventory), str(window),
                  "barriers" if barriers else "window", str(report)])


def provision_run(inventory: Path) -> Run:
    return timed([str(BIN / "pyinfra"), "-y", str(inventory), str(PROVISION)])


def _down(state: Path) -> None:
    """Stop the farm; a Pi whose processes outlive the wait (the machine loaded) costs a warning,
    not the figures already measured."""
    try:
        farm.down(state)
    except Exception as error:  # noqa: BLE001 - the figures matter more than a slow teardown
        print(f"warning: farm down: {error}", file=sys.stderr, flush=True)


def bare_exec(inventory: Path, command: str = "true") -> Run:
    return timed([str(BIN / "pyinfra"), "-y", str(inventory), "exec", "--", command])


def probe_command(inventory: Path) -> str:
    """The converged update's one command (the ``UpdateState`` probe) for the inventory's first Pi:
    ``pyinfra exec`` of it makes every Pi do the update's Pi-side work for bare pyinfra. Worked
    out in a child process: pyinfra's API patches the standard library for gevent (this process
    reaps its children with ``os.wait4``)."""
    script = (
        "import sys\n"
        "from pyinfra_ratos.fleet import api\n"
        "from pyinfra.context import ctx_host, ctx_state\n"
        "from pyinfra_ratos.deploys.update import update_reads\n"
        "inventory = api.load_inventory(sys.argv[1])\n"
        "host = next(iter(inventory))\n"
        "with ctx_state.use(api.make_state(inventory)), ctx_host.use(host):\n"
        "    [(fact, kwargs)] = update_reads()\n"
        "    sys.stdout.write(fact().command(**kwargs).get_raw_value())\n"
    )
    return subprocess.run([sys.executable, "-c", script, str(inventory)], capture_output=True, text=True,
                          check=True, timeout=120).stdout


def instructions(argv: list[str]) -> int | None:
    """The instructions one run executes (valgrind's callgrind; None without valgrind): unlike
    CPU time, not moved by the other processes of the machine (the farm on the same cores)."""
    try:
        done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
                              capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = [line.split(":")[-1].strip() for line in done.stderr.splitlines() if "Collected :" in line]
    return int(found[-1]) if found and done.returncode == 0 else None


def compile_sources() -> None:
    """Bytecode for the project's own modules, as an installed package has (pyinfra's came with
    pip): with ``PYTHONDONTWRITEBYTECODE`` set, an editable checkout compiles ~80 modules in every
    ``ratos-fleet`` process (~0.3 CPU-s measured), which bare ``pyinfra`` never pays."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(root / d) for d in
                    ("pyinfra_ratos", "deploys", "facts", "operations"))], check=True, stdout=subprocess.DEVNULL)


def measure(size: int, tmp: Path, reps: int = 5) -> dict[str, Any]:
    scenario = tmp / "farm.toml"
    scenario.write_text(scenario_text(size))
    state = tmp / "state"
    up_started = time.monotonic()
    farm.up(scenario, state)
    up_s = time.monotonic() - up_started
    inventory = state / "inventory.py"
    try:
        before = ssh_commands(state)
        runs = [bare_exec(inventory) for _ in range(2)]
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
        # converged update and bare exec alternated (bare, update, bare, update...): the machine's
        # load moves both alike, and the ratio is the median of the pairs', not one bare run's luck
        before = ssh_commands(state)
        pairs = []
        for _ in range(reps):
            bare_run = bare_exec(inventory)
            after_bare = ssh_commands(state)
            conv_run = update(inventory, size, tmp / "report-converged")
            after_conv = ssh_commands(state)
            pairs.append((bare_run, conv_run, sum(after_conv[n] - after_bare[n] for n in after_conv) / size))
            runs.append(bare_run)
        # the same Pi-side work for bare pyinfra: its exec runs the update's probe on every Pi, so
        # the farm loads the shared cores as during the update (alternated with the update again)
        probe = probe_command(inventory)
        busy_pairs = [(bare_exec(inventory, probe), update(inventory, size, tmp / "report-converged"))
                      for _ in range(reps)]
        counted = (instructions([str(BIN / "pyinfra"), "-y", str(inventory), "exec", "--", "true"]),
                   instructions([str(BIN / "ratos-fleet"), "update", str(inventory), "--max-in-flight", str(size),
                                 "--max-failed", "100", "--report", str(tmp / "report-counted")]))
        bare = min(runs, key=lambda r: r.seconds)
        conv = min((c for _, c, _ in pairs), key=lambda r: r.seconds)
        conv_cmds = statistics.median(n for _, _, n in pairs)
        cpu_ratios = [c.cpu_s / b.cpu_s for b, c, _ in pairs]
        bare_cpu = statistics.median(r.cpu_s for r in runs)
        conv_cpu = statistics.median(c.cpu_s for _, c, _ in pairs)
        conv_report = json.loads((tmp / "report-converged/report.json").read_text())
        conv_statuses = [p["status"] for p in conv_report["printers"]]
        # provision: the first run on these Pis writes the udev rule (and what else a Pi lacks), the
        # next ones are converged
        first_prov = provision_run(inventory)
        before = ssh_commands(state)
        prov = min((provision_run(inventory) for _ in range(2)), key=lambda r: r.seconds)
        prov_cmds = per_pi_commands(state, before) / 2
        for label, run in (("full", full), ("converged", conv), ("provision", first_prov), ("converged provision", prov)):
            if run.rc:
                print(f"warning: {label} exited {run.rc}:\n{run.tail}", file=sys.stderr)
    finally:
        _down(state)
    return {
        "pis": size,
        "farm_up_s": round(up_s, 1),
        "bare_exec_s": round(bare.seconds, 2),
        "bare_ssh_commands_per_pi": round(bare_cmds, 2),
        "converged_s": round(conv.seconds, 2),
        "converged_ratio": round(conv.seconds / bare.seconds, 2),
        "ssh_commands_per_pi": round(conv_cmds, 2),
        "bare_controller_cpu_s": round(bare_cpu, 2),  # medians
        "converged_controller_cpu_s": round(conv_cpu, 2),
        "controller_cpu_ratio": round(statistics.median(cpu_ratios), 2),  # median of the alternated pairs
        "controller_cpu_ratio_min": round(min(cpu_ratios), 2),
        "controller_cpu_ratio_max": round(max(cpu_ratios), 2),
        "controller_cpu_pairs": [[round(b.cpu_s, 2), round(c.cpu_s, 2)] for b, c, _ in pairs],
        "controller_cpu_reps": reps,
        # bare pyinfra running the update's probe on every Pi (the same Pi-side work), alternated
        # with the converged update: the controller's own overhead with the farm equally busy
        "busy_bare_controller_cpu_s": round(statistics.median(b.cpu_s for b, _ in busy_pairs), 2),
        "busy_controller_cpu_ratio": round(statistics.median(c.cpu_s / b.cpu_s for b, c in busy_pairs), 2),
        "busy_controller_cpu_pairs": [[round(b.cpu_s, 2), round(c.cpu_s, 2)] for b, c in busy_pairs],
        "busy_bare_farm_cpu_ms_per_pi": round(1000 * statistics.median(b.farm_cpu_s for b, _ in busy_pairs) / size, 1),
        # instructions (callgrind), one run each: bare exec of `true` and the converged update
        "bare_instructions": counted[0],
        "converged_instructions": counted[1],
        "instructions_ratio": round(counted[1] / counted[0], 2) if all(counted) else None,
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
        "peak_rss_mb": round(max(full.peak_rss_mb, *(c.peak_rss_mb for _, c, _ in pairs)), 1),
        "peak_rss_full_mb": round(full.peak_rss_mb, 1),
        "peak_rss_converged_mb": round(max(c.peak_rss_mb for _, c, _ in pairs), 1),
        "bare_controller_cpu_ms_per_pi": round(1000 * bare_cpu / size, 1),
        "converged_controller_cpu_ms_per_pi": round(1000 * conv_cpu / size, 1),
        "full_controller_cpu_ms_per_pi": round(1000 * full.cpu_s / size, 1),
        "provision_converged_s": round(prov.seconds, 2),
        "provision_converged_ratio": round(prov.seconds / bare.seconds, 2),
        "provision_ssh_commands_per_pi": round(prov_cmds, 2),
        "provision_controller_cpu_s": round(prov.cpu_s, 2),
        "provision_controller_cpu_ratio": round(prov.cpu_s / bare_cpu, 2),
        "provision_farm_cpu_ms_per_pi": round(1000 * prov.farm_cpu_s / size, 1),
        "provision_peak_rss_mb": round(prov.peak_rss_mb, 1),
        "provision_first_s": round(first_prov.seconds, 2),
    }


def throughput(pis: int, window: int, tmp: Path) -> dict[str, Any]:
    """The same fleet (one printer in ten slow) fully updated with barriers, then with the window."""
    figures: dict[str, Any] = {"pis": pis, "max_in_flight": window, "slow": sum(
        1 for i in range(pis) if i % 10 == 5)}
    for mode in ("barriers", "window"):
        folder = tmp / mode
        folder.mkdir()
        (folder / "farm.toml").write_text(scenario_text(pis, slow_every=10))
        state = folder / "state"
        farm.up(folder / "farm.toml", state)
        try:
            run = fleet_run(state / "inventory.py", window, mode == "barriers", folder / "report")
        finally:
            _down(state)
        report = json.loads((folder / "report/report.json").read_text())
        times = sorted(p["duration_s"] for p in report["printers"])
        slow = [p["duration_s"] for p in report["printers"] if int(p["host"].rsplit("-", 1)[1]) % 10 == 5]
        median = statistics.median(times)
        statuses = [p["status"] for p in report["printers"]]
        if run.rc:
            print(f"warning: {mode} update exited {run.rc}:\n{run.tail}", file=sys.stderr)
        figures[mode] = {
            "fleet_s": round(run.seconds, 2), "median_printer_s": round(median, 2),
            "mean_printer_s": round(statistics.fmean(times), 2),
            "slow_printer_median_s": round(statistics.median(slow), 2) if slow else None,
            "ideal_s": round(pis / window * median, 2), "ratio_to_ideal": round(run.seconds / (pis / window * median), 2),
            "peak_in_flight": report.get("window", {}).get("peak_in_flight"),
            "controller_cpu_s": round(run.cpu_s, 2), "peak_rss_mb": round(run.peak_rss_mb, 1),
            "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        }
    return figures


def throughput_table(t: dict[str, Any]) -> str:
    lines = [f"throughput: {t['pis']} Pis, {t['slow']} slow (one in ten), window/batch of {t['max_in_flight']}",
             f"{'mode':>9} {'fleet s':>8} {'median s':>9} {'mean s':>7} {'slow s':>7} {'ideal s':>8} {'x ideal':>8} "
             f"{'peak':>5} {'ctl cpu s':>9}"]
    for mode in ("barriers", "window"):
        r = t[mode]
        lines.append(f"{mode:>9} {r['fleet_s']:>8.1f} {r['median_printer_s']:>9.2f} {r['mean_printer_s']:>7.2f} "
                     f"{r['slow_printer_median_s'] or 0:>7.2f} {r['ideal_s']:>8.1f} {r['ratio_to_ideal']:>8.2f} "
                     f"{r['peak_in_flight'] or 0:>5} {r['controller_cpu_s']:>9.2f}")
    lines.append(f"window / barriers fleet time: {t['window']['fleet_s'] / t['barriers']['fleet_s']:.2f}")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'pis':>4} {'bare s':>7} {'conv s':>7} {'ratio':>6} {'ssh/pi':>6} {'full s':>7} {'builds':>6} "
            f"{'ids':>4} {'build s':>7} {'ratio':>6} {'rss MiB':>8} {'conv ms/pi':>10} {'full ms/pi':>10} {'KiB/pi':>7} "
            f"{'ctl cpu x':>9} {'farm cpu ms/pi':>14} {'ctl ms/pi':>13} {'prov ssh/pi':>11} {'prov s':>7} "
            f"{'prov ctl x':>10}")
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['pis']:>4} {r['bare_exec_s']:>7.1f} {r['converged_s']:>7.1f} {r['converged_ratio']:>6.2f} "
            f"{r['ssh_commands_per_pi']:>6.1f} {r['full_update_s']:>7.1f} {r['builds']:>6} {r['identities']:>4} "
            f"{r['build_s']:>7.1f} {r['full_update_ratio']:>6.2f} {r['peak_rss_mb']:>8.1f} "
            f"{1000 * r['converged_s'] / r['pis']:>10.0f} {1000 * r['full_update_s'] / r['pis']:>10.0f} "
            f"{1024 * r['peak_rss_mb'] / r['pis']:>7.0f} {r['controller_cpu_ratio']:>9.2f} "
            f"{r['bare_farm_cpu_ms_per_pi']:>6.1f} / {r['converged_farm_cpu_ms_per_pi']:<6.1f} "
            f"{r['bare_controller_cpu_ms_per_pi']:>5.1f} / {r['converged_controller_cpu_ms_per_pi']:<5.1f} "
            f"{r['provision_ssh_commands_per_pi']:>11.1f} {r['provision_converged_s']:>7.1f} "
            f"{r['provision_controller_cpu_ratio']:>10.2f}")
    for r in rows:
        lines.append(f"{r['pis']} Pis: controller CPU converged / bare exec, {r['controller_cpu_reps']} alternated pairs: "
                     f"median {r['controller_cpu_ratio']:.2f} (range {r['controller_cpu_ratio_min']:.2f}-"
                     f"{r['controller_cpu_ratio_max']:.2f}; CPU-s {r['controller_cpu_pairs']}); peak RSS full "
                     f"{r['peak_rss_full_mb']:.1f} MiB, converged {r['peak_rss_converged_mb']:.1f} MiB")
        lines.append(f"{r['pis']} Pis: converged / bare exec of the update's probe (the same Pi-side work, farm "
                     f"{r['busy_bare_farm_cpu_ms_per_pi']:g} ms/Pi): median {r['busy_controller_cpu_ratio']:.2f} "
                     f"(CPU-s {r['busy_controller_cpu_pairs']}); instructions converged / bare exec of true: "
                     f"{r['instructions_ratio']} ({r['converged_instructions']} / {r['bare_instructions']})")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        grow = b["pis"] / a["pis"]
        lines.append(
            f"growth {a['pis']} -> {b['pis']} Pis (x{grow:g}): converged time x{b['converged_s'] / a['converged_s']:.2f}, "
            f"bare exec x{b['bare_exec_s'] / a['bare_exec_s']:.2f}, full update x{b['full_update_s'] / a['full_update_s']:.2f}, "
            f"ssh/pi {a['ssh_commands_per_pi']:g} -> {b['ssh_commands_per_pi']:g}, builds {a['builds']} -> {b['builds']}, "
            f"peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}, controller CPU per Pi converged "
            f"{a['converged_controller_cpu_ms_per_pi']:g} -> {b['converged_controller_cpu_ms_per_pi']:g} ms "
            f"(bare exec {a['bare_controller_cpu_ms_per_pi']:g} -> {b['bare_controller_cpu_ms_per_pi']:g})")
    return "\n".join(lines)


def child_update(argv: list[str]) -> int:
    from pyinfra_ratos.fleet import api as fleet_api  # noqa: F401  first: gevent's patching
    from pyinfra_ratos.fleet.update import run_fleet

    inventory, window, mode, report = argv
    code, _ = run_fleet(inventory, max_in_flight=int(window), barriers=mode == "barriers", max_failed=1.0,
                        report_dir=report, out=sys.stdout)
    return code


def main() -> None:
    if sys.argv[1:2] == ["--child-update"]:
        sys.exit(child_update(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,250", help="farm sizes ('' for none)")
    parser.add_argument("--throughput", type=int, default=100, help="Pis of the barriers/window run (0: none)")
    parser.add_argument("--window", type=int, default=10, help="window (and batch) of the throughput run")
    parser.add_argument("--reps", type=int, default=5,
                        help="bare exec / converged update pairs, alternated, for the CPU ratio (median)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    compile_sources()
    rows = []
    flow = None
    # the machine is shared (other farms, other work): the load average is part of every figure
    load: dict[str, Any] = {"start": [round(x, 2) for x in os.getloadavg()]}
    if args.throughput:
        # overlayfs refuses ':' ',' and spaces in the state dir: a plain /tmp path
        with tempfile.TemporaryDirectory(prefix="ratos-bench-window-") as tmp:
            flow = throughput(args.throughput, args.window, Path(tmp))
        load["after_throughput"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(flow), file=sys.stderr, flush=True)
    for size in (int(s) for s in args.sizes.split(",") if s):
        with tempfile.TemporaryDirectory(prefix="ratos-bench-fleet-") as tmp:
            rows.append(measure(size, Path(tmp), args.reps))
        load[f"after_{size}"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if rows:
        print(table(rows))
    if flow:
        print(throughput_table(flow))
    print(f"load average (1, 5, 15 min): {load}")
    if args.json:
        args.json.write_text(json.dumps({"sizes": rows, "throughput": flow, "load_average": load}, indent=1) + "\n")


if __name__ == "__main__":
    main()
