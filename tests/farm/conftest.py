"""Fixtures that bring virtual farms up over real namespaces and sshd (root only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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

    def version(self, which: str) -> str:
        """The Klipper version of the farm's ``old`` or ``current`` release."""
        return self.info["versions"][which]["version"]

    def klippy_pid(self, name: str) -> int:
        """The pid of the Pi's Klippy stand-in (0 when it is stopped or was never started)."""
        return json.loads((self.upper(name) / "var/lib/ratos-sim/state.json").read_text()).get("klippy_pid", 0)

    def usb_dir(self, name: str) -> Path:
        return self.upper(name) / "var/lib/ratos-sim/usb"

    def usb_events(self, name: str) -> list[dict[str, Any]]:
        """What the Pi's emulated boards went through (bootloader requests, writes, resets), in order."""
        path = self.usb_dir(name) / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def update(self, report: Path, *limit: str, max_failed: str = "100") -> subprocess.CompletedProcess[str]:
        """``ratos-fleet update`` of the farm (or the ``limit`` hosts), its report in ``report``."""
        args = [str(VENV_BIN / "ratos-fleet"), "update", str(self.inventory), "--max-failed", max_failed,
                "--report", str(report)]
        for name in limit:
            args += ["--limit", name]
        return subprocess.run(args, capture_output=True, text=True, timeout=900)

    def first_update(self, report: Path, max_failed: str = "100") -> dict[str, dict[str, Any]]:
        """The first update of a lab whose faulty Pis fail (exit 1): each printer's report entry, with
        ``klipper_restarted``: its Klippy runs again under a new pid (stopped for the flash)."""
        pids = {pi["name"]: self.klippy_pid(pi["name"]) for pi in self.info["pis"]}
        result = self.update(report, max_failed=max_failed)
        assert result.returncode == 1, result.stdout + result.stderr  # the faulty Pis failed
        printers = {p["host"]: p for p in json.loads((report / "report.json").read_text())["printers"]}
        for name, entry in printers.items():
            entry["klipper_restarted"] = self.klippy_pid(name) not in (pids[name], 0, None)
        return printers


def start_farm(scenario: Path, state: Path) -> RunningFarm:
    info = sim_farm.up(scenario, state)
    return RunningFarm(state=state, info=info)


@contextmanager
def running_farm(tmp_path_factory: pytest.TempPathFactory, scenario: Path, name: str) -> Iterator[RunningFarm]:
    """A farm of ``scenario`` up in a fresh folder for the ``with`` block, then down."""
    state = tmp_path_factory.mktemp(name)
    running = start_farm(scenario, state)
    try:
        yield running
    finally:
        sim_farm.down(state)


@pytest.fixture(scope="session")
def three_pis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIOS / "three-pis.toml", "farm-three") as running:
        yield running
