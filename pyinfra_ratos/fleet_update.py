"""``ratos-fleet update`` and ``ratos-fleet plan``: the update deploy over a fleet, with the report.

The inventory is validated first (bad input: exit 2, no SSH command). Then the hosts of the
``canary`` group (when there is one) run first and alone, and the others follow in a rolling window
of ``max_in_flight`` printers: the next one starts as soon as one finishes (see
:mod:`pyinfra_ratos.window`, which also keeps the old batches, each waiting for its slowest
printer, as ``barriers``). Each printer is one pyinfra run of
:func:`pyinfra_ratos.deploys.update.update_printer` on a State of its own, through pyinfra's own API
(connect, add_deploy, run_ops), in a greenlet. The share of failed printers is evaluated as each one
finishes: above ``max_failed`` no printer starts any more and every printer not started is
reported ``not-run``. ``plan`` makes the same decisions and runs nothing.
"""

from __future__ import annotations

# first: pyinfra's CLI package patches the standard library for gevent (see fleet_api)
from pyinfra_ratos import fleet_api  # isort: skip

import copy
import json
import time
from multiprocessing import cpu_count
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.api.state import MAX_PARALLEL, State
from gevent.lock import Semaphore

from pyinfra_ratos import report as reports
from pyinfra_ratos import greenlet_state, prefetch, results, window
from pyinfra_ratos.bundle import describe
from pyinfra_ratos.catalog import load_catalog
from pyinfra_ratos.flash_agent import RESULT_PREFIX, SUMMARY_PREFIX
from pyinfra_ratos.hostdata import InventoryError, validate_inventory

CANARY = "canary"


def make_batches(hosts: Sequence[str], canary: Sequence[str], size: int) -> list[list[str]]:
    """Canary hosts first (one batch), then the rest in inventory order, ``size`` at a time (the
    waves of a run with ``barriers``, see :func:`pyinfra_ratos.window.waves`)."""
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


def printer_entry(state: State | None, host_name: str, executed: bool) -> dict[str, Any]:
    """The report fields of one host from what its deploy noted and what its operations did."""
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
    config = {"action": _op_action(noted.get("ops", {}).get("config"), "written", executed)}
    if noted.get("skipped"):
        status, reason = "skipped", noted["skipped"]
        config = {"action": "skipped", "reason": reason}
    elif summary is not None and summary.get("outcome") == "pending":
        # the printer was found busy on the Pi right before the first disruptive step: not done
        status, reason = "skipped", summary.get("reason") or "printer busy"
    elif summary is not None and summary.get("outcome") in ("failed", "rolled-back", "attention"):
        words = {"failed": "failed, left as it was", "rolled-back": "rolled back to the previous Klipper and "
                 "firmware", "attention": "NEEDS ATTENTION"}[summary["outcome"]]
        status = "failed"
        reason = f"{words}: {summary.get('reason')}" + (f"; to do: {summary['todo']}" if summary.get("todo") else "")
    elif any(b.get("action") == "failed" for b in boards.values()):
        # the flash agent's own verdict says more than the failed command's last line
        status, reason = "failed", next(b["reason"] for b in boards.values() if b.get("action") == "failed")
    elif errors:
        status, reason = "failed", errors[0]
    elif any(b.get("action") == "refused" for b in boards.values()):
        status = "skipped"
        reason = next(b["reason"] for b in boards.values() if b.get("action") == "refused")
    elif executed:
        controller_side = [noted.get("ops", {}).get("backup")]
        status, reason = ("changed" if host and _changed(state, host, controller_side) else "converged"), ""
    else:
        pending = klipper.get("action") == "updated" or config["action"] == "written" or any(
            b.get("action") == "planned" for b in boards.values())
        status, reason = ("changed" if pending else "converged"), ""
    return {"status": status, "reason": reason, "klipper": klipper or None, "config": config,
            "boards": list(boards.values())}


