"""``ratos-fleet``: the operator's command line, over pyinfra's own API and CLI.

A printer is converged when its Klipper runs the fleet's pinned commit (``klipper_commit``), every
board runs firmware built from that commit, and its configuration is as the update writes it.
Exit codes (:mod:`pyinfra_ratos.fleet.exit_codes`): 0 converged, 1 some printers failed, unreachable or
not run, 2 bad input, 3 changes pending or made (busy and held printers are pending unless
``--fail-on-busy``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyinfra_ratos.fleet import exit_codes
from pyinfra_ratos.firmware.converged import MEANING

EXIT_OK, EXIT_PRINTERS, EXIT_BAD_INPUT = exit_codes.CONVERGED, exit_codes.FAILED, exit_codes.BAD_INPUT
WIDTH = 120


def _error(exc: Exception | str, code: int = EXIT_BAD_INPUT) -> int:
    """Print an error for the operator and return its exit code. The text may quote inventory
    values or a Pi's output: control characters are stripped before they reach the terminal (the
    validators never quote a secret field's value)."""
    from pyinfra_ratos.data.hygiene import sanitise_text

    print(f"ratos-fleet: {sanitise_text(str(exc), keep_newlines=True)}", file=sys.stderr)
    return code


def _sim_command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A virtual-farm command: its errors are the user's (a scenario: exit 2) or the farm's (1).
    The farm's modules load only for these commands (25 ms a fleet run does not need)."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            from pyinfra_ratos.sim.farm import FarmError
            from pyinfra_ratos.sim.scenario import ScenarioError
            import kconfiglib  # noqa: F401 - the virtual Pis' Klipper tree needs it
        except ModuleNotFoundError as exc:
            return _error(f"the virtual farm needs the 'sim' extra ({exc.name} is missing): "
                          "pip install 'pyinfra-ratos[sim]'")

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

    return run_demo(main, keep=args.keep)


def _read_only_data(data: dict[str, Any]) -> dict[str, Any]:
    """A host's data as a read-only command validates it: ``klipper_source`` (a checkout on the
    controller that only builds read) is not required, nor checked."""
    from pyinfra_ratos.fleet.hostdata import FIRMWARE_KEYS

    if any(key in data for key in FIRMWARE_KEYS):
        return {**{k: v for k, v in data.items() if k != "klipper_source"}, "firmware_build": "pi"}
    return data


