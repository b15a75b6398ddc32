"""One PICOBOOT flash (erase, write, read back) of a real-sized Klipper UF2, timed against the bytes moved.

    python bench/picoboot.py [--repeat 5] [--usb]

The UF2 is built by the stand-in Klipper tree for the Raspberry Pi Pico; the device is the farm's
BOOTSEL ROM model (pyinfra_ratos.sim.usb.picoboot) driven in-process, so the figure is the
client's own cost per byte and command (no USB latency; on hardware each 64-byte bulk packet and
each command's round trip add to it). Prints one JSON line per run and a summary.

``--usb`` also times what the agent runs on a Pi, side by side: ``python -m
pyinfra_ratos.firmware.picoboot flash`` (process start, pyusb, libusb) against the emulated BOOTSEL
device over umockdev's usbfs, the same flash of the same pages, until the board boots as Klipper.
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyinfra_ratos.firmware.catalog import load_catalog  # noqa: E402
from pyinfra_ratos.firmware.picoboot.client import Picoboot  # noqa: E402
from pyinfra_ratos.firmware.picoboot.protocol import image_of, uf2_pages  # noqa: E402
from pyinfra_ratos.sim.klipper_repo import build_firmware, create_template_repo  # noqa: E402
from pyinfra_ratos.sim.usb.picoboot import Bootrom  # noqa: E402


class Counting:
    """The model as a transport, counting bulk bytes and commands."""

    def __init__(self, rom: Bootrom) -> None:
        self.rom, self.interface, self.bytes_out, self.bytes_in, self.commands = rom, rom.interface, 0, 0, 0

    def bulk_out(self, endpoint, data, timeout_ms):
        self.bytes_out += len(data)
        self.commands += len(data) == 32 and data[:4] == b"\x0b\xd1\x1f\x43"
        return self.rom.bulk_out(endpoint, data, timeout_ms)

    def bulk_in(self, endpoint, length, timeout_ms):
        got = self.rom.bulk_in(endpoint, length, timeout_ms)
        self.bytes_in += len(got)
        return got

    def control(self, *args):
        return self.rom.control(*args)

    def clear_halt(self, endpoint):
        self.rom.clear_halt(endpoint)


def over_usb(uf2: bytes, repeat: int) -> list[float]:
    """Seconds of each CLI flash (reboot included) against a fresh emulated BOOTSEL device."""
    from pyinfra_ratos.sim import usb

    times = []
    for _ in range(repeat):
        root = tempfile.mkdtemp(prefix="pb", dir="/tmp")  # short: umockdev's sockets live under it
        state, bus, pid = os.path.join(root, "state"), root + ".bus", os.path.join(root, "emu.pid")
        spec, image = os.path.join(root, "boards.json"), os.path.join(root, "klipper.uf2")
        with open(image, "wb") as handle:
            handle.write(uf2)
        with open(spec, "w") as handle:
            json.dump({"boards": [{"port": "1-1.3", "board": "rpi-pico", "mcu": "rp2040", "mode": "rp2040-boot",
                                   "app_address": "0x10000100", "serial": "E66138935F4B2C28", "image": None,
                                   "bootloader": "", "faults": []}]}, handle)
        usb.start(spec, state, bus, pid)
        try:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pyinfra_ratos.firmware.picoboot", "flash", "--port", "1-1.3",
                                   "--image", image], env=usb.client_env(bus), capture_output=True, text=True,
                                  timeout=300)
            seconds = time.perf_counter() - started
            answer = json.loads(done.stdout.strip().splitlines()[-1])
            assert answer["ok"] and answer["read_back_ok"], (answer, done.stderr)
            times.append(seconds)
            print(json.dumps({"over": "umockdev usbfs", "client_seconds": answer["seconds"],
                              "process_seconds": round(seconds, 3)}))
        finally:
            usb.stop(pid)
            shutil.rmtree(root, ignore_errors=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--usb", action="store_true", help="also flash through the CLI over the emulated USB")
    options = parser.parse_args()
    pico = load_catalog()["rpi-pico"]
    with tempfile.TemporaryDirectory() as tmp:
        create_template_repo(Path(tmp) / "klipper")
        uf2 = (build_firmware(Path(tmp) / "klipper", "HEAD", pico.kconfig, Path(tmp) / "work") / "klipper.uf2").read_bytes()
    pages = uf2_pages(uf2)
    first, flat = image_of(pages)
    times = []
    for _ in range(options.repeat):
        rom = Bootrom()
        transport = Counting(rom)
        started = time.perf_counter()
        result = Picoboot(transport).flash(pages)
        seconds = time.perf_counter() - started
        assert rom.read(first, len(flat)) == flat
        times.append(seconds)
        print(json.dumps({"uf2_bytes": len(uf2), "pages": result.pages, "sectors": result.sectors,
                          "bytes_out": transport.bytes_out, "bytes_in": transport.bytes_in,
                          "commands": transport.commands, "seconds": round(seconds, 4)}))
    best = min(times)
    moved = transport.bytes_out + transport.bytes_in
    print(f"PICOBOOT flash of {len(flat)} bytes ({result.pages} pages, {result.sectors} sectors, read back): "
          f"best {best * 1000:.1f} ms, median {statistics.median(times) * 1000:.1f} ms for {moved} bytes moved "
          f"({transport.commands} commands): {moved / best / 1e6:.1f} MB/s in the client and model")
    if options.usb:
        usb_times = over_usb(uf2, options.repeat)
        usb_best = min(usb_times)
        print(f"the same flash through the CLI over umockdev usbfs: best {usb_best * 1000:.0f} ms, median "
              f"{statistics.median(usb_times) * 1000:.0f} ms: {moved / usb_best / 1e3:.0f} kB/s, "
              f"x{usb_best / best:.0f} the in-process time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
