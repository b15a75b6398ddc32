"""``ratos-fleet``: the operator's command line, over pyinfra's own API and CLI.

Exit codes: 0 all converged, 1 some printers failed or were skipped, 2 bad input.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from collections.abc import Callable, Sequence

EXIT_OK, EXIT_PRINTERS, EXIT_BAD_INPUT = 0, 1, 2


def _error(exc: Exception, code: int = EXIT_BAD_INPUT) -> int:
    """Print an error for the operator and return its exit code. The text may quote inventory
    values or a Pi's output: control characters are stripped before they reach the terminal (the
    validators never quote a secret field's value)."""
    from pyinfra_ratos.hygiene import sanitise_text

    print(f"ratos-fleet: {sanitise_text(str(exc), keep_newlines=True)}", file=sys.stderr)
    return code


def _sim_command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A virtual-farm command: its errors are the user's (a scenario: exit 2) or the farm's (1).
    The farm's modules load only for these commands (25 ms a fleet run does not need)."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from pyinfra_ratos.sim.farm import FarmError
        from pyinfra_ratos.sim.scenario import ScenarioError

        try:
            return func(args)
        except ScenarioError as exc:
            return _error(exc)
        except FarmError as exc:
            return _error(exc, EXIT_PRINTERS)

    return run


@_sim_command
def _sim_up(args: argparse.Namespace) -> int:
    from pyinfra_ratos.sim import farm

    info = farm.up(args.scenario, args.state, ssh_port=args.ssh_port)
    print(f"farm up: {len(info['pis'])} Pis in {info['seconds']} s; inventory: {args.state}/inventory.py")
    for pi in info["pis"]:
        print(f"  {pi['name']:<20} {pi['address']}:{info['ssh_port']}  {pi['network']}")
    return EXIT_OK


@_sim_command
def _sim_down(args: argparse.Namespace) -> int:
    from pyinfra_ratos.sim import farm

    stopped = farm.down(args.state)
    print(f"farm down: stopped the daemon ({stopped['daemon']}) and {stopped['pis']} Pis")
    return EXIT_OK


@_sim_command
def _demo(args: argparse.Namespace) -> int:
    from pyinfra_ratos.sim.demo import run_demo

    return run_demo(keep=args.keep)


def _status(args: argparse.Namespace) -> int:
    """Validate the inventory (no SSH on bad input), then one FleetAudit command per Pi."""
    from pyinfra_ratos import fleet_api  # first: pyinfra_cli patches the stdlib for gevent on import
    from pyinfra_ratos.catalog import load_catalog
    from pyinfra_ratos.facts.audit import FleetAudit
    from pyinfra_ratos.hostdata import InventoryError, validate_inventory
    from pyinfra_ratos.report import render_status, status_rows

    try:
        inventory = fleet_api.load_inventory(args.inventory, limit=args.limit)
        settings = validate_inventory(fleet_api.host_data(inventory), fleet_api.override_data(inventory),
                                      load_catalog())
    except (fleet_api.InventoryLoadError, InventoryError) as exc:
        return _error(exc)
    state = fleet_api.make_state(inventory, parallel=args.parallel, connect_timeout=args.connect_timeout)
    audits = fleet_api.gather(state, FleetAudit)
    fleet_api.disconnect(state)
    statuses = {host: status_rows(settings[host].boards, fact) for host, fact in audits.items()}
    good = all(status["reachable"] and status["converged"] for status in statuses.values())
    if args.json:
        hosts = {host: {"status": fact.status, "error": fact.error, "seconds": round(fact.seconds, 3),
                        "summary": statuses[host], "facts": fact.value} for host, fact in audits.items()}
        print(json.dumps({"inventory": str(args.inventory), "converged": good, "hosts": hosts}, indent=1))
    else:
        print(render_status(statuses), end="")
    return EXIT_OK if good else EXIT_PRINTERS


