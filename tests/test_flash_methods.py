"""Flash methods as one interface: a new method is one module and one catalog value.

A toy ``echo`` method is registered from this test, with its Pi-side runner in a file of its own
(what a method module ships as ``pi_source``); a board of the catalog names it. Nothing else is
edited: the plan picks it, the operation ships its runner with the agent, the agent runs it inside
the same transaction (gate, Klipper stopped and started, verify) as every other method.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.firmware import methods
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.firmware.methods import FlashMethod, Options
from pyinfra_ratos.firmware.plan import plan_flash
from pyinfra_ratos.firmware.steps import Artifact, FlashPlan, Verify

from test_flash_plan import H723, IDLE, artifact  # noqa: F401 - the built-artifact fixture

ECHO_RUNNER = '''
class EchoRunner(Runner):
    """The toy method's Pi side: 'writes' by noting the image, restores by noting that too."""

    def flash(self, agent, board, record):
        record["written"], record["read_back"] = True, True
        ECHOED.append(("flash", board["steps"][0]["image"]))

    def restore(self, agent, board, record):
        ECHOED.append(("restore", board["board"]))
        return None


ECHOED = []
RUNNERS["echo"] = EchoRunner()
'''


@dataclasses.dataclass(frozen=True)
class EchoImage:
    """The toy method's only step."""

    image: str


@pytest.fixture
def echo(tmp_path: Path) -> Any:
    runner = tmp_path / "echo_pi.py"
    runner.write_text(ECHO_RUNNER)

    class Echo(FlashMethod):
        name = "echo"
        modes = ()
        verifies = "version"
        pi_source = str(runner)

        def steps(self, board: Any, entry: Any, mcu_name: str, artifact: Artifact, options: Options) -> FlashPlan:
            return FlashPlan("flash", board.id, f"{board.id}: echo {artifact.path}", method="echo",
                             steps=(EchoImage(artifact.path),), verify_steps=(Verify(mcu_name, artifact.identity.version),),
                             expected_version=artifact.identity.version, image_sha256=artifact.image.sha256)

    methods.register(Echo)
    yield Echo
    del methods.METHODS["echo"]


def test_a_toy_method_needs_only_its_module_and_a_catalog_value(echo: Any, artifact: Any, monkeypatch,
                                                                 tmp_path: Path) -> None:
    from pyinfra_ratos.operations import firmware

    board = dataclasses.replace(H723, flash_methods=("echo",))  # the catalog entry naming it
    plan = plan_flash(board, {}, None, IDLE, artifact(H723))
    assert (plan.action, plan.method) == ("flash", "echo") and plan.steps == (EchoImage(artifact(H723).path),)

    source = firmware.agent_source()  # what the Pi runs: the agent with the method's runner
    assert "class EchoRunner(Runner)" in source and source.rstrip().endswith("sys.exit(main(sys.argv))")
    agent: dict[str, Any] = {"__name__": "agent_on_the_pi"}
    exec(compile(source, "agent", "exec"), agent)  # noqa: S102 - the shipped text, run as the Pi would
    ran: list[list[str]] = []
    pid = [1]

    def run(self: Any, argv: list[str], timeout: float = 0) -> str:
        ran.append(argv)
        if argv[:2] == ["systemctl", "start"]:
            pid[0] += 1
        return ""

    monkeypatch.setitem(agent, "LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setitem(agent, "read_activity", lambda base, own_locks=(): {"query": {"status": 200, "body": {
        "result": {"status": {"print_stats": {"state": "standby"}, "idle_timeout": {"state": "Idle"},
                              "webhooks": {"state": "ready"}}}}}})
    monkeypatch.setitem(agent, "unit_state", lambda unit: {"ActiveState": "active", "MainPID": str(pid[0])})
    monkeypatch.setattr(agent["Agent"], "run", run)
    monkeypatch.setattr(agent["Agent"], "klippy", lambda self: {"state": "ready",
                                                               "versions": {"mcu": plan.expected_version}})
    payload = {"boards": [firmware.agent_board(plan, "mcu")], "verify_timeout": 0.1}
    summary, status = agent["Agent"](payload, str(tmp_path)).execute()
    assert (status, summary["outcome"]) == (0, "done"), summary
    assert agent["ECHOED"] == [("flash", artifact(H723).path)]
    assert ran[0] == ["systemctl", "stop", "klipper"] and ran[-1] == ["systemctl", "start", "klipper"]


def test_a_board_whose_methods_are_not_written_yet_is_refused_by_name(artifact: Any, monkeypatch) -> None:
    monkeypatch.setitem(methods.UNSUPPORTED, "carrier-pigeon", "flashing by carrier pigeon is not supported yet")
    board = dataclasses.replace(H723, flash_methods=("carrier-pigeon",))
    plan = plan_flash(board, {}, None, IDLE, artifact(H723))
    assert plan.action == "refuse" and "carrier pigeon is not supported yet" in plan.reason
    board = dataclasses.replace(H723, flash_methods=("teleport",))
    assert "flash method 'teleport' is unknown" in plan_flash(board, {}, None, IDLE, artifact(H723)).reason


def test_every_catalog_method_is_registered_or_named_as_not_yet_written() -> None:
    names = {name for board in load_catalog().values() for name in board.flash_methods}
    assert names <= set(methods.METHODS) | set(methods.UNSUPPORTED)
    assert set(methods.METHODS) >= {"dfu", "katapult", "linux"}
