"""The farm daemon: starts every virtual Pi and hands SSH connections into them.

``python -m pyinfra_ratos.sim.daemon STATE_DIR`` (started detached by ``ratos-fleet sim up``).
For each Pi of ``STATE_DIR/farm.json`` it starts the Pi's PID 1 (:mod:`pi_init`) in fresh mount,
UTS, network and PID namespaces, and listens on the Pi's own loopback address in the root
namespace. Each accepted connection becomes ``sshd -i`` (inetd mode) started inside that Pi's
namespaces, so the real OpenSSH server of the Pi answers while no packet leaves 127.0.0.0/8.

Lifetime is chained so that nothing outlives the farm: each Pi's ``unshare`` dies with this
daemon (``PR_SET_PDEATHSIG``), each Pi's PID 1 dies with its ``unshare`` (``--kill-child``), and the
kernel kills a PID namespace's processes when its PID 1 dies. Pid files (pid + start time) name
every process for ``sim down``.
"""

from __future__ import annotations

import ctypes
import json
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pyinfra_ratos.sim import procs

PR_SET_PDEATHSIG = 1
SSHD = "/usr/sbin/sshd"


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Farm:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.config: dict[str, Any] = json.loads((state_dir / "farm.json").read_text())
        self.selector = selectors.DefaultSelector()
        self.stopping = False

    def pi_dir(self, name: str) -> Path:
        return self.state_dir / "pis" / name

    def start_pi(self, pi: dict[str, Any]) -> None:
        pi_dir = self.pi_dir(pi["name"])
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": self.config["sim_lib"],
            "LANG": "C.UTF-8",
        }
        with open(pi_dir / "init.log", "ab") as log:
            subprocess.Popen(
                [
                    "unshare", "--mount", "--uts", "--net", "--pid", "--fork",
                    "--kill-child=SIGKILL", "--propagation", "private",
                    "/usr/bin/python3", "-m", "pyinfra_ratos.sim.pi_init", str(pi_dir),
                ],
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )

    def wait_ready(self, timeout: float) -> list[str]:
        """Wait for every Pi to report ready; returns the names of those that failed."""
        pending = {pi["name"] for pi in self.config["pis"]}
        deadline = time.monotonic() + timeout
        failed: list[str] = []
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                pi_dir = self.pi_dir(name)
                if (pi_dir / "ready").exists():
                    pending.discard(name)
                elif (pi_dir / "init.pid").exists() and procs.pidfile_alive(str(pi_dir / "init.pid")) is None:
                    pending.discard(name)
                    failed.append(name)
            procs.reap_children()
            time.sleep(0.05)
        return failed + sorted(pending)

    def listen(self) -> None:
        for pi in self.config["pis"]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((pi["address"], self.config["ssh_port"]))
            sock.listen(128)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, pi["name"])

    def hand_over(self, conn: socket.socket, name: str) -> None:
        pid = procs.pidfile_alive(str(self.pi_dir(name) / "init.pid"))
        if pid is None:
            conn.close()  # the Pi is down: the client sees the connection closed, as with a dead sshd
            return
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        subprocess.Popen(
            [
                "nsenter", f"--target={pid}", "--mount", "--uts", "--net", "--pid", "--wd=/",
                SSHD, "-i", "-f", "/etc/ssh/sshd_config", "-E", "/var/log/ratos-sim/sshd.log",
            ],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            stdin=conn.fileno(),
            stdout=conn.fileno(),
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        conn.close()

    def serve(self) -> None:
        while not self.stopping:
            for key, _ in self.selector.select(timeout=1.0):
                try:
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                self.hand_over(conn, key.data)
            procs.reap_children()

    def stop(self) -> None:
        for pi in self.config["pis"]:
            procs.stop_pidfile(str(self.pi_dir(pi["name"]) / "init.pid"), signal.SIGKILL)


def main(state_dir_arg: str) -> int:
    state_dir = Path(state_dir_arg)
    procs.write_pidfile(str(state_dir / "daemon.pid"))
    farm = Farm(state_dir)

    def request_stop(signum: int, frame: object) -> None:
        farm.stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        farm.listen()
        for pi in farm.config["pis"]:
            farm.start_pi(pi)
        failed = farm.wait_ready(timeout=60 + 2 * len(farm.config["pis"]))
        if failed:
            (state_dir / "failed").write_text("\n".join(failed) + "\n")
            farm.stop()
            return 1
        (state_dir / "ready").write_text("ready\n")
        farm.serve()
    finally:
        farm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
