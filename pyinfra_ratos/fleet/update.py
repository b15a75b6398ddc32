"""``ratos-fleet update`` and ``ratos-fleet plan``: the update deploy over a fleet, with the report.

The inventory is validated first (bad input: exit 2, no SSH command). Then the hosts of the
``canary`` group (when there is one) run first and alone, and the others follow in a rolling window
of ``max_in_flight`` printers: the next one starts as soon as one finishes
(:mod:`pyinfra_ratos.fleet.window`, which also keeps the old batches, each waiting for its slowest
printer, as ``barriers``). Each printer is one pyinfra run of
:func:`pyinfra_ratos.deploys.update.update_printer` on a State of its own, through pyinfra's own API
(connect, add_deploy, run_ops), in a greenlet. The share of failed printers (``max_failed``, a share;
the CLI takes a percentage) is evaluated as each one finishes: above it no printer starts any more
and every printer not started is reported ``not-run``. Before each printer starts the run asks
:func:`pyinfra_ratos.fleet.interrupts.stop_requested` (Ctrl-C, SIGTERM): then it starts no new printer,
lets those in flight finish, reports the rest ``not-run`` and exits 130. ``plan`` makes the same
decisions and runs nothing.
"""

from __future__ import annotations

# first: pyinfra's CLI package patches the standard library for gevent (see fleet_api)
from pyinfra_ratos.fleet import api as fleet_api

import copy
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from multiprocessing import cpu_count
from pathlib import Path
from typing import Any

from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.api.state import MAX_PARALLEL, State
from gevent.lock import Semaphore

from pyinfra_ratos.fleet import report as reports
from pyinfra_ratos.run import greenlet_state, prefetch, pyinfra_costs, results
from pyinfra_ratos.fleet import interrupts, window
from pyinfra_ratos.firmware.bundle import describe
from pyinfra_ratos.firmware import catalog
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.firmware.agent import RESULT_PREFIX, SUMMARY_PREFIX
from pyinfra_ratos.fleet.hostdata import InventoryError, validate_inventory

CANARY = "canary"
STOPPED_AT_ONCE = ("stopped at once by a second signal while in flight: the printer agent on the Pi finishes or "
                   "rolls back on its own; see where it stands with ratos-fleet status")


def make_batches(hosts: Sequence[str], canary: Sequence[str], size: int) -> list[list[str]]:
    """Canary hosts first (one batch), then the rest in inventory order, ``size`` at a time (the
    waves of a run with ``barriers``, see :func:`pyinfra_ratos.fleet.window.waves`)."""
    return window.waves(hosts, canary, size, barriers=True)


def _agent_lines(meta: Any, prefix: str) -> list[dict[str, Any]]:
    if meta is None or not meta.is_complete():
        return []
    found = []
    for line in meta.stdout_lines:
        if prefix in line:
            try:
                found.append(json.loads(line.split(prefix, 1)[1]))
            except ValueError:
                continue
    return found


def _agent_records(meta: Any) -> list[dict[str, Any]]:
    return _agent_lines(meta, RESULT_PREFIX)


def _agent_summary(meta: Any) -> dict[str, Any] | None:
    """The printer agent's verdict on the whole printer (``RATOS-TXN``), None when it did not run."""
    found = _agent_lines(meta, SUMMARY_PREFIX)
    return found[-1] if found else None


def _errors(state: State, host: Any) -> list[str]:
    found = []
    for op_hash, data in state.ops[host].items():
        meta = data.operation_meta
        if meta.is_complete() and meta.did_error():
            # one operation hash may carry the names other hosts gave it: name it only when unique
            names = state.op_meta[op_hash].names if op_hash in state.op_meta else set()
            detail = [line for line in meta.stderr_lines if line.strip()]
            text = detail[-1] if detail else "failed"
            found.append(f"{next(iter(names))}: {text}" if len(names) == 1 else text)
    return found


def _changed(state: State, host: Any, ignore: Sequence[Any] = ()) -> bool:
    """Whether an operation changed the Pi (``ignore``: metas of controller-side ones, e.g. backup)."""
    return any(d.operation_meta.is_complete() and d.operation_meta.did_change()
               for d in state.ops[host].values() if d.operation_meta not in ignore)


def _op_action(meta: Any, done: str, executed: bool) -> str:
    if meta is None:
        return "skipped"
    if not executed:
        return done if meta.will_change else "unchanged"
    if not meta.is_complete():
        return "skipped"
    if meta.did_error():
        return "failed"
    return done if meta.did_change() else "unchanged"


