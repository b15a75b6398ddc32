"""Two names reaching one machine in one run: found by key, as ``same_machine`` pairs them, across
the printers' States of one fleet run."""

from __future__ import annotations

import itertools

from pyinfra_ratos.operations import identity
from pyinfra_ratos.printer.identity import Identity, same_machine
from pyinfra_ratos.run.results import FleetRun

IDS = ["", "a" * 32, "b" * 32]
KEYS = ["", "ssh-ed25519 SHA256:one", "ssh-ed25519 SHA256:two", "ecdsa-sha2-nistp256 SHA256:one"]


class _State:
    def __init__(self, run: FleetRun) -> None:
        self.fleet_run = run


def test_twins_found_by_key_are_those_same_machine_pairs() -> None:
    run = FleetRun()
    seen = {f"p{i}": Identity(mid, key) for i, (mid, key) in enumerate(itertools.product(IDS, KEYS))}
    for name, found in seen.items():
        identity._note_seen(_State(run), name, found)  # each printer on a State of its own
    for name, found in seen.items():
        expected = sorted(other for other, theirs in seen.items()
                          if other != name and same_machine(theirs.as_record(), found))
        assert identity.seen_elsewhere(_State(run), name, found) == expected, name


def test_another_run_sees_no_twin() -> None:
    first, second = FleetRun(), FleetRun()
    identity._note_seen(_State(first), "twin-1", Identity("a" * 32, KEYS[1]))
    assert identity.seen_elsewhere(_State(second), "twin-2", Identity("a" * 32, KEYS[1])) == []
    assert identity.seen_elsewhere(_State(first), "twin-2", Identity("a" * 32, KEYS[1])) == ["twin-1"]