def _groups(inventory: Any, host_name: str) -> list[str]:
    return sorted(name for name, members in inventory.groups.items() if any(h.name == host_name for h in members))


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
    should_stop: Callable[[], bool] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Update (``execute``) or plan the fleet; returns (exit code, report).

    + max_in_flight: printers worked on at once (``batch_size``: its former name) [10]
    + barriers: the old batches (each waits for its slowest printer) instead of the rolling window
    + parallel: SSH connections opened at once [pyinfra's default: 20 per CPU]
    + should_stop: asked before each printer starts (e.g. an operator's interrupt); true: none more
    """
    window_size = max(1, max_in_flight or batch_size or DEFAULT_WINDOW)
    greenlet_state.install()  # one State per printer, several at once
    if should_stop is None:
        should_stop = _stop_flag()
    override = {"attended_flash": True} if attended_flash else {}
    inventory = fleet_api.load_inventory(inventory_path, limit=limit, override_data=override)
    validate_inventory(fleet_api.host_data(inventory), fleet_api.override_data(inventory), load_catalog(),
                       require=("firmware", "printer", "provision"))
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

    # SSH connections opened (and first facts read) at once: pyinfra's own bound for one State
    # (``parallel``, else 20 per CPU); the window bounds the printers in flight, not the handshakes
    connecting = Semaphore(parallel or min(cpu_count() * 20, MAX_PARALLEL))

    def run_one(name: str, wave: int) -> bool:
        entry = _run_printer(inventory, name, execute=execute, connecting=connecting)
        added = reports.add_printer(report, name, entry.pop("status"), groups=_groups(inventory, name), batch=wave,
                                    **entry)
        return added["status"] in ("failed", "unreachable")

    def finished(slot: window.Slot, run: window.WindowRun) -> None:
        if slot.error is not None and all(p["host"] != slot.host for p in report["printers"]):
            # a bug, not the printer's own failure: its entry says so
            reports.add_printer(report, slot.host, "failed", groups=_groups(inventory, slot.host), batch=slot.wave,
                                reason=f"{type(slot.error).__name__}: {slot.error}",
                                duration_s=(slot.end_s or 0) - slot.start_s)
        if out is not None and not barriers:
            entry = next(p for p in report["printers"] if p["host"] == slot.host)
            print(f"-- [{run.done}/{len(names)}] {slot.host}: {entry['status']} in {entry['duration_s']:.1f} s "
                  f"({len(names) - run.done - len(run.not_started)} left, in flight {_in_flight(run)}/"
                  f"{window_size}, {run.failed} failed so far)", file=out, flush=True)

    def wave_end(index: int, run: window.WindowRun) -> None:
        if out is None:
            return
        kind = ("canary" if index == 0 and has_canary else
                f"batch {index + 1}/{len(plan)}" if barriers else f"window of {window_size}")
        slots = [s for s in run.slots.values() if s.wave == index]
        seconds = max((s.end_s or 0 for s in slots), default=0) - min((s.start_s for s in slots), default=0)
        counts = reports.summarise(p for p in report["printers"] if p["batch"] == index)
        print(f"-- {kind}: {len(slots)} printers in {seconds:.1f} s: {counts['changed']} changed, "
              f"{counts['converged']} converged, {counts['skipped']} skipped, {counts['failed']} failed",
              file=out, flush=True)

    run = window.run_window(plan, run_one, max_in_flight=window_size, max_failed=max_failed if execute else 1.0,
                            canary=len(plan[0]) if has_canary else 0, should_stop=should_stop,
                            on_finish=finished, on_wave_end=wave_end)
    why = "not run: the failure threshold stopped the update"
    if run.stopped is not None and run.stopped.get("after_printer") is None:
        why = "not run: the update was interrupted before it started"
    for name, wave in run.not_started:
        reports.add_printer(report, name, "not-run", groups=_groups(inventory, name), batch=wave, reason=why)
    order = {name: index for index, name in enumerate(names)}
    report["printers"].sort(key=lambda entry: order.get(entry["host"], len(order)))
    report["window"] = {
        "max_in_flight": window_size, "barriers": barriers, "canary": plan[0] if has_canary else [],
        "peak_in_flight": run.peak_in_flight,
        "printers": {s.host: {"wave": s.wave, "start_s": round(s.start_s, 3),
                              "end_s": None if s.end_s is None else round(s.end_s, 3), "in_flight": s.in_flight}
                     for s in run.slots.values()},
    }
    stopped = None
    if run.stopped is not None:
        stopped = {**run.stopped, "not_started": len(run.not_started)}
    reports.finish(report, stopped_early=stopped)
    if report_dir is not None:
        reports.write_report(report, report_dir)
    return report["exit_code"], report


def _in_flight(run: window.WindowRun) -> int:
    return sum(1 for slot in run.slots.values() if slot.end_s is None)


def _stop_flag() -> Callable[[], bool]:
    """The operator's stop request (``pyinfra_ratos.interrupts``, once it exists), else never."""
    try:
        from pyinfra_ratos.interrupts import stop_requested  # type: ignore[import-not-found]
    except ImportError:
        return lambda: False
    return stop_requested


# one printer plans at a time: planning is controller CPU (no greenlet switch is lost) and the
# firmware builder then sees the artifact an earlier printer built instead of building it again
_PLANNING = Semaphore(1)


def _run_printer(inventory: Any, name: str, *, execute: bool, connecting: Semaphore) -> dict[str, Any]:
    """One printer as one pyinfra run (connect, facts, add_deploy, run_ops) on its own State: the
    report fields of its entry (``status`` included)."""
    started = time.monotonic()
    results.RUN.pop(name, None)
    state = fleet_api.make_state(_printer_inventory(inventory, name))
    with connecting:  # its facts are read as soon as it is connected
        unreachable = fleet_api.connect(state, then=_prefetcher(state))
    not_run: dict[str, str] = {}
    try:
        with _PLANNING:
            # one host pyinfra cannot plan (e.g. `_sudo: True` in its data) fails with pyinfra's message
            for host in state.inventory.get_active_hosts():
                try:
                    add_deploy(state, _update_deploy(), host=host)
                except Exception as error:  # noqa: BLE001 - any error planning one host is that host's
                    not_run[host.name] = _planning_error(error)
                    state.active_hosts.discard(host)
                    state.failed_hosts.add(host)
        if execute and state.active_hosts:
            run_ops(state)
    except PyinfraError as error:
        # "No hosts remaining!" once the host failed: its operations say why; any other stop
        # leaves it without a verdict: it failed with it
        if str(error) != "No hosts remaining!":
            not_run.update({host.name: f"pyinfra stopped the run: {error}" for host in state.active_hosts})
    finally:
        prefetch.discard(name)
        fleet_api.disconnect(state)
    seconds = time.monotonic() - started
    if name in unreachable:
        return {"status": "unreachable", "reason": f"cannot connect: {unreachable[name]}", "duration_s": seconds}
    if name in not_run:
        return {"status": "failed", "reason": not_run[name], "duration_s": seconds}
    entry = printer_entry(state, name, execute)
    return {"status": entry["status"], "reason": entry["reason"], "duration_s": seconds, "klipper": entry["klipper"],
            "config": results.with_backup_notes(name, entry["config"]), "boards": entry["boards"]}


def _printer_inventory(inventory: Any, name: str) -> Any:
    """A view of the fleet's inventory holding one host, for that printer's own State: its data
    and groups as loaded once for the fleet (loading the file per printer would cost the
    controller the whole inventory's Python per printer)."""
    host = inventory.get_host(name)
    view = copy.copy(inventory)
    view.hosts = {name: host}
    view.groups = defaultdict(list, {group: [host] for group, members in inventory.groups.items() if host in members})
    view.state = None
    return view


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
        for fact, kwargs in reads:
            try:
                value = get_fact(state, host, fact, kwargs=kwargs)
            except Exception:  # noqa: BLE001 - the deploy reads it again and fails the host as pyinfra does
                return
            prefetch.put(host.name, fact, kwargs, value)

    return one


def _update_deploy() -> Any:
    from pyinfra_ratos.deploys.update import update_printer

    return update_printer


__all__ = ["DEFAULT_WINDOW", "InventoryError", "make_batches", "printer_entry", "run_fleet"]
