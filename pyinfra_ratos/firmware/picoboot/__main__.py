"""``python -m pyinfra_ratos.firmware.picoboot flash --port 1-1.3 --image klipper.uf2``: one flash with
read-back, then a reboot; prints one JSON line (``ok``, ``failure``, figures) and exits 0 only when
the image was written and read back right."""

from __future__ import annotations

import argparse
import json
import sys

from .protocol import PicobootError, uf2_pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyinfra_ratos.firmware.picoboot")
    parser.add_argument("action", choices=("flash", "read"))
    parser.add_argument("--port", required=True, help="USB port path of the BOOTSEL device, e.g. 1-1.3")
    parser.add_argument("--image", help="the UF2 file to flash")
    parser.add_argument("--address", type=lambda text: int(text, 0), default=0x10000000)
    parser.add_argument("--length", type=int, default=0)
    parser.add_argument("--out", help="where read writes the bytes")
    parser.add_argument("--no-reboot", action="store_true")
    options = parser.parse_args(argv)
    from .client import Picoboot
    from .usb import UsbTransport

    answer: dict[str, object] = {"ok": False}
    try:
        transport = UsbTransport(options.port)
        client = Picoboot(transport)
        if options.action == "read":
            client.reset()
            data = client.read(options.address, options.length)
            with open(options.out, "wb") as handle:
                handle.write(data)
            answer.update(ok=True, length=len(data))
        else:
            with open(options.image, "rb") as handle:
                pages = uf2_pages(handle.read())
            result = client.flash(pages, progress=lambda text: print(text, file=sys.stderr))
            answer.update(ok=True, read_back_ok=True, pages=result.pages, sectors=result.sectors,
                          bytes=result.bytes_written, seconds=round(result.seconds, 3))
            if not options.no_reboot:
                client.reboot()
        transport.close()
    except PicobootError as error:
        answer.update(failure="verify" if "read-back" in str(error) else "transfer", error=str(error))
    except OSError as error:
        answer.update(failure="usb", error=str(error))
    print(json.dumps(answer))
    return 0 if answer["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
