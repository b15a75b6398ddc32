"""``ratos-fleet status|plan|update`` on a hostile inventory: exit 2 naming host and field, no
traceback, no secret, no raw escape, and not one TCP connection to the Pis' SSH port.

The Pis' address is a port this test listens on: a control run with a valid inventory shows that
a run which gets as far as SSH is seen there, so the bad runs cannot pass by accident.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

OCTOPUS = "btt-octopus-pro-h723-11"
BOARDS = [{"board": OCTOPUS, "port": "1-1.3"}]
# host -> (its bad data, the field its error names)
BAD: dict[str, tuple[dict[str, Any], str]] = {
    "port-newline": ({"boards": [{"board": OCTOPUS, "port": "1-1.3\n"}]}, "boards[0].port"),
    "..": ({}, "inventory name"),
    "nul-path": ({"firmware_cache": "x\0y"}, "firmware_cache"),
    "int-kconfig-key": ({"boards": [{"board": OCTOPUS, "port": "1-1.3", "kconfig": {5: "x"}}]}, "boards[0].kconfig"),
    "boards-not-a-list": ({"boards": "octopus"}, "boards"),
    "secret": ({"ssh_password": 987654321}, "ssh_password"),
    "escape": ({"hotend": "rapido\x1b]0;pwned\x07"}, "hotend"),
    "provision-key": ({"timezone": "UTC;reboot"}, "timezone"),
    "commit-newline": ({"klipper_commit": "a" * 40 + "\n"}, "klipper_commit"),
    "dup-a": ({"boards": [{"board": OCTOPUS, "port": "1-1.3"}, {"board": "btt-ebb42-12", "port": "1-1.3"}]},
              "boards[1].port"),
}


class FakePi:
    """A TCP port on 127.0.0.1 in place of a Pi's sshd: counts the connections made to it."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()  # no SSH banner: the client gives up at once

    def seen(self) -> int:
        time.sleep(0.3)  # a connection made just before the run ended is counted too
        return self.connections


@pytest.fixture(scope="module")
def pi() -> Iterator[FakePi]:
    fake = FakePi()
    yield fake
    fake.server.close()


def inventory(folder: Path, pi: FakePi, hosts: dict[str, dict[str, Any]]) -> Path:
    path = folder / "inventory.py"
    entries = ", ".join(f"({name!r}, {{'ssh_hostname': '127.0.0.1', 'ssh_port': {pi.port}, "
                        f"'boards': {BOARDS!r}, **{data!r}}})" for name, data in hosts.items())
    path.write_text(f"pis = [{entries}]\n")
    return path


def ratos_fleet(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyinfra_ratos.fleet.cli", *args], cwd=folder, capture_output=True,
                          text=True, timeout=180, check=False)


def test_a_valid_inventory_does_reach_the_pis_port(pi: FakePi, tmp_path: Path) -> None:
    before = pi.seen()
    done = ratos_fleet(tmp_path, "status", str(inventory(tmp_path, pi, {"good": {}})), "--connect-timeout", "5")
    assert done.returncode == 1 and "unreachable" in done.stdout, done.stdout + done.stderr
    assert pi.seen() > before


@pytest.mark.parametrize("command", [("status",), ("plan",), ("update", "--report", "reports")])
def test_a_hostile_inventory_exits_2_naming_every_host_and_field_before_any_connection(
    pi: FakePi, tmp_path: Path, command: tuple[str, ...],
) -> None:
    path = inventory(tmp_path, pi, {name: data for name, (data, _) in BAD.items()})
    before = pi.seen()
    done = ratos_fleet(tmp_path, command[0], str(path), *command[1:])
    assert pi.seen() == before, "a connection was made"
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "reports").exists()
    errors = [line.strip() for line in done.stderr.splitlines()]
    for host, (_, field) in BAD.items():
        assert any(line.startswith(f"host {host}: field '{field}") for line in errors), (host, done.stderr)
    assert "987654321" not in done.stderr
    assert not any(char in done.stderr for char in "\x1b\x07\0"), "raw control characters on the terminal"
