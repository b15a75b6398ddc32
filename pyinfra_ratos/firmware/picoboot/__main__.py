"""``python -m pyinfra_ratos.firmware.picoboot flash --port 1-1.3 --image klipper.uf2``: one flash with
read-back, then a reboot; prints one JSON line (``ok``, ``failure``, figures) and exits 0 only when
the image was written and read back right.

``--image`` is a UF2 file, or a flat image (what ``read`` kept of a board) written at ``--address``.
``read --until-erased`` stops at the first 64 KiB chunk that is all erased (0xFF): the end of
what a board runs, so a rollback copy is not the whole flash."""

from __future__ import annotations

import argparse
import json
import sys

from .protocol import FLASH_PAGE, UF2_MAGIC_START0, PicobootError, uf2_pages

CHUNK = 64 * 1024


def flat_pages(address: int, data: bytes) -> dict[int, bytes]:
    """A flat image at ``address`` as 256-byte pages (the last padded with 0xFF); erased pages are
    left out (the erase of their sector leaves them erased)."""
    if address % FLASH_PAGE:
        raise PicobootError(f"address {address:#010x} is not on a {FLASH_PAGE}-byte page")
    pages = {}
    for offset in range(0, len(data), FLASH_PAGE):
        page = data[offset:offset + FLASH_PAGE].ljust(FLASH_PAGE, b"\xff")
        if page != b"\xff" * FLASH_PAGE:
            pages[address + offset] = page
    if not pages:
        raise PicobootError("the image is empty (all erased)")
    return pages


def image_pages(data: bytes, address: int) -> dict[int, bytes]:
    is_uf2 = len(data) >= 4 and int.from_bytes(data[:4], "little") == UF2_MAGIC_START0
    return uf2_pages(data) if is_uf2 else flat_pages(address, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyinfra_ratos.firmware.picoboot")
    parser.add_argument("action", choices=("flash", "read"))
    parser.add_argument("--port", required=True, help="USB port path of the BOOTSEL device, e.g. 1-1.3")
    parser.add_argument("--image", help="the UF2 file to flash")
    parser.add_argument("--address", type=lambda text: int(text, 0), default=0x10000000)
    parser.add_argument("--length", type=int, default=0)
    parser.add_argument("--out", help="where read writes the bytes")
    parser.add_argument("--until-erased", action="store_true",
                        help="read: stop at the first 64 KiB chunk that is all erased")
    parser.add_argument("--name", default="", help="the board's name, for messages")
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
            data = b""
            while len(data) < options.length:
                chunk = client.read(options.address + len(data), min(CHUNK, options.length - len(data)))
                if options.until_erased and chunk == b"\xff" * len(chunk):
                    break
                data += chunk
            with open(options.out, "wb") as handle:
                handle.write(data)
            answer.update(ok=True, length=len(data))
        else:
            with open(options.image, "rb") as handle:
                pages = image_pages(handle.read(), options.address)
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
