"""PID 1 of one virtual Pi: builds its private world, starts its services, then reaps.

Started by the farm daemon as ``unshare --mount --uts --net --pid --fork ... python3 -m
pyinfra_ratos.sim.pi_init PI_DIR`` (Debian's python3, stdlib only). Inside those fresh namespaces
it mounts copy-on-write ``/etc /usr /var /root /opt /srv`` (overlayfs: the farm's base layer and
the machine's own tree below, the Pi's upper dir on top), the Pi's own ``/home``, private
``/tmp /run /dev /proc``, sets the hostname, brings up the Pi's own network, starts Moonraker and
Klipper through the ``systemctl`` stand-in and writes ``PI_DIR/ready``. When it dies, the kernel
kills every process of the Pi and drops its mounts and network with the namespaces: that is how the
farm stops a Pi without ever looking processes up by name.

``PI_DIR/pi.json`` (written by the farm) tells it everything::

    {"name": "vcore-01", "base": "/state/base", "network": "online",
     "services": {"moonraker": "active", "klipper": "active"}}
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import traceback

# imported before the mounts: the farm's copy of the sim may be hidden by the Pi's own /tmp
from pyinfra_ratos.sim import procs, usb

SIM_LIB = "/usr/local/lib/ratos-sim"
SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
OVERLAID = ("/etc", "/usr", "/var", "/root", "/opt", "/srv")
DEVICES = {  # name: (major, minor, mode)
    "null": (1, 3, 0o666),
    "zero": (1, 5, 0o666),
    "full": (1, 7, 0o666),
    "random": (1, 8, 0o666),
    "urandom": (1, 9, 0o666),
    "tty": (5, 0, 0o666),
}


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)


def outer_pid() -> int:
    """Our pid as the root namespace sees it, read before /proc is remounted."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("NSpid:"):
                return int(line.split()[1])
    raise RuntimeError("no NSpid in /proc/self/status")


def mount(fstype: str, source: str, target: str, options: str = "") -> None:
    argv = ["mount", "-t", fstype]
    if options:
        argv += ["-o", options]
    run(*argv, source, target)


def setup_mounts(pi_dir: str, base: str) -> None:
    run("mount", "--make-rprivate", "/")
    for top in OVERLAID:
        if not os.path.isdir(top):
            continue
        name = top.strip("/")
        upper = os.path.join(pi_dir, "upper", name)
        work = os.path.join(pi_dir, "work", name)
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        lower = top
        base_layer = os.path.join(base, name)
        if os.path.isdir(base_layer):
            lower = f"{base_layer}:{top}"
        mount("overlay", "overlay", top, f"lowerdir={lower},upperdir={upper},workdir={work}")
    run("mount", "--bind", os.path.join(pi_dir, "home"), "/home")
    mount("tmpfs", "tmpfs", "/tmp", "mode=1777,size=256m")
    mount("tmpfs", "tmpfs", "/run", "mode=0755,size=64m")
    for directory in ("/run/sshd", "/run/ratos-sim", "/run/lock"):
        os.makedirs(directory, exist_ok=True)
    os.chmod("/run/sshd", 0o755)
    mount("proc", "proc", "/proc")
    setup_dev()


def setup_dev() -> None:
    mount("tmpfs", "tmpfs", "/dev", "mode=0755,size=8m")
    for name, (major, minor, mode) in DEVICES.items():
        path = f"/dev/{name}"
        os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
        os.chmod(path, mode)
    for directory in ("/dev/pts", "/dev/shm", "/dev/serial"):
        os.makedirs(directory)
    mount("devpts", "devpts", "/dev/pts", "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.symlink("pts/ptmx", "/dev/ptmx")
    mount("tmpfs", "tmpfs", "/dev/shm", "mode=1777")
    for index, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{index}", f"/dev/{name}")
    os.symlink("/proc/self/fd", "/dev/fd")


def setup_network(network: str) -> None:
    """The Pi's own network: loopback only, so nothing it sends can leave this machine.

    An online Pi has a default route (onto its own loopback), and names of the outside world it
    needs resolve, through its /etc/hosts, to stand-ins on its own loopback. An offline Pi has no
    default route at all: connects fail at once with "Network is unreachable", DNS fails.
    """
    run("ip", "link", "set", "lo", "up")
    # multicast on lo, for the Pi's user-space CAN segment (sim.can); the group never leaves the Pi
    run("ip", "route", "add", "224.0.0.0/4", "dev", "lo")
    if network == "online":
        run("ip", "route", "add", "default", "dev", "lo")


def serve_internet_standin(address: str) -> None:
    """What an online Pi reaches of the outside world: its git remote's host, on its own loopback.

    /etc/hosts of an online Pi maps the hosts it needs (github.com) to ``address``; this thread
    accepts TCP there (https and git ports), so reachability checks see an online Pi as online
    without a packet leaving the machine.
    """
    import threading

    run("ip", "addr", "add", f"{address}/32", "dev", "lo")
    for port in (443, 9418):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(64)

        def accept(sock: socket.socket = listener) -> None:
            while True:
                conn, _ = sock.accept()
                conn.close()

        # the thread inherits a mask blocking the signals PID 1 waits for, so they reach it
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        threading.Thread(target=accept, daemon=True).start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def start_usb(bus_dir: str) -> None:
    """The Pi's boards on its own emulated USB bus (see pyinfra_ratos.sim.usb)."""
    usb.start(
        "/var/lib/ratos-sim/usb-spec.json",
        state_dir="/var/lib/ratos-sim/usb",
        bus_dir=bus_dir,
        pid_file="/run/ratos-sim/usb.pid",
        pistate_path="/var/lib/ratos-sim/state.json",
    )


def start_services(services: dict[str, str]) -> None:
    for unit in ("moonraker", "klipper", "klipper-mcu"):
        if services.get(unit, "active") == "active":
            run("/usr/local/bin/systemctl", "start", unit)
    if services.get("klipper") in ("activating", "deactivating"):
        # caught half-way through a job at start: the knob brings the unit there (sim.knobs)
        run("/usr/local/bin/ratos-sim-knob", f"klipper={services['klipper']}")


def reap_forever() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    while True:
        procs.reap_children()
        info = signal.sigtimedwait(SIGNALS, 60)
        if info is not None and info.si_signo != signal.SIGCHLD:
            return  # our exit takes the whole Pi down with it


def write_file(dir_fd: int, name: str, text: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644, dir_fd=dir_fd)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def main(pi_dir: str) -> int:
    # The Pi's own /tmp, /home... may hide the state directory once mounted: keep a handle on it.
    pi_fd = os.open(pi_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open(os.path.join(pi_dir, "pi.json"), encoding="utf-8") as handle:
            config = json.load(handle)
        procs.write_pidfile(os.path.join(pi_dir, "init.pid"), outer_pid())
        setup_mounts(pi_dir, config["base"])
        socket.sethostname(config["name"])
        setup_network(config["network"])
        if config["network"] == "online":
            serve_internet_standin(config["internet"])
        os.environ.update(
            PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            HOME="/root",
            # the sim code as the Pi itself sees it (the farm's path may be hidden by now)
            PYTHONPATH=SIM_LIB,
        )
        os.chdir("/")
        start_usb(config["usb_bus"])
        start_services(config.get("services", {}))
    except Exception:
        write_file(pi_fd, "init.log", traceback.format_exc())
        return 1
    write_file(pi_fd, "ready", "ready\n")
    reap_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
