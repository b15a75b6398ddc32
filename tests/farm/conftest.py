"""Fixtures that bring virtual farms up over real namespaces and sshd (root only)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.sim import farm as sim_farm

# Klipper's scripts/flash_usb.py enter_bootloader(), as a RatOS Pi runs it
BOOTLOADER_REQUEST = """
import fcntl, struct, sys, termios
with open(sys.argv[1], "rb") as f:
    fd = f.fileno()
    fcntl.ioctl(fd, termios.TIOCMBIS, struct.pack("I", termios.TIOCM_DTR))
    t = termios.tcgetattr(fd)
    t[4] = t[5] = termios.B1200
    termios.tcsetattr(fd, termios.TCSANOW, t)
    fcntl.ioctl(fd, termios.TIOCMBIC, struct.pack("I", termios.TIOCM_DTR))
"""

SCENARIOS = Path(sim_farm.__file__).parent / "scenarios"
VENV_BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="the virtual farm needs root")
        for item in items:
            item.add_marker(skip)


@dataclass
class RunningFarm:
    state: Path
    info: dict[str, Any]

    @property
    def inventory(self) -> Path:
        return self.state / "inventory.py"

    def pi(self, name: str) -> dict[str, Any]:
        return next(p for p in self.info["pis"] if p["name"] == name)

    def ssh(self, name: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command on a Pi with the real OpenSSH client, strict host key checking on."""
        pi = self.pi(name)
        argv = [
            "ssh", "-i", str(self.state / "id_ed25519"),
            "-o", f"UserKnownHostsFile={self.state / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-p", str(self.info["ssh_port"]), f"pi@{pi['address']}", command,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)

    def pyinfra(self, *args: str, check: bool = True, inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
        argv = [str(VENV_BIN / "pyinfra"), "-y", str(inventory or self.inventory), *args]
        # pyinfra prints its progress and command output on stderr: keep both, in order
        return subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, check=check
        )

    def upper(self, name: str) -> Path:
        """The Pi's copy-on-write layer, as the controller sees it."""
        return self.state / "pis" / name / "upper"


def start_farm(scenario: Path, state: Path) -> RunningFarm:
    info = sim_farm.up(scenario, state)
    return RunningFarm(state=state, info=info)


@pytest.fixture(scope="session")
def three_pis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    state = tmp_path_factory.mktemp("farm-three")
    running = start_farm(SCENARIOS / "three-pis.toml", state)
    try:
        yield running
    finally:
        sim_farm.down(state)