def _held(reason: str, boards: dict[str, Any]) -> bool:
    """Whether a printer left alone was held back by a board never flashed unattended (the gate's
    ``klipper_move_refused``), not by its activity."""
    return reason.startswith("not updating Klipper") or any(b.get("action") == "refused" for b in boards.values())


def _port_of(board_id: Any, attached: dict[str, Any]) -> str | None:
    """The USB port of the one attached device that is this board (by id, else the only candidate)."""
    exact = [port for port, info in attached.items() if isinstance(info, dict) and info.get("board_id") == board_id]
    if len(exact) == 1:
        return str(exact[0])
    maybe = [port for port, info in attached.items()
             if isinstance(info, dict) and board_id in (info.get("board_candidates") or [])]
    return str(maybe[0]) if len(maybe) == 1 else None


def printer_entry(state: State | None, host_name: str, executed: bool) -> dict[str, Any]:
    """The report fields of one host from what its deploy noted and what its operations did.

    Statuses (one meaning each, :mod:`pyinfra_ratos.fleet.report`): ``busy`` when the gate (here or the
    printer agent on the Pi) found it not idle, ``held`` when a board waits for ``--attended-flash``,
    ``failed`` for a failed, rolled-back or needs-attention transaction (its ``todo`` kept)."""
    noted = results.RUN.get(host_name, {"boards": {}, "ops": {}})
    host = state.inventory.get_host(host_name) if state else None
    boards = dict(noted.get("boards", {}))
    for role, meta in noted.get("ops", {}).items():
        if role.startswith("flash:") and executed:
            for record in _agent_records(meta):
                base = boards.get(record.get("mcu_name"), {})
                boards[record.get("mcu_name")] = {
                    **base, **{k: record[k] for k in ("after_version", "duration_s", "verified", "reason", "rolled_back")
                               if k in record},
                    "action": record["action"] if record["action"] in results.ACTIONS else "failed",
                    "method": record.get("backend") or base.get("method"),
                    "read_back": record.get("read_back"),
                }
    errors = _errors(state, host) if (state and executed and host) else []
    klipper = dict(noted.get("klipper") or {})
    summary = _agent_summary(noted.get("ops", {}).get("flash:transaction")) if executed else None
    if klipper and executed and klipper.get("action") == "updated":
        if summary is None or summary["outcome"] != "done":
            # not moved (the agent did not run, found the printer busy, failed or rolled back)
            why = (summary or {}).get("reason") or (errors[0] if errors else "not run")
            klipper.update(action="failed" if summary is None or summary["outcome"] != "pending" else "skipped",
                           after=klipper.get("before"), reason=why)
    target = klipper.get("after")
    for name, board in boards.items():  # plan: a board to flash names its target, not "-"
        if board.get("action") == "planned" and not board.get("after_version") and target:
            boards[name] = {**board, "after_version": target}
        if not boards[name].get("port"):  # a board left alone still has a USB port the audit saw
            boards[name] = {**boards[name], "port": _port_of(boards[name].get("board"), noted.get("attached") or {})}
    config = {"action": _op_action(noted.get("ops", {}).get("config"), "written", executed)}
    todo = ""
    if noted.get("skipped"):
        reason = noted["skipped"]
        status = "held" if _held(reason, boards) else "busy"
        config = {"action": "skipped", "reason": reason}
    elif summary is not None and summary.get("outcome") == "pending":
        # the printer was found busy on the Pi right before the first disruptive step: not done
        status, reason = "busy", summary.get("reason") or "printer busy"
    elif summary is not None and summary.get("outcome") in ("failed", "rolled-back", "attention"):
        words = {"failed": "failed, left as it was", "rolled-back": "rolled back to the previous Klipper and "
                 "firmware", "attention": "NEEDS ATTENTION"}[summary["outcome"]]
        status, todo = "failed", str(summary.get("todo") or "")
        reason = f"{words}: {summary.get('reason')}" + (f"; to do: {todo}" if todo else "")
    elif any(b.get("action") == "failed" for b in boards.values()):
        # the flash agent's own verdict says more than the failed command's last line
        status, reason = "failed", next(b["reason"] for b in boards.values() if b.get("action") == "failed")
    elif errors:
        status, reason = "failed", errors[0]
    elif noted.get("unprepared"):  # plan: a board that cannot be prepared fails the printer, it is not held
        status, reason = "failed", str(noted["unprepared"])
    elif any(b.get("action") == "refused" for b in boards.values()):
        status = "held"
        reason = next(b["reason"] for b in boards.values() if b.get("action") == "refused")
    elif executed:
        controller_side = [noted.get("ops", {}).get("backup")]
        status, reason = ("changed" if host and _changed(state, host, controller_side) else "converged"), ""
    else:
        pending = klipper.get("action") == "updated" or config["action"] == "written" or any(
            b.get("action") == "planned" for b in boards.values())
        status, reason = ("changed" if pending else "converged"), ""
    return {"status": status, "reason": reason, "todo": todo, "klipper": klipper or None, "config": config,
            "boards": list(boards.values()), "klippy_state": str(noted.get("klippy_state") or "")}


