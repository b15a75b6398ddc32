"""Flash time of dfu-util versus the pyusb client with read-back, on one emulated board.

    python bench/dfu_readback.py [--profile h723|f446|g0b1] [--runs 5] [--slow-erase]

Starts a standalone USB emulator (umockdev, no root needed) with one board in ROM DFU, then
alternates N runs of ``dfu-util -p PORT -R -a 0 -s APP:leave -D image`` and N runs of
``python -m pyinfra_ratos.firmware.dfu flash --port PORT --address APP --image image`` (erase, download,
read back and compare, leave). Each run gets a freshly started emulator with the board in DFU (its
flash file persists; not timed): the emulator cannot yet bring one board back as Klipper twice
(umockdev asserts on the reused tty node). Prints, per tool, the mean time of the process and until
the board is back as Klipper on its port, the client's mean phase times, and the ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib

from pyinfra_ratos.sim import usb

PROFILES = {  # mcu, app address, image size (Klipper builds are 20..40 KiB)
    "h723": ("stm32h723xx", 0x08020000, 36 * 1024),
    "f446": ("stm32f446xx", 0x08008000, 36 * 1024),
    "g0b1": ("stm32g0b1xx", 0x08002000, 36 * 1024),
}
PORT = "1-1.3"


def image_for(mcu: str, app: int, size: int) -> bytes:
    """An image following the fake firmware contract (so the board boots it), ``size`` bytes."""
    dictionary = {"app": "Klipper", "config": {"MCU": mcu}, "version": "v0.13.0-3-g1a2b3c4d5",
                  "build_versions": "bench", "license": "GNU GPLv3"}
    filler, block = b"", hashlib.sha256(mcu.encode()).digest()
    while len(filler) < size - 1024:
        block = hashlib.sha256(block).digest()
        filler += block
    body = struct.pack("<II", 0x20020000, app + 0x101) + filler[: size - 1024]
    body += zlib.compress(json.dumps(dictionary, sort_keys=True, separators=(",", ":")).encode(), 9)
    return body + bytes(-len(body) % 8)


def timed(argv: list[str], env: dict[str, str], state_dir: str) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(seconds the process ran, seconds until the board is Klipper again, the process)."""
    began = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    ran = time.monotonic() - began
    usb.wait_for_mode(state_dir, PORT, "klipper", timeout=20)
    return ran, time.monotonic() - began, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="h723")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slow-erase", action="store_true", help="realistic erase times (H7: ~1.5 s per sector)")
    args = parser.parse_args()
    if not shutil.which("dfu-util") or not shutil.which("umockdev-wrapper"):
        sys.exit("needs dfu-util and umockdev")
    mcu, app, size = PROFILES[args.profile]
    root = tempfile.mkdtemp(prefix="dfub", dir="/tmp")
    state_dir, bus_dir, pid_file = os.path.join(root, "state"), root + ".bus", os.path.join(root, "emu.pid")
    image_path = os.path.join(root, "klipper.bin")
    with open(image_path, "wb") as handle:
        handle.write(image_for(mcu, app, size))
    spec = os.path.join(root, "boards.json")
    with open(spec, "w") as handle:
        json.dump({"boards": [{"port": PORT, "board": args.profile, "mcu": mcu, "mode": "dfu", "app_address": app,
                               "serial": "29001A001151313531383332", "bootloader": "BL",
                               "faults": ["slow-erase"] if args.slow_erase else []}]}, handle)
    env = usb.client_env(bus_dir)
    tools = {
        "dfu-util": ["dfu-util", "-p", PORT, "-R", "-a", "0", "-s", f"{app:#x}:leave", "-D", image_path],
        "pyusb+read-back": [sys.executable, "-m", "pyinfra_ratos.firmware.dfu", "flash", "--port", PORT,
                            "--address", hex(app), "--image", image_path],
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in tools}
    phases: list[dict[str, float]] = []
    try:
        for _ in range(args.runs):
            for name, argv in tools.items():
                usb.start(spec, state_dir, bus_dir, pid_file)
                try:
                    ran, back, done = timed(argv, env, state_dir)
                finally:
                    usb.stop(pid_file)
                if name == "dfu-util" and "File downloaded successfully" not in done.stdout:
                    sys.exit(f"dfu-util failed: {done.stdout}{done.stderr}")
                if name != "dfu-util":
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    if not result["ok"]:
                        sys.exit(f"pyusb client failed: {result['error']}")
                    phases.append(result["phases_s"])
                times[name].append((ran, back))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"{args.profile} ({mcu}), {size // 1024} KiB image at {app:#010x}, {args.runs} runs each"
          f"{', slow erase' if args.slow_erase else ''}")
    print(f"{'tool':<18}{'process s':>11}{'until Klipper s':>17}")
    means = {}
    for name, samples in times.items():
        means[name] = (statistics.mean(r for r, _ in samples), statistics.mean(b for _, b in samples))
        print(f"{name:<18}{means[name][0]:>11.3f}{means[name][1]:>17.3f}")
    phase_means = {k: statistics.mean(p.get(k, 0.0) for p in phases) for k in ("erase", "download", "verify", "leave")}
    print("pyusb phases (mean s): " + ", ".join(f"{k} {v:.3f}" for k, v in phase_means.items()))
    ours, theirs = means["pyusb+read-back"], means["dfu-util"]
    print(f"ratio pyusb+read-back / dfu-util: process {ours[0] / theirs[0]:.2f}x, until Klipper {ours[1] / theirs[1]:.2f}x")


if __name__ == "__main__":
    main()
