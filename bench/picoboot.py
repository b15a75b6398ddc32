"""One PICOBOOT flash (erase, write, read back) of a real-sized Klipper UF2, timed against the bytes moved.

    python bench/picoboot.py [--repeat 5]

The UF2 is built by the stand-in Klipper tree for the Raspberry Pi Pico; the device is the farm's
BOOTSEL ROM model (pyinfra_ratos.sim.usb.picoboot) driven in-process, so the figure is the
client's own cost per byte and command (no USB latency; on hardware each 64-byte bulk packet and
each command's round trip add to it). Prints one JSON line per run and a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
