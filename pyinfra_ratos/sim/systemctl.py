"""A ``systemctl`` stand-in for a virtual Pi, where no systemd runs: klipper, moonraker, klipper-mcu.

Output text and exit codes follow systemd 252 (Debian 12), including the polkit refusal a
non-root user gets in a non-interactive shell, and the ``show`` forms pyinfra's ``SystemdStatus``
and ``SystemdEnabled`` facts parse. Every change goes through :func:`pistate.update`, so what
the Moonraker stand-in derives from the same file always agrees with what this reports.

``systemctl show UNIT -p NAME[,NAME] [--value]`` prints, like systemd, the asked properties in
systemd's own (D-Bus) order, not the order asked, empty ones included: ``MainPID`` (the real pid
of the unit's main process, new on every restart, 0 when not running), ``ExecMainStartTimestamp``
(one-second resolution, as systemd prints it) and ``ExecMainStartTimestampMonotonic`` (usec,
new on every restart), ``NRestarts`` (0: systemd counts only ``Restart=`` restarts, never a
``systemctl restart``), ``LoadState``, ``ActiveState``, ``SubState`` and a few more. A unit can be
caught ``activating`` (auto-restart) or ``deactivating`` (stop-sigterm), set by
``unit_transition`` in the state file (see :mod:`pyinfra_ratos.sim.units`): ``is-active`` prints
the state and exits 3, ``status`` exits 3, and a start/stop/restart completes the transition first.

Run: ``python3 -m pyinfra_ratos.sim.systemctl VERB [OPTIONS] [UNIT...]`` (installed as
``/usr/local/bin/systemctl`` in each Pi). Stdlib only.
"""

from __future__ import annotations

import fnmatch
import os
import pwd
import socket
import subprocess
import sys
import time
from typing import Any

from pyinfra_ratos.sim import pistate, procs, units
from pyinfra_ratos.sim.klippy import derive_klippy, mcu_connects

UNITS = {
    "klipper": "Klipper 3D Printer Firmware SV1",
    "moonraker": "API Server for Klipper SV1",
    "klipper-mcu": "Starts the MCU Linux firmware for klipper on startup",
}
MOONRAKER_MODULE = "pyinfra_ratos.sim.moonraker"
DEFAULT_MOONRAKER_PID_FILE = "/run/ratos-sim/moonraker.pid"
KLIPPER_MCU_BINARY = "/usr/local/bin/klipper_mcu"  # what klipper-mcu.service runs
UID_ENV = "RATOS_SIM_UID"  # who the caller is, for tests that cannot drop root
SYSTEMD_VERSION = "252.33-1~deb12u1"
CHANGING_VERBS = {"start", "stop", "restart", "reload", "try-restart", "reload-or-restart",
                  "enable", "disable", "daemon-reload"}
JOB_VERBS = {"start", "stop", "restart", "reload", "try-restart", "reload-or-restart"}
# systemd's D-Bus order (Service, then exec context, then Unit properties): `show -p` keeps it
SHOW_ORDER = ("Type", "Restart", "MainPID", "NRestarts", "ExecMainStartTimestamp",
              "ExecMainStartTimestampMonotonic", "ExecMainPID", "User", "Id", "Names",
              "Description", "LoadState", "ActiveState", "SubState", "FragmentPath",
              "UnitFileState", "UnitFilePreset")


class Failure(Exception):
    """A systemctl error: the message printed to stderr and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- paths and probes


def home_of(state: dict[str, Any]) -> str:
    if state.get("home"):
        return str(state["home"])
    user = state.get("klipper_user", "pi")
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return f"/home/{user}"


def klippy_log_path(state: dict[str, Any]) -> str:
    return state.get("klippy_log") or f"{home_of(state)}/printer_data/logs/klippy.log"


def moonraker_log_path(state: dict[str, Any]) -> str:
    return state.get("moonraker_log") or f"{home_of(state)}/printer_data/logs/moonraker.log"


def moonraker_pid_file(state: dict[str, Any]) -> str:
    return state.get("moonraker_pid_file") or DEFAULT_MOONRAKER_PID_FILE


def unit_base(arg: str) -> str:
    """``klipper.service`` and ``klipper`` both name the unit ``klipper``."""
    return arg[: -len(".service")] if arg.endswith(".service") else arg


def unit_id(arg: str) -> str:
    return arg if "." in arg else f"{arg}.service"


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def moonraker_pid(state: dict[str, Any]) -> int | None:
    """The running stand-in named by the pid file; a recycled pid is not ours."""
    pid = procs.pidfile_alive(moonraker_pid_file(state))
    if pid is None or MOONRAKER_MODULE not in cmdline(pid):
        return None
    return pid


def running(name: str, state: dict[str, Any]) -> bool:
    """The unit's process side: the flag in the state file (Moonraker: its live process)."""
    if name == "moonraker":
        return moonraker_pid(state) is not None
    return state.get("services", {}).get(name) == "active"


