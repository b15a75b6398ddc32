"""``ratos-fleet update`` and ``ratos-fleet plan``: the update deploy over a fleet, with the report.

The inventory is validated first (bad input: exit 2, no SSH command). Then the hosts of the
``canary`` group (when there is one) form the first batch and the others follow in batches of
``batch_size``; each batch is one pyinfra run of :func:`pyinfra_ratos.deploys.update.update_printer`
through pyinfra's own API (connect, add_deploy, run_ops). After each batch the share of failed
printers so far is compared with ``max_failed`` (a share; the CLI takes a percentage): above it, the
run stops and every printer not yet touched is reported ``not-run``. Before each batch the run asks
:func:`pyinfra_ratos.fleet.interrupts.stop_requested` (Ctrl-C, SIGTERM): then it starts no new printer,
reports the rest ``not-run`` and exits 130. ``plan`` makes the same decisions and runs nothing.
"""

from __future__ import annotations

# first: pyinfra's CLI package patches the standard library for gevent (see fleet_api)
from pyinfra_ratos.fleet import api as fleet_api

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.api.state import State

from pyinfra_ratos.fleet import report as reports
from pyinfra_ratos.run import results
from pyinfra_ratos.run import prefetch
from pyinfra_ratos.fleet import interrupts
from pyinfra_ratos.firmware.bundle import describe
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.firmware.agent import RESULT_PREFIX, SUMMARY_PREFIX
from pyinfra_ratos.fleet.hostdata import InventoryError, validate_inventory

CANARY = "canary"
STOPPED_AT_ONCE = ("stopped at once by a second signal while in flight: the printer agent on the Pi finishes or "
                   "rolls back on its own; see where it stands with ratos-fleet status")


def make_batches(hosts: Sequence[str], canary: Sequence[str], size: int) -> list[list[str]]:
    """Canary hosts first (one batch), then the rest in inventory order, ``size`` at a time."""
    first = [name for name in hosts if name in canary]
    rest = [name for name in hosts if name not in canary]
    size = max(1, size)
    return ([first] if first else []) + [rest[i : i + size] for i in range(0, len(rest), size)]


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


def _groups(inventory: Any, host_name: str) -> list[str]:
    return sorted(name for name, members in inventory.groups.items() if any(h.name == host_name for h in members))


