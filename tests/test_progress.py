"""Live progress: a line per printer per phase, the attended-flash cue and its confirmation."""

from __future__ import annotations

import io
from dataclasses import dataclass
from types import SimpleNamespace

from pyinfra_ratos.fleet import api as fleet_api
from pyinfra_ratos.fleet.progress import Progress, confirm, held_boards
from pyinfra_ratos.firmware.catalog import load_catalog


@dataclass(frozen=True)
class Host:  # hashable, as pyinfra's hosts are: state.ops is keyed by them
    name: str


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def fake_state(names: dict[str, str], ops: dict[str, list[str]]) -> SimpleNamespace:
    return SimpleNamespace(op_meta={h: SimpleNamespace(names={n}) for h, n in names.items()},
                           ops={Host(host): dict.fromkeys(hashes) for host, hashes in ops.items()})


def test_a_line_per_printer_per_phase_and_silence_for_operations_a_host_does_not_have() -> None:
    out = io.StringIO()
    progress = Progress(out, total=2, tty=False)
    state = fake_state({"a": "Update printer | Bring the fleet's Klipper commit", "b": "Update printer | Upload"},
                       {"p1": ["a", "b"]})
    p1, p2 = Host("p1"), Host("p2")
    progress.operation_host_start(state, p1, "a")
    progress.operation_host_start(state, p2, "a")  # pyinfra announces every operation to every host
    progress.operation_host_success(state, p1, "a")
    progress.operation_host_start(state, p1, "b")
    progress.operation_host_error(state, p1, "b")
    lines = out.getvalue().splitlines()
    assert [line.split(" in ")[0].split(" after ")[0] for line in lines] == [
        "[p1] Bring the fleet's Klipper commit: started", "[p1] Bring the fleet's Klipper commit: done",
        "[p1] Upload: FAILED"]


def test_an_attended_flash_is_announced_as_its_printer_enters_the_transaction() -> None:
    out = io.StringIO()
    progress = Progress(out, total=1, tty=False)
    progress.attended["p1"] = ["mcu (btt-octopus-pro-h723, port 1-1.1)"]
    state = fake_state({"t": "Update printer | Update Klipper and flash the boards"}, {"p1": ["t"]})
    progress.operation_host_start(state, Host("p1"), "t")
    assert out.getvalue().splitlines()[0] == ("[p1] ENTERING DFU NOW (attended flash): mcu (btt-octopus-pro-h723, "
                                              "port 1-1.1): watch the heaters")


def test_held_boards_are_those_the_catalog_never_flashes_unattended() -> None:
    noted = {"boards": {"mcu": {"board": "btt-octopus-pro-h723", "mcu_name": "mcu", "port": "1-1.1",
                                "action": "planned"},
                        "t0": {"board": "btt-ebb42-12", "mcu_name": "t0", "port": "1-1.2", "action": "planned"}}}
    assert held_boards(noted, load_catalog()) == ["mcu (btt-octopus-pro-h723, port 1-1.1)"]


def test_confirmation_is_asked_on_a_terminal_unless_yes() -> None:
    err = io.StringIO()
    assert confirm(["p1: mcu"], False, Tty("yes\n"), err) is True
    assert "p1: mcu" in err.getvalue() and "Type yes" in err.getvalue()
    assert confirm(["p1: mcu"], False, Tty("no\n"), io.StringIO()) is False
    assert confirm(["p1: mcu"], True, Tty(""), io.StringIO()) is True
    assert confirm(["p1: mcu"], False, io.StringIO(""), io.StringIO()) is True  # no terminal: nobody to ask
    assert confirm([], False, Tty(""), io.StringIO()) is True


def test_each_flashed_board_gets_its_verified_line_when_its_batch_ends() -> None:
    out = io.StringIO()
    progress = Progress(out, total=1, tty=False)
    progress.batch_done([{"host": "p1", "boards": [
        {"mcu_name": "mcu", "action": "flashed", "before_version": "v1", "after_version": "v2", "read_back": True,
         "verified": True},
        {"mcu_name": "t0", "action": "skipped", "before_version": "v2", "after_version": "v2"}]}])
    assert out.getvalue().splitlines() == ["[p1] mcu: flashed v1 -> v2 (read back, verified)"]
    assert progress.done == 1