def active_state(name: str, state: dict[str, Any]) -> str:
    """systemd's ActiveState: active, inactive, or a transition caught half-way."""
    return units.transition(name, state) or ("active" if running(name, state) else "inactive")


def is_active(name: str, state: dict[str, Any]) -> bool:
    return active_state(name, state) == "active"


def main_pid(name: str, state: dict[str, Any], path: str | None = None) -> int:
    """MainPID: the unit's real main process while it runs (or is being stopped), else 0."""
    if not running(name, state) or units.transition(name, state) == "activating":
        return 0
    if name == "moonraker":
        return moonraker_pid(state) or 0
    pid = units.process_pid(name, state, path)
    if pid is None and name == "klipper":
        return int(state.get("klippy_pid") or 0)  # a state file written by hand: no process
    return pid or 0


def is_enabled(name: str, state: dict[str, Any]) -> bool:
    return bool(state.get("enabled", {}).get(name, True))


def effective_uid() -> int:
    return int(os.environ.get(UID_ENV, os.geteuid()))


# ---------------------------------------------------------------- klipper


def git_describe_argv(klipper_path: str, user: str, euid: int) -> list[str]:
    """klippy's own version command (klippy/util.py), run as the user klipper runs as.

    Git refuses a checkout owned by someone else ("dubious ownership"), so running it as
    that user is what makes a root-built or root-owned checkout read ``?`` as on a real Pi.
    """
    describe = ["git", "-C", klipper_path, "describe", "--always", "--tags", "--long", "--dirty"]
    if euid == 0 and user != "root":
        return ["runuser", "-u", user, "--", *describe]
    return describe


