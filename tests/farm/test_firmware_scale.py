"""Build once, flash many (design.md section 2) at farm scale: 30 Pis, 3 firmware identities.

Every Pi runs one board of one of three models, all behind (``old``) and idle. One run of the
firmware deploy must bring every MCU to the Pis' version with exactly one build per identity,
and a second run must change nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from pyinfra_ratos.firmware.builder import builds_made
from pyinfra_ratos.sim import farm as sim_farm

from .conftest import RunningFarm, start_farm
from .test_firmware import DEPLOY, grand_total, mcu_version

PIS = 30
# three firmware identities: one per board model (same Klipper commit everywhere)
BOARDS = ("btt-octopus-pro-h723-11", "btt-octopus-pro-446", "btt-skr-mini-e3-30")


def scenario_text(pis: int = PIS) -> str:
    return "".join(
        f'[[pi]]\nname = "scale-{n:02d}"\n[[pi.boards]]\nboard = "{BOARDS[n % len(BOARDS)]}"\nfirmware = "old"\n\n'
        for n in range(pis)
    )


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    state = tmp_path_factory.mktemp("farm-firmware-scale")
    scenario = state.parent / "firmware-scale.toml"
    scenario.write_text(scenario_text())
    running = start_farm(scenario, state)
    try:
        yield running
    finally:
        sim_farm.down(state)


@pytest.fixture(scope="module")
def first_run(farm: RunningFarm) -> str:
    return farm.pyinfra(str(DEPLOY), check=False).stdout


def names(farm: RunningFarm) -> list[str]:
    return [pi["name"] for pi in farm.info["pis"]]


def test_thirty_pis_converge_in_one_run_with_one_build_per_identity(farm: RunningFarm, first_run: str) -> None:
    total = grand_total(first_run)
    # per Pi one upload (its identity was not there) and one flash; rows add up per operation
    assert (total["success"], total["error"]) == (2 * PIS, 0), first_run
    made = builds_made(farm.state / "firmware-cache")
    assert len(made) == len({b["identity"] for b in made}) == len(BOARDS), made
    assert sorted(b["board"] for b in made) == sorted(BOARDS)
    wanted = farm.info["versions"]["current"]["version"]
    behind = {pi: mcu_version(farm, pi) for pi in names(farm) if mcu_version(farm, pi) != wanted}
    assert behind == {}, first_run


def test_a_rerun_on_the_converged_farm_changes_nothing(farm: RunningFarm, first_run: str) -> None:
    rerun = farm.pyinfra(str(DEPLOY), check=False).stdout
    total = grand_total(rerun)
    # converged: no operation has anything to do, so none is added (planned.py)
    assert (total["success"], total["error"], total["no_change"]) == (0, 0, 0), rerun
    assert not re.search(r"\] +(Success|Error)", rerun), rerun
    assert len(builds_made(farm.state / "firmware-cache")) == len(BOARDS)
