"""Knobs that put a virtual Pi's printer stack in a state at run time, the way it would get there.

Each knob is also a scenario key of the Pi (:mod:`pyinfra_ratos.sim.scenario`), which sets it at
farm start. At run time, flip them **on the Pi, as root**, with the command the farm installs as
``/usr/local/bin/ratos-sim-knob``::

    ssh pi@<pi> sudo ratos-sim-knob moonraker_fault=503 state=printing

(from a farm test: ``farm.ssh(name, "sudo ratos-sim-knob klippy=shutdown")``). The state file
lives in the Pi's copy-on-write ``/var``: edits made from outside the Pi (in its overlay's upper
dir) are not reliably seen inside, so always go through the Pi. Unit tests call
:func:`apply` with the state file's path instead. Every knob takes effect at the next request
or command (the stand-ins read the state file afresh each time).

==========================  =========================================================================
``state=S``                 ``print_stats.state`` (standby, printing, paused, complete, cancelled,
                            error); a job state gets a file name (``print_filename``, default
                            benchy.gcode), standby none. ``idle_timeout`` follows (Printing while
                            printing, Ready while paused, else Idle).
``print=start|stop``        a print starts (``printing``) / the job ends and the printer is back to
                            ``standby``: for race tests.
``print_filename=NAME``     the job's file.
``klippy=shutdown|ready``   M112 mid-print: webhooks/printer-info ``shutdown``, "Shutdown due to M112
                            command" + klippy's advice, a running print reads ``paused``; klippy.log
                            gets klippy's "Transition to shutdown state" line. ``ready``: what
                            FIRMWARE_RESTART does (ready again, the job gone: standby).
``moonraker_fault=none|503|hang``  see :mod:`pyinfra_ratos.sim.moonraker`.
``moonraker_hang_seconds=N``       with ``hang``: answer N seconds late (0: never answer).
``klipper=activating``      klipper.service's process died and systemd waits to restart it
                            (``activating (auto-restart)``, MainPID 0, klippy disconnected).
``klipper=deactivating``    a stop in progress (``deactivating (stop-sigterm)``, the process still
                            runs, klippy disconnected); starts klipper first if it was stopped.
``klipper=active|inactive`` finish any transition and start / stop klipper (``systemctl start|stop``).
==========================  =========================================================================

Run: ``python3 -m pyinfra_ratos.sim.knobs [--state PATH] KEY=VALUE...``: exit 0 when every knob
was set, 2 (and nothing changed) when one is unknown or has a bad value, 1 when not run as root
(nothing changed either). Stdlib only.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyinfra_ratos.sim import moonraker, pistate, systemctl, units
from pyinfra_ratos.sim.scenario import KLIPPER_STATES, KLIPPY_STATES, MOONRAKER_FAULTS, PRINT_STATES

DEFAULT_FILENAME = "benchy.gcode"
CHOICES: dict[str, tuple[str, ...]] = {
    "state": PRINT_STATES,
    "print": ("start", "stop"),
    "klippy": KLIPPY_STATES,
    "moonraker_fault": MOONRAKER_FAULTS,
    "klipper": KLIPPER_STATES,
}
FREE = ("print_filename", "moonraker_hang_seconds")


class KnobError(ValueError):
    pass


def parse(settings: list[str]) -> list[tuple[str, str]]:
    """``KEY=VALUE`` words, checked before anything changes."""
    parsed = []
    for word in settings:
        key, sep, value = word.partition("=")
        if not sep or (key not in CHOICES and key not in FREE):
            raise KnobError(f"unknown knob {word!r}; knobs: {', '.join([*CHOICES, *FREE])}")
        if key in CHOICES and value not in CHOICES[key]:
            raise KnobError(f"knob '{key}' is {value!r}; allowed values: {', '.join(CHOICES[key])}")
        if key == "moonraker_hang_seconds":
            try:
                if float(value) < 0:
                    raise ValueError
            except ValueError:
                raise KnobError(f"knob 'moonraker_hang_seconds' is {value!r}; use seconds >= 0") from None
        parsed.append((key, value))
    return parsed


def set_print_state(state: dict[str, Any], print_state: str) -> None:
    state["print_state"] = print_state
    if print_state == "standby":
        state["print_filename"] = ""
    elif not state.get("print_filename"):
        state["print_filename"] = DEFAULT_FILENAME


def set_klipper(value: str, path: str | None) -> None:
    if value == "active":
        systemctl.service_action("start", "klipper", path)
    elif value == "inactive":
        systemctl.service_action("stop", "klipper", path)
    elif value == "activating":
        systemctl.service_action("stop", "klipper", path)
        units.set_transition("klipper", "activating", path)
    else:  # deactivating: the process is still there while systemd stops it
        systemctl.service_action("start", "klipper", path)
        units.set_transition("klipper", "deactivating", path)


def set_klippy(value: str, path: str | None) -> None:
    with pistate.update(path) as state:
        was = state.get("klippy", "ready")
        if value == "shutdown":
            state["klippy"] = "shutdown"
            reason = state.get("klippy_shutdown_reason", moonraker.M112_REASON)
        elif was == "shutdown":
            systemctl.clear_shutdown(state)
        snapshot = dict(state)
    if value == "shutdown" and was != "shutdown":
        systemctl.append_klippy_log(snapshot, [f"Transition to shutdown state: {reason}"])


def apply(settings: list[str], path: str | None = None) -> None:
    """Set knobs in order (``["klippy=shutdown", "moonraker_fault=503"]``) on a state file."""
    for key, value in parse(settings):
        if key == "klipper":
            set_klipper(value, path)
        elif key == "klippy":
            set_klippy(value, path)
        else:
            with pistate.update(path) as state:
                if key == "state":
                    set_print_state(state, value)
                elif key == "print":
                    set_print_state(state, "printing" if value == "start" else "standby")
                elif key == "moonraker_hang_seconds":
                    state[key] = float(value) if "." in value else int(value)
                else:
                    state[key] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ratos-sim-knob", description=__doc__.splitlines()[0])
    parser.add_argument("--state", default=None, help="state file (default: the Pi's own)")
    parser.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        apply(args.settings, args.state)
    except KnobError as error:
        print(f"ratos-sim-knob: {error}", file=sys.stderr)
        return 2
    except PermissionError as error:  # the state file is root's: nothing was written
        print(f"ratos-sim-knob: {error.strerror}: {error.filename}; run it as root (sudo)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