def host_version(klipper_path: str, user: str) -> str:
    env = dict(os.environ)
    try:
        env["HOME"] = pwd.getpwnam(user).pw_dir
    except KeyError:
        pass
    try:
        done = subprocess.run(git_describe_argv(klipper_path, user, effective_uid()),
                              capture_output=True, text=True, env=env, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except OSError:
        pass
    # klippy falls back to klippy/.version (release tarballs), then "?"
    try:
        with open(os.path.join(klipper_path, "klippy", ".version"), encoding="utf-8") as handle:
            return handle.read().strip() or "?"
    except OSError:
        return "?"


def message_count(firmware: dict[str, Any]) -> int:
    if "message_count" in firmware:
        return int(firmware["message_count"])
    counted = sum(len(firmware.get(key, {})) for key in ("commands", "responses", "output"))
    return counted or 123


def klippy_connect_lines(state: dict[str, Any]) -> list[str]:
    """The lines klippy logs per MCU it identifies (klippy/mcu.py ``log_info``), in order."""
    lines = []
    for mcu in state.get("mcus", []):
        if not mcu_connects(mcu, state.get("services", {})):
            break
        firmware = mcu["firmware"]
        name = mcu["name"].split()[-1]
        lines.append(f"Loaded MCU '{name}' {message_count(firmware)} commands "
                     f"({firmware.get('version', '')} / {firmware.get('build_versions', '')})")
        constants = " ".join(f"{key}={value}" for key, value in firmware.get("config", {}).items())
        lines.append(f"MCU '{name}' config: {constants}")
    return lines


def klippy_start_lines(state: dict[str, Any]) -> list[str]:
    home = home_of(state)
    klipper_path = state.get("klipper_path", f"{home}/klipper")
    now = time.time()
    args = [f"{klipper_path}/klippy/klippy.py", f"{home}/printer_data/config/printer.cfg",
            "-I", f"{home}/printer_data/comms/klippy.serial", "-l", klippy_log_path(state),
            "-a", f"{home}/printer_data/comms/klippy.sock"]
    lines = ["Starting Klippy...", f"Args: {args!r}",
             f"Git version: {state.get('host_version', '?')!r}", "CPU: 4 core ?",
             f"Python: {sys.version!r}",
             f"Start printer at {time.asctime(time.localtime(now))} ({now:.1f} {time.monotonic():.1f})"]
    lines += klippy_connect_lines(state)
    klippy = derive_klippy(state)
    if klippy.state != "ready":
        lines.append(klippy.state_message)
    return lines


def append_klippy_log(state: dict[str, Any], lines: list[str]) -> None:
    path = klippy_log_path(state)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


def start_klipper(path: str | None) -> None:
    current = pistate.load(path)
    user = current.get("klipper_user", "pi")
    version = host_version(current.get("klipper_path", f"{home_of(current)}/klipper"), user)
    pid = units.start_process("klipper", user, path)
    with pistate.update(path) as state:
        state["host_version"] = version
        state.setdefault("services", {})["klipper"] = "active"
        state["klippy_pid"] = pid  # the unit's main process: printer/info's process_id, MainPID
        snapshot = dict(state)
    append_klippy_log(snapshot, klippy_start_lines(snapshot))


def stop_klipper(path: str | None) -> None:
    """klippy exits: a fresh one starts ready. Out of a shutdown, the job it held is gone."""
    units.stop_process("klipper", path)
    with pistate.update(path) as state:
        state.setdefault("services", {})["klipper"] = "inactive"
        if state.get("klippy") == "shutdown":
            clear_shutdown(state)


def clear_shutdown(state: dict[str, Any]) -> None:
    """What a klippy restart (or FIRMWARE_RESTART) leaves of an M112: ready, no job."""
    state["klippy"] = "ready"
    state["print_state"] = "standby"
    state["print_filename"] = ""


def set_service_flag(name: str, active: bool, path: str | None) -> None:
    with pistate.update(path) as state:
        state.setdefault("services", {})[name] = "active" if active else "inactive"


# (e_machine, ELF class) a Pi's userland executes
_ELF_OF_ARCH = {"armhf": (40, 1), "aarch64": (183, 2)}


def elf_runs_on(data: bytes, arch: str) -> bool:
    """Whether the kernel of a Pi with this userland would execute this ELF (machine and class)."""
    if len(data) < 20 or data[:4] != b"\x7fELF":
        return False
    return (int.from_bytes(data[18:20], "little"), data[4]) == _ELF_OF_ARCH.get(arch)


def start_klipper_mcu(path: str | None) -> None:
    """Like the real unit, run the installed host-MCU binary: the MCUs served by klipper-mcu then
    report the dictionary embedded in it. Without an installed binary the scenario's firmware stays."""
    from pyinfra_ratos.sim.usb.firmware import find_dictionary, firmware_summary

    try:
        with open(KLIPPER_MCU_BINARY, "rb") as handle:
            data = handle.read()
    except OSError:
        data = None
    dictionary = find_dictionary(data) if data is not None else None
    arch = pistate.load(path).get("arch", "armhf")
    if data is not None and not elf_runs_on(data, arch):
        # "Exec format error": the unit (Type=simple, so systemctl itself succeeds) fails with
        # status=203/EXEC and no host MCU ever connects
        with pistate.update(path) as state:
            state.setdefault("services", {})["klipper-mcu"] = "inactive"
            state["klipper_mcu_error"] = f"{KLIPPER_MCU_BINARY}: Exec format error (the Pi is {arch})"
        return
    units.start_process("klipper-mcu", "root", path)
    with pistate.update(path) as state:
        state.setdefault("services", {})["klipper-mcu"] = "active"
        if dictionary is not None:
            for mcu in state.get("mcus", []):
                if mcu.get("service") == "klipper-mcu":
                    mcu["firmware"] = firmware_summary(dictionary)


# ---------------------------------------------------------------- moonraker


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_moonraker(path: str | None) -> None:
    state = pistate.load(path)
    pid_file = moonraker_pid_file(state)
    host = state.get("moonraker_host", "127.0.0.1")
    port = int(state.get("moonraker_port", 7125))
    log_path = moonraker_log_path(state)
    for directory in (os.path.dirname(pid_file), os.path.dirname(log_path)):
        os.makedirs(directory, exist_ok=True)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        part for part in (package_root, os.environ.get("PYTHONPATH", "")) if part))
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", MOONRAKER_MODULE, "--host", host, "--port", str(port),
             "--state", pistate.state_path(path), "--pid-file", pid_file],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd="/", env=env)
    procs.write_pidfile(pid_file, child.pid)
    # Type=notify-like: return once it answers, so the next command can talk to it
    deadline = time.monotonic() + 15
    while not port_open(host, port):
        if child.poll() is not None or time.monotonic() > deadline:
            raise Failure("Job for moonraker.service failed because the control process exited "
                          "with error code.\nSee \"systemctl status moonraker.service\" and "
                          "\"journalctl -xeu moonraker.service\" for details.", 1)
        time.sleep(0.05)
    units.record_start("moonraker", path)
    set_service_flag("moonraker", True, path)


