"""A small layer over pyinfra's API: load an inventory as the CLI does, connect, read one fact per host.

    from pyinfra_ratos.fleet import api as fleet_api
    from pyinfra_ratos.facts.audit import FleetAudit

    inventory = fleet_api.load_inventory("inventory/farm.py", limit=["canary"])
    state = fleet_api.make_state(inventory)
    audits = fleet_api.gather(state, FleetAudit)     # {host name: HostFact}, never raises
    fleet_api.disconnect(state)

Concurrency is pyinfra's: greenlets on ``state.pool``. That needs the standard library patched by
gevent, which ``pyinfra_cli`` does when imported (its ``__init__``); this module imports it first
thing, so importing ``fleet_api`` early (before paramiko or ssl) is all a script needs.

Connections: pyinfra 3.10 over paramiko leaves Nagle's algorithm on, so every SSH command waits
for a delayed ACK (~40 ms on Linux) between the small packets of one request, and paramiko's
transport wakes 10 times a second per open connection. :class:`ConnectionTuning`, a state callback
that :func:`make_state` installs, turns Nagle off and the idle poll down to once a second as soon
as a host is connected (``host_connect``; :func:`pyinfra_ratos.run.connection.tune`, which this
package's deploys also call on their host, for the ``pyinfra`` CLI). Measured on the virtual farm:
48.7 ms per SSH command without TCP_NODELAY, 5.9 ms with (sshd session setup included).
"""

from __future__ import annotations

# pyinfra's CLI patches the standard library for gevent in its package __init__ ("API scripts
# should also patch gevent at the start"): importing it before anything opens a socket does both.
import pyinfra_cli  # noqa: F401  isort: skip

import fnmatch
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import gevent
from pyinfra.api import Config, FactBase, State
from pyinfra.api.exceptions import ConnectError, PyinfraError
from pyinfra.api.facts import get_fact
from pyinfra.api.host import Host
from pyinfra.api.inventory import Inventory
from pyinfra.api.state import BaseStateCallback
from pyinfra.context import ctx_host, ctx_state
from pyinfra_cli.inventory import make_inventory

from pyinfra_ratos.run.connection import tune as tune_connection

T = TypeVar("T")


class InventoryLoadError(ValueError):
    """The inventory file cannot be loaded or the limit matches no host; the message says which."""


@dataclass
class HostFact(Generic[T]):
    """One host's answer: ``status`` is ``ok``, ``unreachable`` (no SSH connection) or ``failed``
    (the command failed; ``value`` is then the fact's default)."""

    value: T | None
    status: str = "ok"
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def load_inventory(
    path: str | Path, limit: Iterable[str] | None = None, override_data: Mapping[str, Any] | None = None,
) -> Inventory:
    """The inventory file with the ``group_data/`` folder beside it, loaded by pyinfra's CLI code.

    + limit: host names, group names or glob patterns (pyinfra's ``--limit``); the inventory then
      holds only the matching hosts (their group and override data unchanged)
    + override_data: ``--data`` values, highest precedence (as pyinfra's CLI)
    """
    path = Path(path)
    if not path.is_file():
        raise InventoryLoadError(f"{path}: no such inventory file")
    try:
        # inventory and group data files run inside a state context, as under pyinfra's CLI
        with ctx_state.use(State()):
            inventory = make_inventory(str(path.resolve()), override_data=dict(override_data or {}),
                                       cwd=str(path.resolve().parent))
    except Exception as error:  # the inventory is user Python: any error is a bad input
        raise InventoryLoadError(f"{path}: cannot load the inventory: {type(error).__name__}: {error}") from error
    if limit:
        _restrict(inventory, list(limit))
    return inventory


def _restrict(inventory: Inventory, patterns: list[str]) -> None:
    keep: list[Host] = []
    for pattern in patterns:
        found = list(inventory.groups.get(pattern, [])) or [h for h in inventory if fnmatch.fnmatch(h.name, pattern)]
        if not found:
            raise InventoryLoadError(f"--limit {pattern}: no host or group of the inventory matches it")
        keep += [host for host in found if host not in keep]
    # pyinfra's CLI keeps every host and limits the state; a restricted inventory is simpler to
    # hand around (validation, reports) and its hosts keep their data through the same lookups
    inventory.hosts = {name: host for name, host in inventory.hosts.items() if host in keep}
    for name, members in list(inventory.groups.items()):
        inventory.groups[name] = [host for host in members if host in keep]


def host_data(inventory: Inventory) -> dict[str, dict[str, Any]]:
    """``{host name: its data}``: override, host, group and global data merged as pyinfra does."""
    return {host.name: host.data.dict() for host in inventory}


