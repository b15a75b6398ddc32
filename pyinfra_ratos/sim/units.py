"""What systemd knows of a unit beyond active/inactive: its main process, start time, transitions.

Used by the ``systemctl`` and Moonraker stand-ins (stdlib only, runs inside the virtual Pi).

- **Main process.** ``klipper`` and ``klipper-mcu`` get a real process when started
  (:mod:`pyinfra_ratos.sim.mainproc`, double-forked so nobody has to reap it, running as the
  unit's user), named by ``<run dir>/<unit>.pid`` (pid + start time, :mod:`procs`). Its pid is
  the unit's ``MainPID``, so every restart gives a new one; stopping the unit kills it. The run
  dir is ``/run/ratos-sim`` for the Pi's own state file, else the state file's directory (tests),
  or the state key ``run_dir``. Moonraker's main process is the Moonraker stand-in itself.
- **Start time.** ``state["unit_started"][unit] = [realtime_usec, monotonic_usec]``, written
  when the main process starts, kept after a stop (systemd keeps ``ExecMainStartTimestamp`` of
  the last run). ``ExecMainStartTimestamp`` prints it at systemd's one-second resolution
  (``Sat 2026-12-05 09:45:34 UTC``); ``ExecMainStartTimestampMonotonic`` is CLOCK_MONOTONIC in
  microseconds and so changes on every restart.
- **Transitions.** ``state["unit_transition"][unit]`` = ``activating`` (systemd waiting to
  restart a unit whose process died: ``activating (auto-restart)``, no main process) or
  ``deactivating`` (stop in progress: ``deactivating (stop-sigterm)``, the main process still
  runs). klippy is disconnected in both. Any start/stop/restart job first lets the transition
  finish the way systemd's queued job would (``activating`` then starts, ``deactivating`` stops),
  then runs; so the command succeeds and the unit ends active (start/restart) or inactive (stop).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from typing import Any

from pyinfra_ratos.sim import pistate, procs

MAINPROC_MODULE = "pyinfra_ratos.sim.mainproc"
PROCESS_UNITS = ("klipper", "klipper-mcu")
TRANSITIONS = ("activating", "deactivating")
SUB_STATES = {"active": "running", "inactive": "dead", "activating": "auto-restart",
              "deactivating": "stop-sigterm"}


def run_dir(state: dict[str, Any], path: str | None) -> str:
    if state.get("run_dir"):
        return str(state["run_dir"])
    target = pistate.state_path(path)
    if os.path.abspath(target) == pistate.DEFAULT_STATE_PATH:
        return "/run/ratos-sim"
    return os.path.dirname(os.path.abspath(target))


def pid_file(name: str, state: dict[str, Any], path: str | None) -> str:
    return os.path.join(run_dir(state, path), f"{name}.pid")


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def process_pid(name: str, state: dict[str, Any], path: str | None) -> int | None:
    """The unit's running main process, if any (a recycled pid is not ours)."""
    pid = procs.pidfile_alive(pid_file(name, state, path))
    if pid is None or MAINPROC_MODULE not in cmdline(pid):
        return None
    return pid


def transition(name: str, state: dict[str, Any]) -> str | None:
    value = state.get("unit_transition", {}).get(name)
    return value if value in TRANSITIONS else None


def _as_user(user: str) -> dict[str, Any]:
    """Popen arguments that run the process as ``user`` (root only; unknown users: as we are)."""
    if os.geteuid() != 0 or user == "root":
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return {}
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def start_process(name: str, user: str, path: str | None) -> int:
    """Start the unit's main process; record its pid file and start time; return its pid."""
    state = pistate.load(path)
    target = pid_file(name, state, path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        part for part in (package_root, os.environ.get("PYTHONPATH", "")) if part))
    child = subprocess.Popen([sys.executable, "-m", MAINPROC_MODULE, name],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, start_new_session=True, cwd="/", env=env,
                             **_as_user(user))
    assert child.stdout is not None
    line = child.stdout.readline()
    child.stdout.close()
    child.wait()
    pid = int(line)
    procs.write_pidfile(target, pid)
    with pistate.update(path) as current:
        current.setdefault("unit_started", {})[name] = [
            int(time.time() * 1_000_000), int(time.monotonic() * 1_000_000)]
    return pid


def record_start(name: str, path: str | None) -> None:
    """A start time for a unit whose main process is not ours to start (Moonraker)."""
    with pistate.update(path) as current:
        current.setdefault("unit_started", {})[name] = [
            int(time.time() * 1_000_000), int(time.monotonic() * 1_000_000)]


def stop_process(name: str, path: str | None) -> None:
    state = pistate.load(path)
    if process_pid(name, state, path) is not None:
        procs.stop_pidfile(pid_file(name, state, path))


def set_transition(name: str, value: str | None, path: str | None) -> None:
    with pistate.update(path) as state:
        transitions = state.setdefault("unit_transition", {})
        if value is None:
            transitions.pop(name, None)
        else:
            transitions[name] = value


def timestamp(usec: int) -> str:
    """systemd's ``format_timestamp``: ``Sat 2026-12-05 09:45:34 UTC`` (local time zone)."""
    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(usec / 1_000_000))


def started(name: str, state: dict[str, Any]) -> tuple[int, int] | None:
    entry = state.get("unit_started", {}).get(name)
    return (int(entry[0]), int(entry[1])) if entry else None