def stop_moonraker(path: str | None) -> None:
    state = pistate.load(path)
    if moonraker_pid(state) is not None:
        procs.stop_pidfile(moonraker_pid_file(state))
    set_service_flag("moonraker", False, path)


# ---------------------------------------------------------------- actions


def start_service(name: str, path: str | None = None) -> None:
    if running(name, pistate.load(path)):
        return
    if name == "klipper":
        start_klipper(path)
    elif name == "moonraker":
        start_moonraker(path)
    elif name == "klipper-mcu":
        start_klipper_mcu(path)
    else:
        set_service_flag(name, True, path)


def stop_service(name: str, path: str | None = None) -> None:
    if name == "moonraker":
        stop_moonraker(path)
    elif name == "klipper":
        stop_klipper(path)
    else:
        units.stop_process(name, path)
        set_service_flag(name, False, path)


def finish_transition(name: str, action: str, path: str | None) -> None:
    """A job on a unit caught half-way waits for that, as systemd queues it (see units)."""
    caught = units.transition(name, pistate.load(path))
    if caught is None:
        return
    units.set_transition(name, None, path)
    if caught == "deactivating":
        stop_service(name, path)
    elif action == "stop":
        stop_service(name, path)


def restart_service(name: str, path: str | None = None) -> None:
    stop_service(name, path)
    start_service(name, path)


def service_action(action: str, name: str, path: str | None = None) -> None:
    """start/stop/restart one of our units (no permission check: the caller is trusted)."""
    finish_transition(name, action, path)
    {"start": start_service, "stop": stop_service, "restart": restart_service}[action](name, path)


def set_enabled(name: str, enabled: bool, path: str | None) -> None:
    with pistate.update(path) as state:
        state.setdefault("enabled", {})[name] = enabled


# ---------------------------------------------------------------- command line


def unit_properties(arg: str, state: dict[str, Any], path: str | None = None) -> dict[str, str]:
    name, ident = unit_base(arg), unit_id(arg)
    service = {"Type": "simple", "Restart": "no", "MainPID": "0", "NRestarts": "0",
               "ExecMainStartTimestamp": "", "ExecMainStartTimestampMonotonic": "0",
               "ExecMainPID": "0"}
    if name not in UNITS:
        return {**service, "Id": ident, "Names": ident, "Description": ident,
                "LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead",
                "FragmentPath": "", "UnitFileState": "", "UnitFilePreset": ""}
    active = active_state(name, state)
    pid = str(main_pid(name, state, path))
    started = units.started(name, state)
    if started is not None:
        service["ExecMainStartTimestamp"] = units.timestamp(started[0])
        service["ExecMainStartTimestampMonotonic"] = str(started[1])
    return {
        **service,
        "Restart": "always",  # klipper, moonraker and klipper-mcu units all say Restart=always
        "MainPID": pid, "ExecMainPID": pid,
        "NRestarts": str(int(state.get("nrestarts", {}).get(name, 0))),
        "User": "root" if name == "klipper-mcu" else state.get("klipper_user", "pi"),
        "Id": ident, "Names": ident, "Description": UNITS[name], "LoadState": "loaded",
        "ActiveState": active, "SubState": units.SUB_STATES[active],
        "FragmentPath": f"/etc/systemd/system/{ident}",
        "UnitFileState": "enabled" if is_enabled(name, state) else "disabled",
        "UnitFilePreset": "enabled",
    }


def matching_units(patterns: list[str]) -> list[str]:
    """Unit args as systemctl expands them: globs match our units, plain names stay."""
    units: list[str] = []
    for pattern in patterns:
        if any(char in pattern for char in "*?["):
            units += [unit_id(name) for name in UNITS if fnmatch.fnmatch(unit_id(name), pattern)]
        else:
            units.append(unit_id(pattern))
    return list(dict.fromkeys(units))


