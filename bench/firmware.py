"""The firmware deploy's cost per board, against a bare dfu-util, and its builds per identity (root).

    python bench/firmware.py [--runs 3] [--pis 30] [--skip-scale]

1. One virtual Pi with one Octopus Pro H723 v1.1 running Klipper. Side by side, N times each:
   - ``pyinfra deploys/firmware.py`` (dfu-util backend, then pyusb backend): audit, plan, upload
     when needed, bootloader request, flash, board back as Klipper, Klipper restarted, version
     verified through Moonraker: the whole run, and the flash agent's own share (``duration_s``);
   - a bare ``sudo dfu-util -p PORT -R -a 0 -s ADDR:leave -D klipper.bin`` over SSH, the board put
     into DFU first with Klipper's 1200-baud request (not timed); timed until dfu-util exits and
     until the board is back as Klipper. It writes the farm's ``old`` image, so the next deploy
     has a board to bring forward again.
   The first deploy of each backend (the build, the upload, the pyusb client) is a warm-up.
2. A farm of ``--pis`` Pis with three board models, all behind: one deploy run; prints builds,
   identities and their ratio (must be 1.0), and the run's wall time.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pyinfra_ratos.firmware.builder import builds_made
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.sim import farm as sim_farm

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploys" / "firmware.py"
PYINFRA = Path(sys.executable).parent / "pyinfra"
BOARD = "btt-octopus-pro-h723-11"
PORT = "1-1.1"
PI = "bench-fw"
SCALE_BOARDS = ("btt-octopus-pro-h723-11", "btt-octopus-pro-446", "btt-skr-mini-e3-30")
RESULT = re.compile(r'RATOS-RESULT (\{".*\})')
# Klipper's scripts/flash_usb.py enter_bootloader(), as a RatOS Pi runs it
BOOTLOADER_REQUEST = (
    "import fcntl, struct, sys, termios\n"
    "with open(sys.argv[1], 'rb') as f:\n"
    "    fd = f.fileno()\n"
    "    fcntl.ioctl(fd, termios.TIOCMBIS, struct.pack('I', termios.TIOCM_DTR))\n"
    "    t = termios.tcgetattr(fd)\n"
    "    t[4] = t[5] = termios.B1200\n"
    "    termios.tcsetattr(fd, termios.TCSANOW, t)\n"
    "    fcntl.ioctl(fd, termios.TIOCMBIC, struct.pack('I', termios.TIOCM_DTR))\n"
)


class Farm:
    def __init__(self, state: Path, info: dict[str, Any]) -> None:
        self.state, self.info = state, info

    def ssh(self, pi: str, command: str) -> subprocess.CompletedProcess[str]:
        address = next(p["address"] for p in self.info["pis"] if p["name"] == pi)
        return subprocess.run(
            ["ssh", "-i", str(self.state / "id_ed25519"), "-o", f"UserKnownHostsFile={self.state / 'known_hosts'}",
             "-o", "BatchMode=yes", "-p", str(self.info["ssh_port"]), f"pi@{address}", command],
            capture_output=True, text=True, timeout=120)

    def pyinfra(self, *args: str) -> tuple[float, str]:
        began = time.monotonic()
        done = subprocess.run([str(PYINFRA), "-y", str(self.state / "inventory.py"), str(DEPLOY), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
        return time.monotonic() - began, done.stdout

    def board_mode(self, pi: str, port: str) -> str | None:
        path = self.state / "pis" / pi / "upper/var/lib/ratos-sim/usb/boards.json"
        try:
            return json.loads(path.read_text()).get(port, {}).get("mode")
        except (OSError, ValueError):
            return None

    def wait_mode(self, pi: str, port: str, mode: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.board_mode(pi, port) != mode:
            if time.monotonic() > deadline:
                sys.exit(f"{pi} {port}: not in mode {mode} after {timeout:g} s")
            time.sleep(0.02)


def start(scenario: str, prefix: str) -> Farm:
    state = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    (state.parent / f"{state.name}.toml").write_text(scenario)
    info = sim_farm.up(state.parent / f"{state.name}.toml", state)
    return Farm(state, info)


def stop(farm: Farm) -> None:
    sim_farm.down(farm.state)
    shutil.rmtree(farm.state, ignore_errors=True)
    (farm.state.parent / f"{farm.state.name}.toml").unlink(missing_ok=True)


def deploy_once(farm: Farm, backend: str) -> tuple[float, float]:
    """(seconds of the whole pyinfra run, seconds the flash agent reports) of one deploy run."""
    wall, out = farm.pyinfra("--limit", PI, "--data", f"flash_backend={backend}", "-vvv")
    records = [json.loads(r) for r in RESULT.findall(out)]
    if len(records) != 1 or records[0]["action"] != "flashed":
        sys.exit(f"the deploy did not flash exactly one board:\n{out[-3000:]}")
    return wall, float(records[0]["duration_s"])


def bare_dfu_util(farm: Farm, image: str, address: int) -> tuple[float, float]:
    """(seconds dfu-util ran over SSH, seconds until the board is back as Klipper)."""
    tty = farm.ssh(PI, f"ls /dev/serial/by-path/*usb-0:{PORT[2:]}:1.0").stdout.strip()
    farm.ssh(PI, f"python3 -c \"{BOOTLOADER_REQUEST}\" {tty}")
    farm.wait_mode(PI, PORT, "dfu")
    began = time.monotonic()
    done = farm.ssh(PI, f"sudo dfu-util -p {PORT} -R -a 0 -s {address:#010x}:leave -D {image} 2>&1")
    ran = time.monotonic() - began
    farm.wait_mode(PI, PORT, "klipper")
    back = time.monotonic() - began
    if "File downloaded successfully" not in done.stdout:
        sys.exit(f"dfu-util failed:\n{done.stdout}")
    return ran, back


def per_board(runs: int) -> None:
    board = load_catalog()[BOARD]
    farm = start(f'[[pi]]\nname = "{PI}"\n[[pi.boards]]\nboard = "{BOARD}"\nfirmware = "old"\nport = "{PORT}"\n',
                 "bench-fw-")
    try:
        # the farm's own build of the old version, as the Pi holds it
        image = f"/var/lib/ratos-sim/images/old-{BOARD}.bin"
        size = (farm.state / "pis" / PI / "upper" / image.lstrip("/")).stat().st_size
        samples: dict[str, list[tuple[float, float]]] = {"deploy dfu-util": [], "deploy pyusb": [], "bare dfu-util": []}
        for backend in ("dfu-util", "pyusb"):  # warm-up: build, upload, client install
            deploy_once(farm, backend)
            bare_dfu_util(farm, image, board.app_address)
        for _ in range(runs):
            for backend in ("dfu-util", "pyusb"):
                samples[f"deploy {backend}"].append(deploy_once(farm, backend))
                samples["bare dfu-util"].append(bare_dfu_util(farm, image, board.app_address))
    finally:
        stop(farm)
    print(f"1. one board ({BOARD}, {size} B image), {runs} runs per deploy backend, "
          f"{2 * runs} bare dfu-util runs")
    print(f"   {'':<18}{'whole s':>10}{'flash s':>10}   (deploy: pyinfra run / flash agent; bare: dfu-util / until Klipper)")
    means = {name: (statistics.mean(a for a, _ in s), statistics.mean(b for _, b in s)) for name, s in samples.items()}
    for name, (whole, flash) in means.items():
        print(f"   {name:<18}{whole:>10.2f}{flash:>10.2f}")
    bare_ran, bare_back = means["bare dfu-util"]
    for backend in ("dfu-util", "pyusb"):
        whole, agent = means[f"deploy {backend}"]
        print(f"   deploy {backend} / bare dfu-util until Klipper: whole run {whole / bare_back:.2f}x, "
              f"flash agent {agent / bare_back:.2f}x (bare dfu-util process alone: {bare_ran:.2f} s)")


def scale(pis: int) -> None:
    scenario = "".join(f'[[pi]]\nname = "scale-{n:02d}"\n[[pi.boards]]\nboard = "{SCALE_BOARDS[n % 3]}"\n'
                       'firmware = "old"\n\n' for n in range(pis))
    began = time.monotonic()
    farm = start(scenario, "bench-fw-scale-")
    up = time.monotonic() - began
    try:
        wall, out = farm.pyinfra()
        identities = {path.parent.name for path in (farm.state / "pis").glob("*/home/pi/printer_data/firmware/*/identity.json")}
        builds = builds_made(farm.state / "firmware-cache")
        versions = [json.loads((farm.state / "pis" / p["name"] / "upper/var/lib/ratos-sim/state.json").read_text())
                    ["mcus"][0]["firmware"]["version"] for p in farm.info["pis"]]
        current = farm.info["versions"]["current"]["version"]
    finally:
        stop(farm)
    print(f"2. {pis} Pis, boards {', '.join(SCALE_BOARDS)}: farm up {up:.1f} s, one deploy run {wall:.1f} s, "
          f"{sum(v == current for v in versions)}/{pis} MCUs at {current}")
    print(f"   builds {len(builds)}, identities {len(identities)}, builds per identity "
          f"{len(builds) / max(1, len(identities)):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pis", type=int, default=30)
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    per_board(args.runs)
    if not args.skip_scale:
        scale(args.pis)


if __name__ == "__main__":
    main()