def run_fleet(
    inventory_path: str | Path,
    *,
    limit: Sequence[str] | None = None,
    execute: bool = True,
    attended_flash: bool = False,
    batch_size: int = 10,
    max_failed: float = 0.2,
    report_dir: str | Path | None = None,
    parallel: int | None = None,
    out: Any = None,
    fail_on_busy: bool = False,
    progress: Any = None,
    confirm: Callable[[list[str]], bool] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Update (``execute``) or plan the fleet; returns (exit code, report).

    ``progress``: a :class:`pyinfra_ratos.fleet.progress.Progress` (a line per printer per phase);
    ``confirm``: asked with the boards an attended flash is about to put in DFU (False: stop);
    ``fail_on_busy``: busy and held printers count as failed (exit 1) rather than pending (3).
    Between printers the run checks :func:`pyinfra_ratos.fleet.interrupts.stop_requested`."""
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
    batches = make_batches(names, canary, batch_size)
    if progress is not None:
        progress.total = len(names)
    stopped = interrupted = None
    done = failed = 0
    for index, batch in enumerate(batches):
        if interrupts.stop_requested():  # a signal: start no new printer
            interrupted = {"signal": interrupts.stop_requested(), "after_batch": index}
            _not_run(report, inventory, batches[index:], index, "not started: the run was interrupted")
            break
        started = time.monotonic()
        results.clear_run()
        state = fleet_api.make_state(fleet_api.load_inventory(inventory_path, limit=batch, override_data=override),
                                     parallel=parallel)
        if progress is not None:
            state.add_callback_handler(progress)
        # each Pi's facts are read as soon as it is connected, while the others still connect
        unreachable = fleet_api.connect(state, then=_prefetcher(state))
        not_run: dict[str, str] = {}
        try:
            # host by host: one host pyinfra cannot plan (e.g. `_sudo: True` in its data) fails
            # alone, with pyinfra's message, and the others still run
            for host in state.inventory.get_active_hosts():
                try:
                    add_deploy(state, _update_deploy(), host=host)
                except Exception as error:  # noqa: BLE001 - any error planning one host is that host's
                    not_run[host.name] = _planning_error(error)
                    state.active_hosts.discard(host)
                    state.failed_hosts.add(host)
            if execute and state.active_hosts and _attended_ok(state, attended_flash, progress, confirm):
                try:
                    run_ops(state)
                except KeyboardInterrupt:  # a second signal: stop at once, still report every printer
                    interrupts.request_stop("SIGINT")
                    not_run.update({host.name: STOPPED_AT_ONCE for host in state.active_hosts
                                    if any(not d.operation_meta.is_complete() for d in state.ops[host].values())})
            elif execute and state.active_hosts:
                interrupts.request_stop("declined")
                not_run.update({h.name: "not started: the attended flash was not confirmed" for h in state.active_hosts})
        except PyinfraError as error:
            # "No hosts remaining!" once every host failed: each host's operations say why; any
            # other stop leaves the hosts still active without a verdict: they failed with it
            if str(error) != "No hosts remaining!":
                not_run.update({host.name: f"pyinfra stopped the run: {error}" for host in state.active_hosts})
        finally:
            prefetch.clear()
            fleet_api.disconnect(state)
        seconds = time.monotonic() - started
        for name in batch:
            groups = _groups(inventory, name)
            if name in unreachable:
                reports.add_printer(report, name, "unreachable", groups=groups, batch=index + 1,
                                    reason=f"cannot connect: {unreachable[name]}", duration_s=seconds)
            elif name in not_run:
                reports.add_printer(report, name, "not-run" if name in not_run and not_run[name].startswith(
                    "not started") else "failed", groups=groups, batch=index + 1, reason=not_run[name],
                    duration_s=seconds)
            else:
                entry = printer_entry(state, name, execute)
                reports.add_printer(report, name, entry["status"], groups=groups, batch=index + 1,
                                    reason=entry["reason"], todo=entry["todo"], duration_s=seconds,
                                    klippy_state=entry["klippy_state"], klipper=entry["klipper"],
                                    config=results.with_backup_notes(name, entry["config"]), boards=entry["boards"])
        if progress is not None:
            progress.batch_done([p for p in report["printers"] if p["batch"] == index + 1])
        if out is not None:
            print(_batch_line(report, index, len(batches), bool(canary), len(batch), seconds, execute),
                  file=out, flush=True)
        done += len(batch)
        failed += sum(1 for p in report["printers"] if p["batch"] == index + 1 and p["status"] in ("failed", "unreachable"))
        if execute and index + 1 < len(batches) and failed / done > max_failed:
            stopped = {"after_batch": index + 1, "reason": (
                f"{failed} of {done} printers failed ({failed / done:.0%} > {max_failed:.0%} allowed): "
                "stopping before the next batch")}
            _not_run(report, inventory, batches[index + 1 :], index + 1,
                     "not run: the failure threshold stopped the update")
            break
    if interrupted is None and interrupts.stop_requested() and len(report["printers"]) == len(names):
        # the signal came during the last batch: every printer has its state, the run still stopped
        interrupted = {"signal": interrupts.stop_requested(), "after_batch": len(batches)}
    reports.finish(report, stopped_early=stopped, fail_on_busy=fail_on_busy, interrupted=interrupted)
    if report_dir is not None:
        reports.write_report(report, report_dir)
    return report["exit_code"], report


def _not_run(report: dict[str, Any], inventory: Any, batches: Sequence[Sequence[str]], first: int, reason: str) -> None:
    for offset, rest in enumerate(batches):
        for name in rest:
            reports.add_printer(report, name, "not-run", groups=_groups(inventory, name), batch=first + offset + 1,
                                reason=reason)


def _batch_line(report: dict[str, Any], index: int, total: int, canary: bool, size: int, seconds: float,
                execute: bool) -> str:
    """``-- batch 1/3 (canary): ...``: numbered as the table and the stop message number it."""
    counts = reports.summarise(p for p in report["printers"] if p["batch"] == index + 1)
    kind = f"batch {index + 1}/{total}" + (" (canary)" if index == 0 and canary else "")
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


__all__ = ["InventoryError", "make_batches", "printer_entry", "run_fleet"]
