"""The rolling window of a fleet run: the canary group first and alone, then at most N printers in flight.

A fleet run is a list of *waves* (:func:`waves`): the canary group, then the other printers. Within
a wave at most ``max_in_flight`` printers run at once and the next one starts as soon as one
finishes; a wave starts when the one before it is over (the canaries are alone). With
``barriers`` the other printers form waves of ``max_in_flight`` (the batches of the old runner:
each waits for its slowest printer), which the bench measures against the window.

The failure threshold is evaluated on every finished printer: the share of failed printers among
those finished, never of fewer than the first window (the canary group while it runs, then the
canaries plus ``max_in_flight``). So an early failure does not stop a run that a batch of that size
would have let go on, and a run a batch would have stopped stops as soon as that is certain. Once
it trips (or ``should_stop`` says so, checked before each start), no printer starts any more; those
in flight finish (a printer is never abandoned mid-transaction) and the others are *not started*.
A ``KeyboardInterrupt`` while waiting (the operator's second signal,
:mod:`pyinfra_ratos.fleet.interrupts`) stops waiting at once: the printers in flight are named in
``abandoned`` and the run returns.

Pure scheduling on gevent greenlets: what running a printer means is the caller's ``run_one``
(:mod:`pyinfra_ratos.fleet.update`: one pyinfra State per printer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.queue import Queue


def waves(hosts: Sequence[str], canary: Sequence[str], max_in_flight: int, barriers: bool = False) -> list[list[str]]:
    """Canary hosts first (one wave), then the rest in inventory order: one wave (the rolling
    window) or, with ``barriers``, waves of ``max_in_flight``."""
    first = [name for name in hosts if name in canary]
    rest = [name for name in hosts if name not in canary]
    size = max(1, max_in_flight)
    if barriers:
        later = [rest[i : i + size] for i in range(0, len(rest), size)]
    else:
        later = [rest] if rest else []
    return ([first] if first else []) + later


@dataclass
class Slot:
    """One printer's place in the window: when it started and finished (seconds from the start of
    the run), how many printers were in flight when it started (itself included)."""

    host: str
    wave: int
    start_s: float
    in_flight: int
    end_s: float | None = None
    failed: bool = False
    error: BaseException | None = None


@dataclass
class WindowRun:
    slots: dict[str, Slot] = field(default_factory=dict)
    not_started: list[tuple[str, int]] = field(default_factory=list)  # (host, wave)
    # {"kind": "threshold" | "interrupted" | "at-once", "after_batch" (0-based wave), "after_printer", "reason"}
    stopped: dict[str, Any] | None = None
    abandoned: list[str] = field(default_factory=list)  # in flight when a KeyboardInterrupt stopped the wait
    peak_in_flight: int = 0
    in_flight: int = 0  # printers running now
    done: int = 0
    failed: int = 0


def run_window(
    plan: Sequence[Sequence[str]],
    run_one: Callable[[str, int], bool],
    *,
    max_in_flight: int,
    max_failed: float,
    canary: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_start: Callable[[Slot, WindowRun], None] | None = None,
    on_finish: Callable[[Slot, WindowRun], None] | None = None,
    on_wave_end: Callable[[int, WindowRun], None] | None = None,
) -> WindowRun:
    """Run ``run_one(host, wave)`` for every host of ``plan`` (from :func:`waves`), at most
    ``max_in_flight`` at once (``canary``: the size of the first wave when it is the canary
    group); ``run_one`` returns whether the printer counts as failed (an
    exception counts as failed and is kept in its slot). ``on_start`` is called as each printer
    starts, ``on_finish`` as each one finishes (after the threshold was evaluated), ``on_wave_end``
    after each wave."""
    size = max(1, max_in_flight)
    total = sum(len(wave) for wave in plan)
    run = WindowRun()
    finished: Queue = Queue()
    clock = time.monotonic()
    running: dict[gevent.Greenlet, str] = {}

    def floor(wave_index: int) -> int:
        # the printers a batch runner would have finished before its first check
        return min(total, max(1, canary if canary and wave_index == 0 else canary + size))

    def trip(host: str, wave_index: int) -> str | None:
        counted = max(run.done, floor(wave_index))
        share = run.failed / counted
        if run.failed and share > max_failed:
            over = f" of the first {counted}" if counted > run.done else ""
            return (f"{run.failed} of {run.done} finished printers failed ({share:.0%}{over}, more than the "
                    f"{max_failed:.0%} allowed): no printer started after {host}")
        return None

    for wave_index, wave in enumerate(plan):
        pending = list(wave)
        if run.stopped is not None:
            run.not_started += [(name, wave_index) for name in pending]
            continue
        while pending or running:
            while pending and len(running) < size and run.stopped is None:
                if should_stop is not None and should_stop():
                    run.stopped = {"kind": "interrupted", "after_batch": wave_index, "after_printer": None,
                                   "reason": "interrupted: no printer started after the stop request"}
                    break
                name = pending.pop(0)
                slot = Slot(name, wave_index, time.monotonic() - clock, len(running) + 1)
                run.slots[name] = slot
                greenlet = gevent.spawn(run_one, name, wave_index)
                greenlet.link(finished.put)
                running[greenlet] = name
                run.in_flight = len(running)
                run.peak_in_flight = max(run.peak_in_flight, len(running))
                if on_start is not None:
                    on_start(slot, run)
            if not running:
                break
            try:
                greenlet = finished.get()
            except KeyboardInterrupt:
                # the operator insists: stop waiting; the printers in flight are left to their agents
                run.stopped = {"kind": "at-once", "after_batch": wave_index, "after_printer": None,
                               "reason": "stopped at once: the printers in flight were not waited for"}
                run.abandoned = list(running.values())
                gevent.killall(list(running), block=False)
                run.not_started += [(name, wave_index) for name in pending]
                run.not_started += [(name, later) for later, rest in enumerate(plan[wave_index + 1 :], wave_index + 1)
                                    for name in rest]
                return run
            slot = run.slots[running.pop(greenlet)]
            run.in_flight = len(running)
            slot.end_s = time.monotonic() - clock
            if greenlet.successful():
                slot.failed = bool(greenlet.value)
            else:
                slot.failed, slot.error = True, greenlet.exception
            run.done += 1
            run.failed += slot.failed
            if run.stopped is None and (pending or any(plan[wave_index + 1 :])):
                reason = trip(slot.host, wave_index)
                if reason:
                    run.stopped = {"kind": "threshold", "after_batch": wave_index, "after_printer": slot.host,
                                   "reason": reason}
            if on_finish is not None:
                on_finish(slot, run)
        if on_wave_end is not None:
            on_wave_end(wave_index, run)
        run.not_started += [(name, wave_index) for name in pending]
    return run