DEFAULT_WINDOW = 10  # the batch size of the runner before the window


def run_fleet(
    inventory_path: str | Path,
    *,
    limit: Sequence[str] | None = None,
    execute: bool = True,
    attended_flash: bool = False,
    max_in_flight: int | None = None,
    batch_size: int | None = None,
    barriers: bool = False,
    max_failed: float = 0.2,
    report_dir: str | Path | None = None,
    parallel: int | None = None,
    out: Any = None,
    fail_on_busy: bool = False,
    progress: Any = None,
    confirm: Callable[[list[str]], bool] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Update (``execute``) or plan the fleet; returns (exit code, report).

    + max_in_flight: printers worked on at once after the canary group (``batch_size``: the same,
      its former name) [10]
    + barriers: the old batches (each waits for its slowest printer) instead of the rolling window
    + parallel: SSH connections opened at once [pyinfra's default: 20 per CPU]
    + progress: a :class:`pyinfra_ratos.fleet.progress.Progress` (a line per printer per phase, the window)
    + confirm: asked with the boards an attended flash is about to put in DFU (False: stop)
    + fail_on_busy: busy and held printers count as failed (exit 1) rather than pending (3)
    + should_stop: asked before each printer starts [:func:`pyinfra_ratos.fleet.interrupts.stop_requested`]
    """
    with catalog.pinned():  # the boards as checked with the inventory, for every printer of the run
        return _run_fleet(inventory_path, limit=limit, execute=execute, attended_flash=attended_flash,
                          max_in_flight=max_in_flight, batch_size=batch_size, barriers=barriers,
                          max_failed=max_failed, report_dir=report_dir, parallel=parallel, out=out,
                          fail_on_busy=fail_on_busy, progress=progress, confirm=confirm, should_stop=should_stop)


def _run_fleet(
    inventory_path: str | Path, *, limit: Sequence[str] | None, execute: bool, attended_flash: bool,
    max_in_flight: int | None, batch_size: int | None, barriers: bool, max_failed: float,
    report_dir: str | Path | None, parallel: int | None, out: Any, fail_on_busy: bool, progress: Any,
    confirm: Callable[[list[str]], bool] | None, should_stop: Callable[[], bool] | None,
) -> tuple[int, dict[str, Any]]:
    window_size = max(1, max_in_flight or batch_size or DEFAULT_WINDOW)
    greenlet_state.install()  # one State per printer, several at once
    pyinfra_costs.install()
    if should_stop is None:
        should_stop = _stop_flag
    override = {"attended_flash": True} if attended_flash else {}
    inventory = fleet_api.load_inventory(inventory_path, limit=limit, override_data=override)
    validate_inventory(fleet_api.host_data(inventory), fleet_api.override_data(inventory), load_catalog(),
                       require=("firmware", "printer", "provision"))
    pyinfra_costs.freeze_inventory_data(inventory)  # loaded once, read per operation of every printer
    data = fleet_api.host_data(inventory)
    commits = {d.get("klipper_commit") for d in data.values()}
    pinned = commits.pop() if len(commits) == 1 else None
    source = next((d.get("klipper_source") for d in data.values() if d.get("klipper_source")), None)
    pinned_version = describe(source, pinned) if pinned and source else None
    report = reports.new_report("update" if execute else "plan", Path(inventory_path).resolve(), pinned, pinned_version)
    names = [host.name for host in inventory]
    canary = [host.name for host in inventory.groups.get(CANARY, [])]
    plan = window.waves(names, canary, window_size, barriers)
    has_canary = bool(canary) and bool(plan) and plan[0][0] in canary
    groups = _all_groups(inventory)
    if progress is not None:
        progress.total, progress.window = len(names), window_size

    # SSH connections opened (and first facts read) at once: pyinfra's own bound for one State
    # (``parallel``, else 20 per CPU); the window bounds the printers in flight, not the handshakes
    connecting = Semaphore(parallel or min(cpu_count() * 20, MAX_PARALLEL))
    printer = _Printer(inventory, groups, execute, connecting, progress, attended_flash, confirm)
    entries: dict[str, dict[str, Any]] = {}  # host -> its report entry, as each one finishes

    def run_one(name: str, wave: int) -> bool:
        entry = printer.run(name)
        if name in entries:
            return False  # abandoned by a second signal, already reported
        entries[name] = reports.add_printer(report, name, entry.pop("status"), groups=groups.get(name, []),
                                            batch=wave + 1, **entry)
        return entries[name]["status"] in ("failed", "unreachable")

    def started(slot: window.Slot, run: window.WindowRun) -> None:
        if progress is not None:
            progress.in_flight = run.in_flight

    def finished(slot: window.Slot, run: window.WindowRun) -> None:
        if slot.error is not None and slot.host not in entries:
            # a bug, not the printer's own failure: its entry says so
            entries[slot.host] = reports.add_printer(
                report, slot.host, "failed", groups=groups.get(slot.host, []), batch=slot.wave + 1,
                reason=f"{type(slot.error).__name__}: {slot.error}", duration_s=(slot.end_s or 0) - slot.start_s)
        entry = entries[slot.host]
        if progress is not None:
            progress.in_flight = run.in_flight
            progress.batch_done([entry])
        if out is not None and not barriers:
            print(f"-- [{run.done}/{len(names)}] {slot.host}: {entry['status']} in {entry['duration_s']:.1f} s "
                  f"({len(names) - run.done - len(run.not_started)} left, {run.in_flight}/{window_size} in flight, "
                  f"{run.failed} failed so far)", file=out, flush=True)

    def wave_end(index: int, run: window.WindowRun) -> None:
        slots = [s for s in run.slots.values() if s.wave == index]
        if out is None or not slots:
            return
        seconds = max((s.end_s or 0 for s in slots), default=0) - min((s.start_s for s in slots), default=0)
        kind = (f"batch {index + 1}/{len(plan)}" if barriers or (index == 0 and has_canary)
                else f"window of {window_size}")
        print(_batch_line(report, index, kind, has_canary, len(slots), seconds, execute), file=out, flush=True)

    run = window.run_window(plan, run_one, max_in_flight=window_size, max_failed=max_failed if execute else 1.0,
                            canary=len(plan[0]) if has_canary else 0, should_stop=should_stop,
                            on_start=started, on_finish=finished, on_wave_end=wave_end)
    kind = (run.stopped or {}).get("kind")
    for name in run.abandoned:
        entries[name] = reports.add_printer(report, name, "failed", groups=groups.get(name, []),
                                            batch=run.slots[name].wave + 1, reason=STOPPED_AT_ONCE)
    why = ("not run: the failure threshold stopped the update" if kind == "threshold"
           else "not started: the run was interrupted")
    for name, wave in run.not_started:
        reports.add_printer(report, name, "not-run", groups=groups.get(name, []), batch=wave + 1, reason=why)
    order = {name: index for index, name in enumerate(names)}
    report["printers"].sort(key=lambda entry: order.get(entry["host"], len(order)))
    report["window"] = {
        "max_in_flight": window_size, "barriers": barriers, "canary": plan[0] if has_canary else [],
        "peak_in_flight": run.peak_in_flight,
        "printers": {s.host: {"batch": s.wave + 1, "start_s": round(s.start_s, 3),
                              "end_s": None if s.end_s is None else round(s.end_s, 3), "in_flight": s.in_flight}
                     for s in run.slots.values()},
    }
    stopped = interrupted = None
    if kind == "threshold":
        stopped = {"after_batch": run.stopped["after_batch"] + 1, "after_printer": run.stopped["after_printer"],
                   "reason": run.stopped["reason"], "not_started": len(run.not_started)}
    if kind == "at-once":
        interrupts.request_stop("SIGINT")
    signal = interrupts.stop_requested()
    if kind in ("interrupted", "at-once") or signal:
        # a signal while the last printers were in flight still stops the run: exit 130
        last = run.stopped["after_batch"] + 1 if kind in ("interrupted", "at-once") else len(plan)
        interrupted = {"signal": signal or "SIGINT", "after_batch": last, "in_flight": len(run.abandoned),
                       "not_started": len(run.not_started)}
    reports.finish(report, stopped_early=stopped, fail_on_busy=fail_on_busy, interrupted=interrupted)
    if report_dir is not None:
        reports.write_report(report, report_dir)
    return report["exit_code"], report


def _stop_flag() -> bool:
    return interrupts.stop_requested() is not None


def _all_groups(inventory: Any) -> dict[str, list[str]]:
    """Each host's groups, sorted, from one pass over the inventory's groups."""
    found: dict[str, list[str]] = {}
    for group, members in sorted(inventory.groups.items()):
        for host in members:
            found.setdefault(host.name, []).append(group)
    return found


class _Printer:
    """One printer as one pyinfra run (connect, facts, add_deploy, run_ops) on its own State."""

    def __init__(self, inventory: Any, groups: dict[str, list[str]], execute: bool, connecting: Semaphore,
                 progress: Any, attended_flash: bool, confirm: Callable[[list[str]], bool] | None) -> None:
        self.inventory, self.groups, self.execute, self.connecting = inventory, groups, execute, connecting
        self.progress, self.attended_flash, self.confirm = progress, attended_flash, confirm
        # one printer plans at a time: planning is controller CPU (no greenlet switch is lost) and
        # the firmware builder then sees the artifact an earlier printer built instead of building it again
        self.planning = Semaphore(1)
        self.fleet_run = results.FleetRun()  # twins seen across the printers' States
        # the SSH keys loaded once for the fleet, as pyinfra's one State would (its own cache is
        # per State: each printer read and parsed its key file again)
        self.private_keys: dict[str, Any] = {}

    def run(self, name: str) -> dict[str, Any]:
        """The report fields of the printer's entry (``status`` included)."""
        started = time.monotonic()
        results.RUN.pop(name, None)
        state = fleet_api.make_state(_printer_inventory(self.inventory, name, self.groups.get(name, [])))
        state.fleet_run = self.fleet_run  # type: ignore[attr-defined]
        state.private_keys = self.private_keys
        if self.progress is not None:
            state.add_callback_handler(self.progress)
        not_run: dict[str, str] = {}
        unreachable: dict[str, str] = {}
        try:
            with self.connecting:  # its facts are read as soon as it is connected
                unreachable = fleet_api.connect(state, then=_prefetcher(state))
            with self.planning:
                # one host pyinfra cannot plan (e.g. `_sudo: True` in its data) fails with pyinfra's message
                for host in state.inventory.get_active_hosts():
                    try:
                        add_deploy(state, _update_deploy(), host=host)
                    except Exception as error:  # noqa: BLE001 - any error planning one host is that host's
                        not_run[host.name] = _planning_error(error)
                        state.active_hosts.discard(host)
                        state.failed_hosts.add(host)
                go = self.execute and state.active_hosts and _attended_ok(state, self.attended_flash, self.progress,
                                                                          self.confirm)
            if go:
                run_ops(state)
            elif self.execute and state.active_hosts:
                interrupts.request_stop("declined")
                not_run.update({h.name: "not started: the attended flash was not confirmed" for h in state.active_hosts})
        except PyinfraError as error:
            # "No hosts remaining!" once the host failed: its operations say why; any other stop
            # leaves it without a verdict: it failed with it
            if str(error) != "No hosts remaining!":
                not_run.update({host.name: f"pyinfra stopped the run: {error}" for host in state.active_hosts})
        finally:
            prefetch.discard(name)
            fleet_api.disconnect(state)
        seconds = time.monotonic() - started
        try:
            if name in unreachable:
                return {"status": "unreachable", "reason": f"cannot connect: {unreachable[name]}",
                        "duration_s": seconds}
            if name in not_run:
                status = "not-run" if not_run[name].startswith("not started") else "failed"
                return {"status": status, "reason": not_run[name], "duration_s": seconds}
            entry = printer_entry(state, name, self.execute)
            return {"status": entry["status"], "reason": entry["reason"], "todo": entry["todo"],
                    "duration_s": seconds, "klippy_state": entry["klippy_state"], "klipper": entry["klipper"],
                    "config": results.with_backup_notes(name, entry["config"]), "boards": entry["boards"]}
        finally:
            _release(state, name)


def _release(state: State, name: str) -> None:
    """Forget a finished printer's run once its report entry is made: the fleet inventory's Host
    would otherwise keep its State (``host.state``, the connector's) alive to the end of the run,
    with its operations, their commands and output, and the notes its deploy made."""
    results.RUN.pop(name, None)
    for host in state.inventory:
        for attribute in ("state", "connector"):
            host.__dict__.pop(attribute, None)
        host.op_hash_order = []


def _printer_inventory(inventory: Any, name: str, groups: Sequence[str]) -> Any:
    """A view of the fleet's inventory holding one host (in ``groups``), for that printer's own
    State: its data and groups as loaded once for the fleet (loading the file per printer would
    cost the controller the whole inventory's Python per printer)."""
    host = inventory.get_host(name)
    view = copy.copy(inventory)
    view.hosts = {name: host}
    view.groups = defaultdict(list, {group: [host] for group in groups})
    view.state = None
    return view


def _batch_line(report: dict[str, Any], index: int, kind: str, canary: bool, size: int, seconds: float,
                execute: bool) -> str:
    """``-- batch 1/3 (canary): ...`` (numbered as the table and the stop message number it) or
    ``-- window of 10: ...`` once the window's printers are all done."""
    counts = reports.summarise(p for p in report["printers"] if p["batch"] == index + 1)
    kind += " (canary)" if index == 0 and canary else ""
    words = [f"{counts['changed']} {'to update' if not execute else 'updated'}", f"{counts['converged']} up to date"]
    words += [f"{counts[key]} {key.replace('_', ' ')}" for key in ("busy", "held", "skipped", "failed", "not_run")
              if counts[key]]
    return f"-- {kind}: {size} printer{'s' if size != 1 else ''} in {seconds:.1f} s: {', '.join(words)}"


def _attended_ok(state: State, attended_flash: bool, progress: Any, confirm: Callable[[list[str]], bool] | None) -> bool:
    """With ``--attended-flash``: name every board about to enter DFU that is never flashed
    unattended (and again when its printer's transaction starts), and ask ``confirm``."""
    if not attended_flash:
        return True
    from pyinfra_ratos.fleet.progress import held_boards

    catalog = load_catalog()
    found = {host.name: held_boards(results.RUN.get(host.name, {}), catalog) for host in state.active_hosts}
    found = {name: boards for name, boards in found.items() if boards}
    if progress is not None:
        progress.attended.update(found)
    items = [f"{name}: {board}" for name, boards in sorted(found.items()) for board in boards]
    return confirm(items) if (confirm is not None and items) else True


def _planning_error(error: BaseException) -> str:
    """pyinfra's own message for an error it raised, the type as well for any other."""
    text = str(error) if isinstance(error, PyinfraError) else f"{type(error).__name__}: {error}"
    return f"pyinfra could not plan this host: {text}"


def _prefetcher(state: State) -> Callable[[Any], None]:
    """Reads the facts the deploy will read on a host, for ``connect`` to call on each connected
    host: ``add_deploy`` plans host after host, so its own reads would be round trips made in turn."""
    from pyinfra.api.facts import get_fact
    from pyinfra.context import ctx_host, ctx_state

    from pyinfra_ratos.deploys.update import update_reads

    def one(host: Any) -> None:
        with ctx_state.use(state), ctx_host.use(host):
            reads = update_reads()  # pure Python: no other greenlet runs meanwhile
        prefetch.put_reads(host.name, reads)
        for fact, kwargs in reads:
            try:
                value = get_fact(state, host, fact, kwargs=kwargs)
            except Exception:  # noqa: BLE001 - the deploy reads it again and fails the host as pyinfra does
                return
            prefetch.put(host.name, fact, kwargs, value)
            try:  # the report shows Klippy's state (a printer in MCU error is not invisible)
                results.note(host.name, klippy_state=str(value["audit"]["activity"].get("klippy_state") or ""),
                             attached=dict(value["audit"].get("boards") or {}))
            except (KeyError, TypeError, AttributeError):
                pass

    return one


def _update_deploy() -> Any:
    from pyinfra_ratos.deploys.update import update_printer

    return update_printer


__all__ = ["DEFAULT_WINDOW", "InventoryError", "make_batches", "printer_entry", "run_fleet"]
