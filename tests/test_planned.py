"""Operations added only when their body yields a command (pyinfra's own plan, run first)."""

from __future__ import annotations

import logging

import pytest
from pyinfra import host, logger
from pyinfra.api import Config, Inventory, OperationError, State, operation
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.context import ctx_state

from pyinfra_ratos.run.planned import NOT_NEEDED, add_if_needed


@operation()
def maybe(count: int):
    """Echo ``count`` times; ``count=0``: a noop with a warning (logged before deciding)."""
    host.log(f"maybe: {count}", logger.warning)
    if count < 0:
        raise OperationError("count must not be negative")
    for index in range(count):
        yield f"echo {index}"


@pytest.fixture()
def state() -> State:
    state = State(Inventory((["@local"], {})), Config())
    with ctx_state.use(state):
        connect_all(state)
    return state


def test_an_operation_with_nothing_to_do_is_not_added_and_logs_once(state: State, caplog) -> None:
    metas = {}

    def deploy() -> None:
        metas["none"] = add_if_needed(maybe, name="Nothing", count=0)
        metas["two"] = add_if_needed(maybe, name="Two", count=2, _sudo=False)

    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        add_deploy(state, deploy)
    local = state.inventory.get_host("@local")
    assert metas["none"] is NOT_NEEDED and not metas["none"].will_change
    assert metas["two"].will_change
    assert [state.op_meta[h].names for h in state.ops[local]] == [{"Two"}]
    messages = [r.getMessage() for r in caplog.records if "maybe:" in r.getMessage()]
    assert messages.count("[@local] maybe: 0") == 1 and messages.count("[@local] maybe: 2") == 1
    assert logger.handlers is not None and logger.propagate is True  # restored


def test_an_operation_error_still_reaches_the_caller(state: State) -> None:
    def deploy() -> None:
        add_if_needed(maybe, name="Bad", count=-1)

    with pytest.raises(OperationError, match="negative"):
        add_deploy(state, deploy)
    assert logger.propagate is True
