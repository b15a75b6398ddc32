"""pyinfra's current State per greenlet, so that several States run at once in one process.

pyinfra keeps the current host and config per greenlet, but the current State (``ctx_state``,
read by every operation called while another one executes, e.g. in a ``python.call``) is one
process-wide value: two States running side by side in greenlets (the rolling window of
``ratos-fleet update``: one State per printer) would each see whichever the other set last.

:func:`install` gives ``ctx_state`` a container that keeps the value per greenlet and, where a
greenlet set none, answers the value of the greenlet that spawned it (pyinfra sets the State and
then spawns a greenlet per host), up to the process-wide value. Single-State use (pyinfra's CLI,
one run) sees exactly what it saw before.
"""

from __future__ import annotations

import weakref
from typing import Any

import gevent
from pyinfra.context import ctx_state

_UNSET = object()


class InheritedByGreenlet:
    """A ``module`` attribute per greenlet, inherited from the spawning greenlet."""

    def __init__(self, default: Any = None) -> None:
        self._values: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._default = default

    @property
    def module(self) -> Any:
        current: Any = gevent.getcurrent()
        while current is not None:
            found = self._values.get(current, _UNSET)
            if found is not _UNSET:
                return found
            parent = getattr(current, "spawning_greenlet", None)
            current = parent() if parent is not None else None
        return self._default

    @module.setter
    def module(self, value: Any) -> None:
        self._values[gevent.getcurrent()] = value


def install() -> None:
    """Make ``ctx_state`` greenlet-aware (idempotent; keeps the value already set)."""
    context = ctx_state.context
    if not isinstance(context._container, InheritedByGreenlet):
        context._container = InheritedByGreenlet(getattr(context._container, "module", None))
