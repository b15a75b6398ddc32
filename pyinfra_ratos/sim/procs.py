"""Pid files that name exactly one process: the pid plus its start time.

The farm stops what it started by these files, never by process name, and a pid that the
kernel has since given to another process (same number, other start time) is left alone.
Stdlib only: it also runs inside the virtual Pis under Debian's python3.
"""

from __future__ import annotations

import os
import signal
import time


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name is in parentheses and may hold spaces: split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def write_pidfile(path: str, pid: int | None = None) -> None:
    pid = os.getpid() if pid is None else pid
    started = start_time(pid)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(f"{pid} {started}\n")
    os.replace(tmp, path)


def read_pidfile(path: str) -> tuple[int, int] | None:
    try:
        with open(path, encoding="ascii") as handle:
            pid_text, started_text = handle.read().split()
        return int(pid_text), int(started_text)
    except (FileNotFoundError, ValueError):
        return None


def pidfile_alive(path: str) -> int | None:
    """The pid named by the file if that very process still runs, else None."""
    entry = read_pidfile(path)
    if entry is None:
        return None
    pid, started = entry
    return pid if start_time(pid) == started else None


def stop_pidfile(path: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Signal the process of a pid file and wait for it to go (SIGKILL after ``timeout``).

    Returns True when a process was stopped.
    """
    entry = read_pidfile(path)
    if entry is None or start_time(entry[0]) != entry[1]:
        return False
    pid, started = entry
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while start_time(pid) == started:
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                raise TimeoutError(f"process {pid} ({path}) does not die")
            os.kill(pid, signal.SIGKILL)
            sig = signal.SIGKILL
            deadline = time.monotonic() + timeout
        time.sleep(0.02)
    return True


def pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def wait_namespaces_empty(namespaces: set[str], timeout: float = 120.0) -> None:
    """Wait until no process (zombies included) is left in these PID namespaces. Killed processes
    leave within a second on a quiet machine; at load averages near 100 (a shared 2-core
    machine) 30 s was measured to run out, so the bound is generous: it only matters when
    something really does not die."""
    deadline = time.monotonic() + timeout
    while namespaces:
        left = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                namespace = pid_namespace(int(entry))
                if namespace in namespaces:
                    left.add(namespace)
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes still run in {sorted(left)}")
        time.sleep(0.02)


def reap_children() -> None:
    """Collect every child that has exited, without waiting for the others."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
