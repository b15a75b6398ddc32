"""Add an operation to a deploy only when it has something to do.

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


class _Hold(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _held_logs() -> Iterator[list[logging.LogRecord]]:
    hold = _Hold()
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers[:] = [hold]
    logger.propagate = False
    try:
        yield hold.records
    finally:
        logger.handlers[:] = handlers
        logger.propagate = propagate


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