def parse_args(argv: list[str]) -> tuple[str, list[str], dict[str, Any]]:
    opts: dict[str, Any] = {"properties": [], "all": False, "value": False, "plain": False,
                            "no_legend": False, "quiet": False, "now": False, "user": False}
    positional: list[str] = []
    flags = {"--all": "all", "-a": "all", "--value": "value", "--plain": "plain",
             "--no-legend": "no_legend", "--quiet": "quiet", "-q": "quiet", "--now": "now",
             "--user": "user"}
    ignored = {"--no-pager", "--system", "--no-block", "--full", "-l", "--no-ask-password",
               "--failed", "--legend=no"}
    with_value = {"--type", "-t", "--state", "--lines", "-n", "--output", "-o", "--machine",
                  "-M", "--property", "-p", "-P"}
    args = iter(argv)
    for arg in args:
        if arg.startswith("-") and arg != "-":
            key, _, inline = arg.partition("=") if arg.startswith("--") else (arg[:2], "", arg[2:])
            if key in flags and not inline:
                opts[flags[key]] = True
            elif key in ignored or arg in ignored:
                continue
            elif key in with_value:
                value = inline or next(args, "")
                if key in ("--property", "-p", "-P"):
                    opts["properties"] += value.split(",")
                    opts["value"] = opts["value"] or key == "-P"
            else:
                raise Failure(f"systemctl: unrecognized option '{arg}'", 1)
        else:
            positional.append(arg)
    verb = positional[0] if positional else "list-units"
    return verb, positional[1:], opts


def show(names: list[str], state: dict[str, Any], opts: dict[str, Any],
         path: str | None = None) -> str:
    if not names:
        return f"Version={SYSTEMD_VERSION}\nArchitecture=x86-64\n"
    blocks = []
    for unit in matching_units(names):
        props = unit_properties(unit, state, path)
        lines = []
        for key in SHOW_ORDER:
            if key not in props or (opts["properties"] and key not in opts["properties"]):
                continue
            # systemd shows empty values with --all, and whenever -p asked for them by name
            if not props[key] and not (opts["all"] or opts["properties"]):
                continue
            lines.append(props[key] if opts["value"] else f"{key}={props[key]}")
        blocks.append("".join(f"{line}\n" for line in lines))
    return "\n".join(blocks)


def status_text(unit: str, state: dict[str, Any], path: str | None = None) -> str:
    props = unit_properties(unit, state, path)
    active, sub = props["ActiveState"], props["SubState"]
    # systemd's glyphs: a white circle for inactive, a black one for active and transitions
    glyph = "○" if active == "inactive" else "●"
    result = " (Result: exit-code)" if sub == "auto-restart" else ""
    since = ""
    if props["ExecMainStartTimestamp"] and active != "inactive":
        since = f" since {props['ExecMainStartTimestamp']}"
    lines = [f"{glyph} {props['Id']} - {props['Description']}",
             f"     Loaded: loaded ({props['FragmentPath']}; {props['UnitFileState']}; "
             "preset: enabled)",
             f"     Active: {active} ({sub}){result}{since}"]
    if props["MainPID"] != "0":
        lines.append(f"   Main PID: {props['MainPID']} (python3)")
    return "".join(f"{line}\n" for line in lines)


def list_units(patterns: list[str], state: dict[str, Any], opts: dict[str, Any]) -> str:
    units = matching_units(patterns) if patterns else [unit_id(name) for name in UNITS]
    rows = []
    for unit in units:
        props = unit_properties(unit, state)
        if props["LoadState"] != "loaded" or (not opts["all"] and props["ActiveState"] != "active"):
            continue
        rows.append([unit, props["LoadState"], props["ActiveState"], props["SubState"],
                     props["Description"]])
    header = ["UNIT", "LOAD", "ACTIVE", "SUB", "DESCRIPTION"]
    table = rows if opts["no_legend"] else [header, *rows]
    widths = [max(len(row[col]) for row in table) if table else 0 for col in range(4)]
    margin = "" if opts["plain"] else "  "
    out = [margin + " ".join(row[col].ljust(widths[col]) for col in range(4)) + " " + row[4]
           for row in table]
    if not opts["no_legend"]:
        out += ["", "LOAD   = Reflects whether the unit definition was properly loaded.",
                "ACTIVE = The high-level unit activation state, i.e. generalization of SUB.",
                "SUB    = The low-level unit activation state, values depend on unit type.",
                f"{len(rows)} loaded units listed."
                + ("" if opts["all"] else " Pass --all to see loaded but inactive units, too."),
                "To show all installed unit files use 'systemctl list-unit-files'."]
    return "".join(f"{line}\n" for line in out)


