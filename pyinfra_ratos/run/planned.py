"""Add an operation to a deploy only when it has something to do; add one while executing.

pyinfra plans an operation by adding it and running its body to see whether it yields a command;
adding one costs pyinfra ~0.5-1 ms of its own work per operation and host (global arguments,
type hints), whether or not the body yields anything, and the execution phase walks it again. An
update of a converged fleet is made of such operations only: five per printer.

:func:`add_if_needed` first runs the body as pyinfra's plan would (``op._inner``, pyinfra's handle
on the undecorated operation) and adds the operation only when it yields a command. That is the
same decision pyinfra's plan makes, but only for an operation that reads nothing from the host
itself (every fact it needs passed in), so its plan is what it executes; the callers say so.
Logs the body writes (``host.noop``, warnings) are held and written once: by this run when the
operation is not added, by pyinfra's own run when it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyinfra import logger


class NotNeeded:
    """Stands for an operation left out because it had nothing to do: it answers as pyinfra's
    ``OperationMeta`` of an operation that ran and changed nothing."""

    will_change = False
    stdout_lines: list[str] = []
    stderr_lines: list[str] = []

    def is_complete(self) -> bool:
        return True

    def did_change(self) -> bool:
        return False

    def did_error(self) -> bool:
        return False

    def did_succeed(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "NotNeeded()"


NOT_NEEDED = NotNeeded()


class _Hold:
    """Keeps the records pyinfra's logger hands it, in the list of the innermost :func:`_held_logs`.
    What a logger needs of a handler (``level``, ``handle``) and no more: one for the process, not
    registered with ``logging`` (a ``logging.Handler`` costs a lock and a registry entry to make)."""

    level = logging.NOTSET

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []

    def handle(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return True


_HOLD = _Hold()


@contextmanager
def _held_logs() -> Iterator[list[logging.LogRecord]]:
    handlers, propagate, outer = logger.handlers[:], logger.propagate, _HOLD.records
    held: list[logging.LogRecord] = []
    _HOLD.records = held
    logger.handlers[:] = [_HOLD]  # type: ignore[list-item]
    logger.propagate = False
    try:
        yield held
    finally:
        logger.handlers[:] = handlers
        logger.propagate = propagate
        _HOLD.records = outer


def add_if_needed(op: Callable[..., Any], **kwargs: Any) -> Any:
    """``op(**kwargs)`` when its body yields a command, else :data:`NOT_NEEDED` (nothing added).

    Only for an operation given every fact it reads: one that reads the host itself would read
    it twice (here and when added) and could yield at execution what it did not at plan.
    """
    own = {key: value for key, value in kwargs.items() if key != "name" and not key.startswith("_")}
    with _held_logs() as held:
        needed = next(iter(op._inner(**own)), None) is not None  # type: ignore[attr-defined]
    if needed:
        return op(**kwargs)  # pyinfra runs the body again and writes its logs itself
    for record in held:
        logger.handle(record)
    return NOT_NEEDED


@contextmanager
def added_while_executing() -> Iterator[None]:
    """For the operations a ``python.call`` function adds while pyinfra executes.

    pyinfra's API (``ratos-fleet``) hashes an operation by its position on its host, and runs the
    operations of a batch by hash. One added while executing on a Pi with few operations can take
    the hash of a later operation planned on another Pi; pyinfra then runs it a second time for
    this Pi ("Cannot complete an already complete operation"). Inside this block operations get a
    loop position of their own (pyinfra's ``host.loop_position``, which its hash includes), so no
    planned operation has their hash. Under the pyinfra CLI, whose hashes come from the call
    stack, it changes nothing that matters.
    """
    from pyinfra import host

    host.loop_position.append("added-while-executing")
    try:
        yield
    finally:
        host.loop_position.pop()
