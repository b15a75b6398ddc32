"""Ctrl-C and SIGTERM during a fleet run raise a flag first; a second signal stops at once."""

from __future__ import annotations

import os
import signal

import pytest

from pyinfra_ratos.fleet import interrupts


@pytest.mark.parametrize("sig,name", [(signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")])
def test_the_first_signal_only_asks_the_run_to_stop(sig: int, name: str) -> None:
    with interrupts.graceful():
        assert interrupts.stop_requested() is None
        os.kill(os.getpid(), sig)
        assert interrupts.stop_requested() == name
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_new_run_starts_with_no_stop_requested() -> None:
    interrupts.request_stop("SIGINT")
    with interrupts.graceful():
        assert interrupts.stop_requested() is None
