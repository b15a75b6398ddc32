"""The main process of a unit the ``systemctl`` stand-in starts (klipper, klipper-mcu).

It does nothing but exist, so that ``MainPID``, ``/printer/info``'s ``process_id`` and "did the
restart really happen" checks see a real process that a restart replaces. It detaches (double
fork: whoever started it never has to reap it), prints its pid on stdout for the starter to
record in the unit's pid file, then waits for SIGTERM. Inside a virtual Pi it dies with the Pi's
PID namespace.

Run: ``python3 -m pyinfra_ratos.sim.mainproc UNIT``. Stdlib only.
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> int:
    if os.fork() > 0:
        os._exit(0)  # the starter waits for this first child, then reads our pid
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    sys.stdout.write(f"{os.getpid()}\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