def override_data(inventory: Inventory) -> dict[str, Any]:
    return dict(inventory.get_override_data())


class ConnectionTuning(BaseStateCallback):
    """State callback: each new connection tuned (TCP_NODELAY, the idle poll), each connection
    error kept."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def host_connect(self, state: State, host: Host) -> None:  # type: ignore[override]
        tune_connection(host)

    def host_connect_error(self, state: State, host: Host, error: Any) -> None:  # type: ignore[override]
        self.errors[host.name] = str(error.args[0] if getattr(error, "args", None) else error)


def make_state(inventory: Inventory, parallel: int | None = None, connect_timeout: int = 10) -> State:
    """A pyinfra state over the inventory: ``parallel`` hosts at once (default: pyinfra's choice),
    SSH connections given up after ``connect_timeout`` seconds, every connection tuned."""
    config = Config(CONNECT_TIMEOUT=connect_timeout, FAIL_PERCENT=None)
    if parallel:
        config.PARALLEL = parallel
    state = State(inventory, config)
    state.add_callback_handler(ConnectionTuning())
    return state


def _callback(state: State) -> ConnectionTuning | None:
    return next((h for h in state.callback_handlers if isinstance(h, ConnectionTuning)), None)


def _connect_error(state: State, host: Host, error: BaseException | None = None) -> str:
    callback = _callback(state)
    found = callback.errors.get(host.name) if callback else None
    return found or (str(error) if error else "could not connect")


def connect(state: State, then: Callable[[Host], None] | None = None) -> dict[str, str]:
    """Connect to every host at once; ``{host name: why}`` of those that could not be reached.
    Never raises for an unreachable host (pyinfra's ``connect_all`` raises when none is left).

    + then: called with each host as soon as it is connected (in its greenlet), e.g. to read its
      facts while other hosts still connect; it must not raise
    """

    def one(host: Host) -> None:
        host.connect(show_errors=False)
        if host.connected:
            state.activate_host(host)
            if then is not None:
                then(host)

    hosts = [host for host in state.inventory if not host.connected]
    greenlets = {state.pool.spawn(one, host): host for host in hosts}
    gevent.joinall(list(greenlets))
    return {host.name: _connect_error(state, host, greenlet.exception)
            for greenlet, host in greenlets.items() if not host.connected}


def disconnect(state: State) -> None:
    for host in state.inventory:
        if host.connected:
            host.disconnect()


def gather(state: State, fact: type[FactBase[T]], per_host: Callable[[Host], Mapping[str, Any]] | None = None,
           **kwargs: Any) -> dict[str, HostFact[T]]:
    """One fact from every host of the state, concurrently: one command per host (connecting
    first where needed). Never raises for a host: unreachable and failed hosts say so.
    ``per_host``: each host's own arguments, added to ``kwargs``."""

    def one(host: Host) -> HostFact[T]:
        started = time.monotonic()
        with ctx_state.use(state), ctx_host.use(host):
            if not host.connected:
                host.connect(show_errors=False)
                if not host.connected:
                    return HostFact(None, "unreachable", _connect_error(state, host), time.monotonic() - started)
                state.activate_host(host)
            try:
                value = get_fact(state, host, fact, kwargs={**kwargs, **(per_host(host) if per_host else {})})
            except ConnectError as error:
                return HostFact(None, "unreachable", str(error), time.monotonic() - started)
            except PyinfraError as error:
                # pyinfra fails the host, then raises "No hosts remaining!" when it was the last one
                if host not in state.failed_hosts:
                    return HostFact(None, "failed", str(error), time.monotonic() - started)
                value = fact.default()
            except (OSError, EOFError) as error:  # the connection dropped in the middle of the command
                return HostFact(None, "unreachable", f"{type(error).__name__}: {error}", time.monotonic() - started)
        seconds = time.monotonic() - started
        if host in state.failed_hosts:
            return HostFact(value, "failed", f"the {fact.__name__} command failed on the host", seconds)
        return HostFact(value, "ok", "", seconds)

    hosts = list(state.inventory)
    greenlets = [state.pool.spawn(one, host) for host in hosts]
    gevent.joinall(greenlets)
    results: dict[str, HostFact[T]] = {}
    for host, greenlet in zip(hosts, greenlets):
        if greenlet.successful():
            results[host.name] = greenlet.value
        else:  # a bug in a fact's parser: report it on that host, keep the others
            error = greenlet.exception
            results[host.name] = HostFact(None, "failed", f"{type(error).__name__}: {error}")
    return results
