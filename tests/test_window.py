"""The rolling window: canary first and alone, no barrier behind a slow printer, the threshold on every finish."""

from __future__ import annotations

import gevent
from gevent.event import Event

from pyinfra_ratos.fleet.window import run_window, waves


class Printers:
    """A fake fleet: each printer runs until its event is set (``hold``) or at once; records the order."""

    def __init__(self, failing: set[str] = frozenset(), held: set[str] = frozenset()) -> None:
        self.failing = failing
        self.events = {name: Event() for name in held}
        self.log: list[tuple[str, str]] = []

    def run(self, name: str, wave: int) -> bool:
        self.log.append(("start", name))
        if name in self.events:
            self.events[name].wait()
        else:
            gevent.sleep(0)  # finishes as soon as the scheduler waits
        self.log.append(("end", name))
        return name in self.failing

    def started(self) -> list[str]:
        return [name for kind, name in self.log if kind == "start"]

    def ended(self) -> list[str]:
        return [name for kind, name in self.log if kind == "end"]


def hosts(n: int) -> list[str]:
    return [f"p{i:02d}" for i in range(n)]


def test_waves_put_the_canary_group_first_then_one_rolling_wave_or_batches() -> None:
    names = ["a", "c1", "b", "c2", "d"]
    assert waves(names, ["c1", "c2"], 2) == [["c1", "c2"], ["a", "b", "d"]]
    assert waves(names, ["c1", "c2"], 2, barriers=True) == [["c1", "c2"], ["a", "b"], ["d"]]
    assert waves(names, [], 10) == [names]


def test_the_canary_group_runs_first_and_alone() -> None:
    fleet = Printers(held={"c1"})
    names = ["a", "b", "c1", "c2", "d"]
    gevent.spawn_later(0.01, fleet.events["c1"].set)  # the slow canary
    run = run_window(waves(names, ["c1", "c2"], 3), fleet.run, max_in_flight=3, max_failed=0.5, canary=2)
    log = fleet.log
    canaries_over = max(log.index(("end", "c1")), log.index(("end", "c2")))
    first_other = min(log.index(("start", name)) for name in ("a", "b", "d"))
    assert fleet.started()[:2] == ["c1", "c2"]
    assert canaries_over < first_other  # nothing else started while a canary ran
    assert run.slots["c1"].wave == 0 and run.slots["a"].wave == 1
    assert run.stopped is None and run.done == 5


def test_a_slow_printer_does_not_hold_the_others() -> None:
    names = hosts(8)
    fleet = Printers(held={"p00"})
    # the slow printer finishes only once the last printer of the fleet has finished: with a
    # barrier behind it that last printer would never start
    last = gevent.spawn(lambda: (gevent.wait([gevent.spawn(_wait_for_end, fleet, "p07")]), fleet.events["p00"].set()))
    run = run_window(waves(names, [], 2), fleet.run, max_in_flight=2, max_failed=1.0)
    last.join()
    assert fleet.ended()[-1] == "p00"
    assert fleet.ended()[:-1] == names[1:]
    assert run.peak_in_flight == 2 and run.done == 8
    assert all(run.slots[name].in_flight <= 2 for name in names)


def _wait_for_end(fleet: Printers, name: str) -> None:
    while ("end", name) not in fleet.log:
        gevent.sleep(0.001)


def test_the_window_never_holds_more_than_its_size() -> None:
    in_flight, peak = [0], [0]

    def run(name: str, wave: int) -> bool:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        gevent.sleep(0.001 * (int(name[1:]) % 3))
        in_flight[0] -= 1
        return False

    result = run_window(waves(hosts(20), [], 4), run, max_in_flight=4, max_failed=0.0)
    assert peak[0] == 4 and result.peak_in_flight == 4 and result.done == 20


def test_the_threshold_trips_mid_window_and_printers_not_started_are_not_run() -> None:
    names = hosts(12)
    # window of 3, no canary: the first check counts at least 3 printers; 2 of 3 failed > 50%
    fleet = Printers(failing={"p01", "p02"}, held={"p00"})
    gevent.spawn_later(0.01, fleet.events["p00"].set)  # p00 is still in flight when the threshold trips
    run = run_window(waves(names, [], 3), fleet.run, max_in_flight=3, max_failed=0.5)
    assert run.stopped is not None and run.stopped["after_printer"] == "p02"
    assert "2 of 2 finished printers failed" in run.stopped["reason"]
    assert "of the first 3" in run.stopped["reason"]
    # p01's failure alone (1 of at least 3) let p03 start in its place; none started after p02
    assert fleet.started() == ["p00", "p01", "p02", "p03"]
    assert sorted(fleet.ended()) == ["p00", "p01", "p02", "p03"]  # those in flight finished
    assert not run.slots["p00"].failed and run.slots["p00"].end_s > run.slots["p02"].end_s
    assert run.not_started == [(name, 0) for name in names[4:]]


def test_one_early_failure_does_not_stop_what_a_batch_would_have_let_go_on() -> None:
    fleet = Printers(failing={"p00"})
    run = run_window(waves(hosts(20), [], 10), fleet.run, max_in_flight=10, max_failed=0.2)
    assert run.stopped is None and run.done == 20 and run.failed == 1


def test_a_failing_canary_stops_the_run_before_any_other_printer() -> None:
    fleet = Printers(failing={"c1"})
    names = ["c1", "c2", "a", "b"]
    run = run_window(waves(names, ["c1", "c2"], 2), fleet.run, max_in_flight=2, max_failed=0.2, canary=2)
    assert run.stopped is not None and run.stopped["after_batch"] == 0
    assert set(fleet.started()) == {"c1", "c2"}
    assert run.not_started == [("a", 1), ("b", 1)]


def test_a_stop_request_starts_no_further_printer() -> None:
    fleet = Printers()
    asked = []

    def should_stop() -> bool:
        asked.append(len(fleet.started()))
        return len(fleet.started()) >= 4

    run = run_window(waves(hosts(10), [], 2), fleet.run, max_in_flight=2, max_failed=1.0, should_stop=should_stop)
    assert fleet.started() == hosts(4) and sorted(fleet.ended()) == hosts(4)
    assert run.stopped is not None and run.stopped["reason"].startswith("interrupted")
    assert [name for name, _ in run.not_started] == hosts(10)[4:]


def test_a_printer_whose_run_raises_counts_as_failed_and_the_others_go_on() -> None:
    def run(name: str, wave: int) -> bool:
        if name == "p01":
            raise RuntimeError("a bug")
        return False

    result = run_window(waves(hosts(5), [], 2), run, max_in_flight=2, max_failed=1.0)
    assert result.done == 5 and result.failed == 1
    assert isinstance(result.slots["p01"].error, RuntimeError)
