"""Time of one Katapult flash against the bytes moved, on one emulated board (the project's client).

    python bench/katapult_flash.py [--profile h723|f446|g0b1] [--kib 36 --kib 128 ...] [--runs 3]

Starts a standalone USB emulator (umockdev, no root needed) with one board running Klipper whose
1200-baud request leads to Katapult. Each run: the request, wait for 1d50:6177 on the same port,
CONNECT, read the old application back (the rollback copy), write the image block by block, EOF,
full read-back compared by SHA-1 (flashtool's verification), COMPLETE, and wait until the board is
Klipper again. Prints per image size: the mean time of each phase, the bytes that crossed the tty
(frames in both directions) and the throughput, so the cost per 64-byte block is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from pyinfra_ratos.sim import usb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dfu_readback import PROFILES, PORT, image_for  # noqa: E402

BY_PATH = "/dev/serial/by-path/platform-fd500000.pcie-pci-0000:01:00.0-usb-0:{}:1.0"
ONE_FLASH = r"""
import json, os, struct, sys, time, fcntl, termios
from pyinfra_ratos.firmware.katapult import KatapultSerial
tty, image_path, port = sys.argv[1], sys.argv[2], sys.argv[3]
image = open(image_path, "rb").read()
def usb_id():
    try:
        base = "/sys/bus/usb/devices/" + port
        return open(base + "/idVendor").read().strip() + ":" + open(base + "/idProduct").read().strip()
    except OSError:
        return None
def wait(wanted, timeout=20):
    end = time.monotonic() + timeout
    while usb_id() != wanted:
        if time.monotonic() > end:
            raise SystemExit("timeout waiting for " + wanted)
        time.sleep(0.01)
t = {"start": time.monotonic()}
fd = os.open(tty, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
fcntl.ioctl(fd, termios.TIOCMBIS, struct.pack("I", termios.TIOCM_DTR))
attrs = termios.tcgetattr(fd); attrs[4] = attrs[5] = termios.B1200
termios.tcsetattr(fd, termios.TCSANOW, attrs)
fcntl.ioctl(fd, termios.TIOCMBIC, struct.pack("I", termios.TIOCM_DTR)); os.close(fd)
wait("1d50:6177")
while not os.path.exists(tty):
    time.sleep(0.01)
t["katapult"] = time.monotonic()
client = KatapultSerial(tty).open(); client.connect(); t["connect"] = time.monotonic()
old = client.read_application(1 << 20); t["read_old"] = time.monotonic(); moved_read = client.moved
sha = client.write(image); t["write"] = time.monotonic()
client.verify(image, sha); t["verify"] = time.monotonic()
client.complete(); client.close(); t["complete"] = time.monotonic()
wait("1d50:614e"); t["klipper"] = time.monotonic()
print(json.dumps({"t": t, "moved": client.moved, "moved_read_old": moved_read, "old": len(old)}))
"""


def run(profile: str, kib: int, runs: int) -> dict:
    mcu, app, _ = PROFILES[profile]
    root = tempfile.mkdtemp(prefix="kb", dir="/tmp")
    image_path = os.path.join(root, "klipper.bin")
    with open(image_path, "wb") as handle:
        handle.write(image_for(mcu, app, kib * 1024))
    spec = os.path.join(root, "spec.json")
    board = {"port": PORT, "board": profile, "mcu": mcu, "mode": "klipper", "serial": "BENCH0001",
             "app_address": hex(app), "image": image_path, "bootloader": "KATAPULT", "faults": [],
             "mcu_name": None, "bootloader_request": "katapult"}
    with open(spec, "w") as handle:
        json.dump({"boards": [board]}, handle)
    phases: dict[str, list[float]] = {}
    moved = []
    try:
        for _ in range(runs):
            # a fresh emulator per run (umockdev cannot bring one tty node back twice); not timed
            state, bus, pid = os.path.join(root, "state"), root + ".bus", os.path.join(root, "emu.pid")
            usb.start(spec, state, bus, pid)
            try:
                done = subprocess.run([sys.executable, "-c", ONE_FLASH, BY_PATH.format(PORT.split("-", 1)[1]),
                                       image_path, PORT], env=usb.client_env(bus), capture_output=True, text=True,
                                      timeout=300)
                if done.returncode != 0:
                    raise SystemExit(done.stderr)
                out = json.loads(done.stdout)
            finally:
                usb.stop(pid)
            t = out["t"]
            order = ["start", "katapult", "connect", "read_old", "write", "verify", "complete", "klipper"]
            for a, b in zip(order, order[1:]):
                phases.setdefault(b, []).append(t[b] - t[a])
            phases.setdefault("total", []).append(t["klipper"] - t["start"])
            moved.append(out["moved"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(root + ".bus", ignore_errors=True)
    return {"kib": kib, "image": os.path.getsize(image_path) if os.path.exists(image_path) else kib * 1024,
            "phases": {k: statistics.mean(v) for k, v in phases.items()}, "moved": statistics.mean(moved)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="h723")
    parser.add_argument("--kib", type=int, action="append")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"Katapult flash on an emulated {args.profile} board, {args.runs} runs each (mean seconds)")
    print(f"{'image KiB':>9} {'moved KiB':>9} {'request':>8} {'connect':>8} {'read old':>8} {'write':>8} "
          f"{'verify':>8} {'leave':>8} {'back':>8} {'total':>8} {'KiB/s':>7} {'ms/block':>8}")
    for kib in args.kib or [36, 128]:
        r = run(args.profile, kib, args.runs)
        p = r["phases"]
        blocks = kib * 1024 / 64
        transfer = p["read_old"] + p["write"] + p["verify"]
        print(f"{kib:>9} {r['moved'] / 1024:>9.1f} {p['katapult']:>8.2f} {p['connect']:>8.2f} {p['read_old']:>8.2f} "
              f"{p['write']:>8.2f} {p['verify']:>8.2f} {p['complete']:>8.2f} {p['klipper']:>8.2f} "
              f"{p['total']:>8.2f} {r['moved'] / 1024 / transfer:>7.1f} {1000 * transfer / (3 * blocks):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
