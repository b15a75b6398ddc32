"""pyinfra's per-call work that a fleet run would repeat for nothing, done once.

``pyinfra.api.arguments.all_global_arguments`` evaluates ``typing.get_type_hints`` of its
arguments' TypedDicts on every call, and ``pop_global_arguments`` calls it for every operation of
every host: a tenth of the controller's CPU in a converged 250-Pi update (cProfile). The hints of a
class do not change while the process runs, so :func:`install` keeps the first answer, also for
``pyinfra.api.facts`` (which imported the function by name: every ``FactBase`` subclass calls it when
defined, 106 times when the update deploy imports pyinfra's operations) and for the connectors'
``host_to_connector_data`` (the SSH connector's 20-odd hints, per printer's State).

``pop_global_arguments`` also looks each of its 32 arguments up in the host's data, and each lookup
merges the host's groups' data again (pyinfra keeps the layers as functions, for data that can
change while a deploy is planned): :func:`freeze_inventory_data` evaluates the inventory's layers
once for a run whose inventory does not change (the fleet's; writes to ``host.data`` still land
in its override layer, and the deploy's defaults stay live).

A converged printer of the fleet then asks ``pop_global_arguments`` the same question twice: for
its one fact (read before any deploy runs) and for the update deploy itself, both without a global
argument given and outside any deploy or operation, so both answers are the host's data and the
config's defaults (0.7 M instructions, ~0.1 ms, each: callgrind, 1000 calls with the data frozen;
~3% of a converged printer's controller work). :func:`install` keeps that context-free answer per host and
config; any call with a global argument, a deploy or operation context, or a config context is
pyinfra's own, as is everything after the host's data was written to.
"""

from __future__ import annotations

from typing import Any

import functools
import sys
import typing
import weakref

from pyinfra.api import arguments, facts
from pyinfra.connectors import base as connectors_base

import pyinfra.api.deploy  # noqa: F401  the module: ``pyinfra.api.deploy`` the attribute is its decorator

_DEPLOY_MODULE = sys.modules["pyinfra.api.deploy"]


def install() -> None:
    """Answer ``all_global_arguments`` from the first call's result (idempotent)."""
    if getattr(arguments.all_global_arguments, "once", False):
        return
    hints = tuple(arguments.all_global_arguments())

    def all_global_arguments() -> list[tuple[str, Any]]:
        return list(hints)

    all_global_arguments.once = True  # type: ignore[attr-defined]
    arguments.all_global_arguments = all_global_arguments  # type: ignore[assignment]
    facts.all_global_arguments = all_global_arguments  # type: ignore[attr-defined]
    connectors_base.get_type_hints = _type_hints  # type: ignore[attr-defined]
    # the modules that call it without a context (facts, deploys) hold it by name
    facts.pop_global_arguments = _DEPLOY_MODULE.pop_global_arguments = _context_free_kept(  # type: ignore[attr-defined]
        arguments.pop_global_arguments, frozenset(key for key, _ in hints))


def _context_free_kept(original: Any, keys: frozenset[str]) -> Any:
    """``pop_global_arguments`` answering a context-free call from the host's last such answer."""
    kept: weakref.WeakKeyDictionary[Any, tuple[Any, Any, Any]] = weakref.WeakKeyDictionary()

    def pop_global_arguments(state: Any, host: Any, kwargs: dict[str, Any]) -> Any:
        data = host.data.__dict__.get("datas", ())
        own = data[0] if data and isinstance(data[0], dict) else None
        if (own is None or keys.intersection(kwargs) or host.current_deploy_kwargs or host.current_deploy_data
                or host.current_op_deploy_data or arguments.ctx_config.isset()):
            return original(state, host, kwargs)
        found = kept.get(host)
        # the same config, and nothing written to the host's data since (its own, first layer)
        if found is None or found[0] is not state.config or found[1] != own:
            found = (state.config, dict(own), original(state, host, kwargs))
            kept[host] = found
        values, popped = found[2]
        return dict(values), list(popped)

    return pop_global_arguments


@functools.lru_cache(maxsize=32)
def _hints_of(cls: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(typing.get_type_hints(cls).items())


def _type_hints(obj: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``typing.get_type_hints`` of a class, kept per class (a fresh dict each time, as typing's)."""
    if args or kwargs or not isinstance(obj, type):
        return typing.get_type_hints(obj, *args, **kwargs)
    return dict(_hints_of(obj))


def freeze_inventory_data(inventory: Any) -> None:
    """Each host's override, host, group and inventory data layers evaluated now, once, and merged
    into one dict (the first layer holding a key wins, as pyinfra's lookup): a lookup of a key no
    layer has (most of the 32 global arguments) then tries three layers, not six. The host's own
    override layer (``host.data.x = ...``) stays first and the deploy's defaults stay live, last."""
    for host in inventory:
        data = host.data.__dict__
        layers = [layer() if callable(layer) and getattr(layer, "__name__", "") == "<lambda>" else layer
                  for layer in data["datas"]]
        own, rest = layers[0], layers[1:]
        static = []
        while rest and isinstance(rest[0], dict):
            static.append(rest.pop(0))
        merged: dict[str, Any] = {}
        for layer in reversed(static):
            merged.update(layer)
        data["datas"] = (own, merged, *rest)
