"""pyinfra's per-call work that a fleet run would repeat for nothing, done once per process.

``pyinfra.api.arguments.all_global_arguments`` evaluates ``typing.get_type_hints`` of its
arguments' TypedDicts on every call, and ``pop_global_arguments`` calls it for every operation of
every host: a tenth of the controller's CPU in a converged 250-Pi update (cProfile). The hints of a
class do not change while the process runs, so :func:`install` keeps the first answer.
"""

from __future__ import annotations

from typing import Any

from pyinfra.api import arguments


def install() -> None:
    """Answer ``all_global_arguments`` from the first call's result (idempotent)."""
    if getattr(arguments.all_global_arguments, "once", False):
        return
    hints = tuple(arguments.all_global_arguments())

    def all_global_arguments() -> list[tuple[str, Any]]:
        return list(hints)

    all_global_arguments.once = True  # type: ignore[attr-defined]
    arguments.all_global_arguments = all_global_arguments  # type: ignore[assignment]