def run_job(verb: str, unit: str, path: str | None, root: bool) -> None:
    name = unit_base(unit)
    if name not in UNITS:
        missing = "not loaded" if verb == "stop" else "not found"
        raise Failure(f"Failed to {verb} {unit}: Unit {unit} {missing}.", 5)
    if not root:
        raise Failure(f"Failed to {verb} {unit}: Interactive authentication required.\n"
                      f"See system logs and 'systemctl status {unit}' for details.", 1)
    if verb == "reload":
        raise Failure(f"Failed to reload {unit}: Job type reload is not applicable "
                      f"for unit {unit}.", 3)
    state = pistate.load(path)
    if verb == "try-restart" and not is_active(name, state):
        return
    action = {"reload-or-restart": "restart", "try-restart": "restart"}.get(verb, verb)
    service_action(action, name, path)


def run_enable(verb: str, unit: str, path: str | None, opts: dict[str, Any]) -> str:
    name = unit_base(unit)
    if name not in UNITS:
        raise Failure(f"Failed to {verb} unit: Unit file {unit} does not exist.", 1)
    enabling = verb == "enable"
    message = ""
    if is_enabled(name, pistate.load(path)) != enabling:
        link = f"/etc/systemd/system/multi-user.target.wants/{unit}"
        message = (f"Created symlink {link} → /etc/systemd/system/{unit}.\n" if enabling
                   else f'Removed "{link}".\n')
        set_enabled(name, enabling, path)
    if opts["now"]:
        service_action("start" if enabling else "stop", name, path)
    return message


def run(argv: list[str], path: str | None = None) -> tuple[int, str, str]:
    """Run one systemctl command line; returns (exit status, stdout, stderr)."""
    out: list[str] = []
    err: list[str] = []
    status = 0
    try:
        verb, units, opts = parse_args(argv)
        if opts["user"]:
            raise Failure("Failed to connect to bus: $DBUS_SESSION_BUS_ADDRESS and "
                          "$XDG_RUNTIME_DIR not defined (consider using --machine=<user>@.host "
                          "--user to connect to bus of other user)", 1)
        root = effective_uid() == 0
        if verb in CHANGING_VERBS and verb != "daemon-reload" and not units:
            raise Failure("Too few arguments.", 1)
        if verb in CHANGING_VERBS and not root and verb in ("enable", "disable", "daemon-reload"):
            what = "reload daemon" if verb == "daemon-reload" else f"{verb} unit"
            raise Failure(f"Failed to {what}: Interactive authentication required.", 1)
        if verb == "daemon-reload":
            pass
        elif verb in JOB_VERBS:
            for unit in units:
                try:
                    run_job(verb, unit_id(unit), path, root)
                except Failure as failure:
                    err.append(f"{failure}\n")
                    status = failure.status
        elif verb in ("enable", "disable"):
            for unit in units:
                err.append(run_enable(verb, unit_id(unit), path, opts))
        elif verb in ("is-active", "is-enabled"):
            state = pistate.load(path)
            status = 3 if verb == "is-active" else 1
            for unit in units:
                props = unit_properties(unit_id(unit), state, path)
                if verb == "is-enabled" and props["LoadState"] != "loaded":
                    raise Failure(f"Failed to get unit file state for {unit_id(unit)}: "
                                  "No such file or directory", 1)
                word = props["ActiveState"] if verb == "is-active" else props["UnitFileState"]
                if not opts["quiet"]:
                    out.append(f"{word}\n")
                if word in ("active", "enabled"):
                    status = 0
        elif verb == "status":
            state = pistate.load(path)
            texts = []
            for unit in (matching_units(units) or [unit_id(name) for name in UNITS]):
                if unit_base(unit) not in UNITS:
                    err.append(f"Unit {unit} could not be found.\n")
                    status = 4
                    continue
                texts.append(status_text(unit, state, path))
                # systemd: anything but active (or reloading) is "program is not running"
                if not is_active(unit_base(unit), state) and status == 0:
                    status = 3
            out.append("\n".join(texts))
        elif verb == "show":
            out.append(show(units, pistate.load(path), opts, path))
        elif verb == "list-units":
            out.append(list_units(units, pistate.load(path), opts))
        else:
            raise Failure(f"Unknown command verb {verb}.", 1)
    except Failure as failure:
        err.append(f"{failure}\n")
        status = failure.status
    return status, "".join(out), "".join(err)


def main(argv: list[str] | None = None) -> int:
    status, out, err = run(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


if __name__ == "__main__":
    sys.exit(main())
