"""Ctrl-C and SIGTERM during a fleet run: stop starting new work, let the work in flight finish.

A flash in flight must not be cut (a board half written, a printer with its mainboard on the new
firmware and its toolboard on the old one), so the first SIGINT or SIGTERM only raises a flag that
the fleet runner reads before it starts each new printer (:func:`stop_requested`); the printers
already started finish their transaction, the report is written with every printer's state and
the run exits 130. A second signal is the operator insisting: it raises ``KeyboardInterrupt``
(the CLI still writes the report it has, without a traceback).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_STOP: dict[str, Any] = {"signal": None}


def stop_requested() -> str | None:
    """The name of the signal that asked the run to stop (``"SIGINT"``), None while none did."""
    return _STOP["signal"]


def request_stop(name: str = "SIGINT") -> None:
    """Ask the run to stop before its next printer (what the signal handler does; tests call it)."""
    if _STOP["signal"] is None:
        _STOP["signal"] = name


def reset() -> None:
    _STOP["signal"] = None


def _handler(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if _STOP["signal"] is not None:
        _quiet_hub()
        raise KeyboardInterrupt(name)
    request_stop(name)
    print(f"\nratos-fleet: {name}: finishing the printers in flight, starting no new one "
          "(again to stop at once)", file=sys.stderr, flush=True)


def _quiet_hub() -> None:
    # raised inside gevent's hub, the interrupt would be printed there with a traceback before it
    # reaches the run; the run reports it, so the hub keeps quiet
    gevent = sys.modules.get("gevent")
    if gevent is not None:
        try:
            gevent.get_hub().exception_stream = None
        except Exception:  # noqa: BLE001 - only the message's looks are at stake
            pass


@contextmanager
def graceful() -> Iterator[None]:
    """While inside: SIGINT/SIGTERM set the stop flag instead of killing the run."""
    reset()
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["graceful", "request_stop", "reset", "stop_requested"]
