"""``python3 -m pyinfra_ratos.firmware.dfu list|flash ...``: see the package docstring for options and exit codes."""

from __future__ import annotations

import argparse
import json
import sys

from . import __doc__ as PACKAGE_DOC
from .errors import EXIT_OK, DfuFailure
from .flash import LEAVE_TIMEOUT_S, flash, load_device_module, read
from .memory import parse_memory_map


def _address(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address: {text!r} (e.g. 0x08020000)") from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python3 -m pyinfra_ratos.firmware.dfu", description=PACKAGE_DOC.splitlines()[0],
                                  epilog="Exit codes and the JSON result: see `pydoc pyinfra_ratos.firmware.dfu`.")
    commands = top.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="DFU devices by USB port, with their memory maps")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of text")
    one = commands.add_parser("flash", help="erase, download, read back and compare, leave")
    one.add_argument("--port", help="USB port path as dfu-util -p / sysfs name it, e.g. 1-1.3")
    one.add_argument("--serial", help="USB serial of the DFU device (when there is no port)")
    one.add_argument("--address", type=_address, required=True, help="where the image goes (app address)")
    one.add_argument("--protect-below", type=_address,
                     help="never erase a sector starting below this (default: --address)")
    one.add_argument("--image", required=True, help="the raw binary (klipper.bin)")
    one.add_argument("--name", help="board label used in every message")
    one.add_argument("--no-leave", action="store_true", help="stay in DFU after a verified flash")
    one.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the device on the port")
    one.add_argument("--leave-timeout", type=float, default=LEAVE_TIMEOUT_S,
                     help="seconds for the device to leave the port after the leave request")
    reading = commands.add_parser("read", help="read flash into a file (DfuSe upload); the board stays in DFU")
    reading.add_argument("--port", help="USB port path, e.g. 1-1.3")
    reading.add_argument("--serial", help="USB serial of the DFU device (when there is no port)")
    reading.add_argument("--address", type=_address, required=True, help="first address to read")
    reading.add_argument("--length", type=int, required=True, help="bytes to read")
    reading.add_argument("--out", required=True, help="the file to write")
    reading.add_argument("--name", help="board label used in every message")
    reading.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the device on the port")
    return top


def _list(as_json: bool) -> int:
    try:
        devices = load_device_module().list_devices()
    except DfuFailure as failure:
        print(f"error: {failure}", file=sys.stderr)
        return failure.exit_code
    if as_json:
        print(json.dumps({"devices": [d.to_json() for d in devices]}))
        return EXIT_OK
    for d in devices:
        fn = d.functional
        size = f"wTransferSize {fn.transfer_size}, bmAttributes {fn.attributes:#04x}" if fn else "no functional descriptor"
        print(f"{d.port}  {d.vid:04x}:{d.pid:04x}  serial {d.serial or '-'}  {size}")
        for alt, name in d.alts:
            try:
                memory = parse_memory_map(name)
                extent = f"  [{memory.start:#010x}..{memory.end - 1:#010x}, {len(memory.sectors)} sectors]"
            except ValueError:
                extent = ""
            print(f"    alt {alt}: {name}{extent}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "list":
        return _list(args.json)
    if not args.port and not args.serial:
        parser().error(f"{args.command} needs --port or --serial")
    if args.command == "read":
        result = read(args.out, args.address, args.length, args.port, args.serial, args.name, args.wait)
    else:
        result = flash(args.image, args.address, args.protect_below, args.port, args.serial, args.name,
                       leave=not args.no_leave, wait_s=args.wait, leave_timeout_s=args.leave_timeout)
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
    print(json.dumps(result.to_json()), flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