def _fleet(args: argparse.Namespace, execute: bool) -> int:
    """``update`` (execute) or ``plan``: the update deploy over the fleet, then the report."""
    from pyinfra_ratos import fleet_api, fleet_update  # fleet_api first: gevent's patching
    from pyinfra_ratos.report import render_table

    report_dir = args.report if execute else None
    if execute and report_dir is None:
        report_dir = Path("ratos-reports") / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        code, report = fleet_update.run_fleet(
            args.inventory, limit=args.limit, execute=execute, attended_flash=getattr(args, "attended_flash", False),
            max_in_flight=args.max_in_flight, max_failed=args.max_failed, report_dir=report_dir,
            parallel=args.parallel, out=sys.stdout,
        )
    except (fleet_api.InventoryLoadError, fleet_update.InventoryError) as exc:
        return _error(exc)
    print(render_table(report), end="")
    if report_dir is not None:
        print(f"report: {Path(report_dir) / 'report.json'} and {Path(report_dir) / 'report.html'}")
    return code


def _update(args: argparse.Namespace) -> int:
    return _fleet(args, execute=True)


def _plan(args: argparse.Namespace) -> int:
    return _fleet(args, execute=False)


def _fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inventory", help="pyinfra inventory file")
    parser.add_argument("--limit", action="append", help="host, group or glob (repeatable)")
    parser.add_argument("--max-in-flight", "--batch-size", dest="max_in_flight", type=_window_size, default=10,
                        metavar="N", help="printers worked on at once after the canary group, the next starting as "
                        "soon as one finishes (default 10; --batch-size is its former name)")
    parser.add_argument("--max-failed", type=float, default=0.2,
                        help="stop when more than this share of the printers so far failed (default 0.2)")
    parser.add_argument("--parallel", type=int, default=None, help="hosts worked on at once within a batch")


def _window_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of printers, 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ratos-fleet", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("sim", help="the virtual RatOS farm (needs root)")
    sim_commands = sim.add_subparsers(dest="sim_command", required=True)
    up = sim_commands.add_parser("up", help="start a farm from a scenario file")
    up.add_argument("scenario", help="scenario TOML file")
    up.add_argument("--state", required=True, help="state directory of this farm")
    up.add_argument("--ssh-port", type=int, default=22, help="port the Pis' sshd answer on (default 22)")
    up.set_defaults(func=_sim_up)
    down = sim_commands.add_parser("down", help="stop the farm of a state directory")
    down.add_argument("--state", required=True, help="state directory of this farm")
    down.set_defaults(func=_sim_down)

    update = commands.add_parser("update", help="update the fleet: Klipper, firmware, configuration")
    _fleet_arguments(update)
    update.add_argument("--report", type=Path, default=None,
                        help="report directory (default ./ratos-reports/<UTC time>/)")
    update.add_argument("--attended-flash", action="store_true",
                        help="someone watches: also flash boards never flashed unattended (data attended_flash)")
    update.set_defaults(func=_update)
    plan = commands.add_parser("plan", help="what update would do per printer and board; changes nothing")
    _fleet_arguments(plan)
    plan.set_defaults(func=_plan)

    demo = commands.add_parser("demo", help="run the main job on a built-in virtual farm (needs root)")
    demo.add_argument("--keep", action="store_true", help="leave the farm running afterwards")
    demo.set_defaults(func=_demo)
    status = commands.add_parser("status", help="read every printer (one SSH command each): boards, firmware, activity")
    status.add_argument("inventory", help="pyinfra inventory file (group_data/ beside it is read too)")
    status.add_argument("--limit", action="append", metavar="HOST|GROUP|GLOB", help="only these hosts (repeatable)")
    status.add_argument("--json", action="store_true", help="print the facts as JSON instead of the table")
    status.add_argument("--parallel", type=int, default=None, help="Pis read at once (default: pyinfra's choice)")
    status.add_argument("--connect-timeout", type=int, default=10, help="seconds before a Pi counts as unreachable")
    status.set_defaults(func=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pyinfra_ratos.catalog import CatalogError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CatalogError as exc:
        return _error(exc)


if __name__ == "__main__":
    sys.exit(main())
