"""pyinfra's per-call work kept once per run (run/pyinfra_costs.py): the same answers as pyinfra's own."""

from __future__ import annotations

import sys

from pyinfra.api import Config, Inventory, State, arguments, facts
from pyinfra.context import ctx_host, ctx_state

from pyinfra_ratos.run import pyinfra_costs

deploy = sys.modules["pyinfra.api.deploy"]  # the module (``pyinfra.api.deploy`` is its decorator)

ORIGINAL = arguments.pop_global_arguments  # pyinfra's own: install() leaves this name alone


def _fleet() -> tuple[Inventory, State]:
    inventory = Inventory((["a", ("b", {"_sudo": True, "_sudo_user": "klipper"})], {}),
                          printers=(["a", "b"], {"_sudo_user": "pi", "_env": {"LANG": "C"}}))
    return inventory, State(inventory, Config())


def test_install_is_idempotent_and_answers_as_pyinfra() -> None:
    inventory, state = _fleet()
    expected = {h.name: ORIGINAL(state, h, {})[0] for h in inventory}
    pyinfra_costs.install()
    pyinfra_costs.install()
    assert arguments.all_global_arguments() == arguments.all_global_arguments()
    for host in inventory:
        for _ in range(2):  # the second answer is the kept one
            assert deploy.pop_global_arguments(state, host, {}) == (expected[host.name], [])
            assert facts.pop_global_arguments(state, host, {"path": "~/klipper"})[0] == expected[host.name]
    assert expected["b"]["_sudo"] is True and expected["a"]["_sudo_user"] == "pi"


def test_a_global_argument_given_is_popped_by_pyinfra_itself() -> None:
    pyinfra_costs.install()
    inventory, state = _fleet()
    host = inventory.get_host("a")
    deploy.pop_global_arguments(state, host, {})  # kept
    kwargs = {"_sudo": True, "path": "x"}
    values, popped = deploy.pop_global_arguments(state, host, kwargs)
    assert values["_sudo"] is True and popped == ["_sudo"] and kwargs == {"path": "x"}
    assert deploy.pop_global_arguments(state, host, {})[0]["_sudo"] is False  # the kept answer is untouched


def test_data_written_to_the_host_or_another_config_is_seen() -> None:
    pyinfra_costs.install()
    inventory, state = _fleet()
    host = inventory.get_host("a")
    assert deploy.pop_global_arguments(state, host, {})[0]["_sudo"] is False
    host.data._sudo = True  # pyinfra's override layer
    assert deploy.pop_global_arguments(state, host, {})[0]["_sudo"] is True
    other = State(inventory, Config(SUDO_USER="root"))
    assert deploy.pop_global_arguments(other, host, {}) == ORIGINAL(other, host, {})


def test_inside_a_deploy_the_deploy_arguments_count() -> None:
    pyinfra_costs.install()
    inventory, state = _fleet()
    host = inventory.get_host("a")
    deploy.pop_global_arguments(state, host, {})  # kept outside the deploy
    with ctx_state.use(state), ctx_host.use(host), host.deploy("d", kwargs={"_sudo_user": "root"}, data=None):
        assert facts.pop_global_arguments(state, host, {})[0]["_sudo_user"] == "root"
    assert deploy.pop_global_arguments(state, host, {})[0]["_sudo_user"] == "pi"


def test_frozen_layers_keep_pyinfra_precedence() -> None:
    inventory, state = _fleet()
    before = {h.name: h.data.dict() for h in inventory}
    pyinfra_costs.freeze_inventory_data(inventory)
    assert {h.name: h.data.dict() for h in inventory} == before
    host = inventory.get_host("b")
    assert host.data._sudo_user == "klipper"  # the host's own data before its group's
    host.data._sudo_user = "other"
    assert host.data._sudo_user == "other"  # the override layer stays first