def _pin(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """The fleet's pinned commit and, when the controller's checkout can name it, its version."""
    from pyinfra_ratos.firmware.bundle import describe
    from pyinfra_ratos.firmware.settings import _is_checkout
    from pyinfra_ratos.data.rules import controller_path

    commit = data.get("klipper_commit")
    source = data.get("klipper_source")
    if not (isinstance(commit, str) and isinstance(source, str)):
        return (commit if isinstance(commit, str) else None), None
    try:
        return commit, (describe(controller_path(source), commit) if _is_checkout(controller_path(source)) else None)
    except Exception:  # noqa: BLE001 - a checkout that cannot name the commit: compare by commit alone
        return commit, None


def _status(args: argparse.Namespace) -> int:
    """Validate the inventory (no SSH on bad input), then one command per Pi: the audit and the
    config folder (``UpdateState``), judged as ``plan`` judges them."""
    from dataclasses import replace

    from pyinfra_ratos.fleet import api as fleet_api
    from pyinfra_ratos.run.config_status import judge_config, status_reads
    from pyinfra_ratos.firmware.catalog import load_catalog
    from pyinfra_ratos.facts.update_state import UpdateState
    from pyinfra_ratos.fleet.hostdata import InventoryError, validate_inventory
    from pyinfra_ratos.fleet.report_text import render_status, status_rows

    try:
        inventory = fleet_api.load_inventory(args.inventory, limit=args.limit)
        data = fleet_api.host_data(inventory)
        settings = validate_inventory({h: _read_only_data(d) for h, d in data.items()},
                                      fleet_api.override_data(inventory), load_catalog())
    except (fleet_api.InventoryLoadError, InventoryError) as exc:
        return _error(exc)
    pins = {}
    for host, host_data in data.items():
        key = (host_data.get("klipper_commit"), host_data.get("klipper_source"))
        pins[key] = pins.get(key) or _pin(host_data)
    state = fleet_api.make_state(inventory, parallel=args.parallel, connect_timeout=args.connect_timeout)
    reads = fleet_api.gather(state, UpdateState, per_host=lambda host: status_reads(host.name, data[host.name]))
    fleet_api.disconnect(state)
    audits = {host: replace(fact, value=(fact.value or {}).get("audit")) for host, fact in reads.items()}
    statuses = {host: status_rows(settings[host].boards, fact,
                                  *pins[(data[host].get("klipper_commit"), data[host].get("klipper_source"))],
                                  config=judge_config(host, data[host], reads[host].value if fact.ok else None))
                for host, fact in audits.items()}
    code = _status_code(statuses, args.fail_on_busy)
    shown = {f"{v or (c or '-')[:12]}" for c, v in pins.values()}
    if args.json:
        hosts = {host: {"status": fact.status, "error": fact.error, "seconds": round(fact.seconds, 3),
                        "summary": statuses[host], "facts": fact.value} for host, fact in audits.items()}
        print(json.dumps({"inventory": str(args.inventory), "converged": code == EXIT_OK,
                          "converged_means": MEANING, "pins": [list(k) for k in pins.values()],
                          "behind": [h for h, s in statuses.items() if s["reachable"] and not s["at_pin"]],
                          "config_pending": [h for h, s in statuses.items() if s["config"]["converged"] is False],
                          "not_converged": [h for h, s in statuses.items() if s["reachable"] and not s["converged"]],
                          "exit_code": code, "hosts": hosts}, indent=1))
    else:
        print(render_status(statuses, pin=", ".join(sorted(shown))), end="")
        print(f"exit code {code}")
    return code


def _status_code(statuses: dict[str, dict[str, Any]], fail_on_busy: bool) -> int:
    if any(not s["reachable"] or s["status"] == "failed" for s in statuses.values()):
        return exit_codes.FAILED
    behind = [s for s in statuses.values() if not s["converged"]]
    if fail_on_busy and any(s["busy"] for s in behind):
        return exit_codes.FAILED
    return exit_codes.CHANGES if behind else exit_codes.CONVERGED


def _fleet(args: argparse.Namespace, execute: bool) -> int:
    """``update`` (execute) or ``plan``: the update deploy over the fleet, then the report."""
    from pyinfra_ratos.fleet import api as fleet_api
    from pyinfra_ratos.fleet import interrupts
    from pyinfra_ratos.fleet import update as fleet_update
    from pyinfra_ratos.fleet.progress import Progress, confirm, live, log_handler
    from pyinfra_ratos.fleet.report_text import render_table

    report_dir = args.report if execute else None
    if execute and report_dir is None:
        report_dir = Path("ratos-reports") / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    as_json = getattr(args, "json", False)
    out = sys.stderr if as_json else sys.stdout
    logger = logging.getLogger("pyinfra")
    handler = log_handler(out, WIDTH, verbose=args.verbose > 0, diff=getattr(args, "diff", False))
    logger.addHandler(handler)
    # the handler shows nothing below INFO (diffs and -v lines are INFO): a lower level would only
    # build a record for each of pyinfra's debug lines (16 a printer) for the handler to drop
    logger.setLevel(logging.INFO)
    propagate, logger.propagate = logger.propagate, False
    progress = Progress(out, total=0) if execute else None
    try:
        with interrupts.graceful(), live(progress):
            code, report = fleet_update.run_fleet(
                args.inventory, limit=args.limit, execute=execute, attended_flash=args.attended_flash,
                max_in_flight=args.max_in_flight, max_failed=args.max_failed, report_dir=report_dir,
                parallel=args.parallel, out=out, fail_on_busy=args.fail_on_busy, progress=progress,
                confirm=lambda items: confirm(items, getattr(args, "yes", False)),
            )
    except (fleet_api.InventoryLoadError, fleet_update.InventoryError) as exc:
        return _error(exc)
    except KeyboardInterrupt:
        return _error("stopped at once: `ratos-fleet status INVENTORY` shows where each printer stands",
                      exit_codes.INTERRUPTED)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        if progress is not None:
            progress.finish()
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print(render_table(report, WIDTH), end="")
        if report_dir is not None:
            print(f"report: {Path(report_dir) / 'report.json'} and {Path(report_dir) / 'report.html'}")
    return code


def _update(args: argparse.Namespace) -> int:
    return _fleet(args, execute=True)


def _plan(args: argparse.Namespace) -> int:
    return _fleet(args, execute=False)


# --- arguments -------------------------------------------------------------------------------


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def percentage(text: str) -> float:
    """``--max-failed``: a percentage like pyinfra's ``--fail-percent`` (``20`` or ``20%``), as a
    share (0.2). The older share form (``0.2``: a number between 0 and 1 with a decimal point) is
    still read as 20%."""
    raw = text.strip().rstrip("%")
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage (e.g. 20 or 20%)") from None
    if not text.strip().endswith("%") and "." in raw and 0 < value < 1:
        return value  # the older form: a share
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage between 0 and 100")
    return value / 100


def _help(description: str) -> dict[str, Any]:
    if "converged" not in description:
        description += f"\n\n{MEANING[0].upper()}{MEANING[1:]}."
    import textwrap

    description = "\n\n".join(textwrap.fill(part, 100) for part in description.split("\n\n"))
    return {"description": description, "epilog": exit_codes.HELP,
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def _fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inventory", help="pyinfra inventory file")
    parser.add_argument("--limit", action="append", metavar="HOST|GROUP|GLOB", help="only these hosts (repeatable)")
    parser.add_argument("--max-in-flight", "--batch-size", dest="max_in_flight", type=_at_least(1), default=10,
                        metavar="N", help="printers worked on at once after the canary group, the next one starting as "
                        "soon as one finishes (default 10; --batch-size is its former name and means the same)")
    parser.add_argument("--max-failed", type=percentage, default=0.2, metavar="PERCENT",
                        help="start no further printer once more than this percentage of the finished printers "
                        "failed (checked as each one finishes, over at least the canaries plus the first window), "
                        "like pyinfra's --fail-percent (default 20; the older 0.2 form still means 20%%)")
    parser.add_argument("--parallel", type=_at_least(1), default=None,
                        help="SSH connections opened at once (default: pyinfra's, 20 per CPU)")
    parser.add_argument("--attended-flash", action="store_true",
                        help="someone watches: also flash boards never flashed unattended (plan: preview them)")
    parser.add_argument("--fail-on-busy", action="store_true",
                        help="busy (printing) and held printers count as failed (exit 1), not pending (exit 3)")
    _verbose(parser)


def _verbose(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=default,
                        help="more detail: pyinfra's info lines (each operation's reason to do nothing)")


def build_parser() -> argparse.ArgumentParser:
    from pyinfra_ratos import __version__ as version

    parser = argparse.ArgumentParser(prog="ratos-fleet", **_help(
        "Provision and update RatOS (Klipper) printers with pyinfra, one or a farm."))
    parser.add_argument("--version", action="version", version=f"ratos-fleet {version}")
    _verbose(parser, 0)
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("sim", help="the virtual RatOS farm (needs root)",
                              **_help("Start or stop a virtual RatOS farm (Linux namespaces, real sshd; needs root)."))
    sim_commands = sim.add_subparsers(dest="sim_command", required=True)
    up = sim_commands.add_parser("up", help="start a farm from a scenario file")
    up.add_argument("scenario", help="scenario TOML file")
    up.add_argument("--state", required=True, help="state directory of this farm")
    up.add_argument("--ssh-port", type=_at_least(1), default=22, help="port the Pis' sshd answer on (default 22)")
    up.set_defaults(func=_sim_up)
    down = sim_commands.add_parser("down", help="stop the farm of a state directory")
    down.add_argument("--state", required=True, help="state directory of this farm")
    down.set_defaults(func=_sim_down)

    update = commands.add_parser("update", help="update the fleet: Klipper, firmware, configuration", **_help(
        "Update every printer to the fleet's pin: the canary group first and alone, then a rolling window of "
        "--max-in-flight printers (the next one starts as soon as one finishes); a printer that is not "
        "positively idle is left as it is. Ctrl-C (or SIGTERM) starts no new printer, lets those in flight "
        "finish and writes the report (exit 130)."))
    _fleet_arguments(update)
    update.add_argument("--report", type=Path, default=None,
                        help="report directory (default ./ratos-reports/<UTC time>/)")
    update.add_argument("--yes", "-y", action="store_true",
                        help="with --attended-flash: do not ask for confirmation before boards enter DFU")
    update.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    update.set_defaults(func=_update, diff=False)
    plan = commands.add_parser("plan", help="what update would do per printer and board; changes nothing", **_help(
        "What `update` would do, per printer and board, in the future tense; nothing is changed."))
    _fleet_arguments(plan)
    plan.add_argument("--diff", action="store_true", help="unified diffs of every configuration file it would write")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_plan)

    demo = commands.add_parser("demo", help="run the main job on a built-in virtual farm (needs root)", **_help(
        "The main job on a built-in virtual print farm: status, plan, update, status (needs root)."))
    demo.add_argument("--keep", action="store_true", help="leave the farm running afterwards")
    demo.set_defaults(func=_demo)
    status = commands.add_parser(
        "status", help="read every printer (one SSH command each) against the pin and its configuration", **_help(
            "Read every printer (one SSH command each): Klipper and every board against the fleet's pin "
            "(klipper_commit), the configuration against what `update` would write (as `plan` decides it), "
            "activity, network. Changes nothing; klipper_source is not needed."))
    status.add_argument("inventory", help="pyinfra inventory file (group_data/ beside it is read too)")
    status.add_argument("--limit", action="append", metavar="HOST|GROUP|GLOB", help="only these hosts (repeatable)")
    status.add_argument("--json", action="store_true", help="print the facts as JSON instead of the table")
    status.add_argument("--parallel", type=_at_least(1), default=None, help="Pis read at once (default: pyinfra's)")
    status.add_argument("--connect-timeout", type=_at_least(1), default=10,
                        help="seconds before a Pi counts as unreachable")
    status.add_argument("--fail-on-busy", action="store_true", help="a busy printer behind the pin exits 1, not 3")
    status.set_defaults(func=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pyinfra_ratos.firmware.catalog import CatalogError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CatalogError as exc:
        return _error(exc)
    except KeyboardInterrupt:
        return _error("interrupted", exit_codes.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
