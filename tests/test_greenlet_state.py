"""pyinfra's current State per greenlet: two States side by side never see each other's."""

from __future__ import annotations

import gevent
from pyinfra.context import ctx_state

from pyinfra_ratos.run import greenlet_state


def test_each_greenlet_and_the_greenlets_it_spawns_see_the_state_it_set() -> None:
    greenlet_state.install()
    seen: dict[str, list[object]] = {"a": [], "b": []}

    def printer(name: str, state: object) -> None:
        with ctx_state.use(state):
            for _ in range(3):
                gevent.sleep(0)  # the other printer runs meanwhile and sets its own
                seen[name].append(ctx_state.get())
                child = gevent.spawn(ctx_state.get)  # as pyinfra's pool runs a host's operation
                seen[name].append(child.get())

    a, b = object(), object()
    gevent.joinall([gevent.spawn(printer, "a", a), gevent.spawn(printer, "b", b)])
    assert seen == {"a": [a] * 6, "b": [b] * 6}
    assert ctx_state.get() is None  # the main greenlet's own value is untouched


def test_install_twice_keeps_what_was_set() -> None:
    greenlet_state.install()
    marker = object()
    with ctx_state.use(marker):
        greenlet_state.install()
        assert ctx_state.get() is marker
