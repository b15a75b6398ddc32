"""The emulated Katapult bootloader, reached by the 1200-baud request and spoken to over its tty."""

from __future__ import annotations

import json
import sys

from pyinfra_ratos.sim import usb

from test_usb_emulator import ENTER_BOOTLOADER, H723_APP, H723_UID, farm, h723, images  # noqa: F401
from test_usb_emulator import pytestmark  # noqa: F401 - needs umockdev

BY_PATH = "/dev/serial/by-path/platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.3:1.0"
# run on the emulated bus: flash an image through Katapult with the project's client, print JSON
CLIENT = """
import json, sys
from pyinfra_ratos.firmware.katapult import KatapultError, KatapultSerial
tty, image, leave = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3] == "leave"
out = {}
with KatapultSerial(tty) as client:
    out["info"] = dict(client.connect())
    if sys.argv[3] == "below-start":  # one block where the board's application starts
        client.info["start"] = int(sys.argv[4], 0)
        try:
            client.send_block(client.info["start"], image[:64])
        except KatapultError as error:
            out["error"] = str(error)
        print(json.dumps(out))
        sys.exit(0)
    out["old"] = len(client.read_application(1 << 20))
    try:
        sha = client.write(image)
        out["verified"] = client.verify(image, sha) == sha
    except KatapultError as error:
        out["error"] = str(error)
    if leave:
        client.complete()
    out["log"] = client.log
print(json.dumps(out))
"""


def katapult_h723(image: str, faults: list[str] | None = None, **extra) -> dict:
    return {**h723("1-1.3", "klipper", H723_UID, image, "mcu", faults or []),
            "bootloader_request": "katapult", **extra}


def enter_katapult(pi) -> str:
    result = pi.run(sys.executable, "-c", ENTER_BOOTLOADER, BY_PATH)
    assert result.returncode == 0, result.stderr
    usb.wait_for_mode(pi.state_dir, "1-1.3", "katapult")
    return BY_PATH


def run_client(pi, image: str, leave: bool = True, *mode: str) -> dict:
    result = pi.run(sys.executable, "-c", CLIENT, BY_PATH, image, *(mode or ["leave" if leave else "stay"]))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_katapult_flash_writes_the_image_and_the_board_returns_as_klipper(farm, images):
    pi = farm([katapult_h723(images["old"])])
    enter_katapult(pi)
    links = pi.run("ls", "/dev/serial/by-id").stdout
    assert f"usb-katapult_stm32h723xx_{H723_UID}-if00" in links
    out = run_client(pi, images["new"])
    assert out["info"] == {"protocol": "1.1.0", "start": H723_APP, "block_size": 64, "mcu": "stm32h723xx",
                           "version": "v0.0.1-110-gb0bf421"}
    assert out["verified"] is True and "error" not in out
    assert out["old"] >= len(open(images["old"], "rb").read())
    entry = usb.wait_for_mode(pi.state_dir, "1-1.3", "klipper")
    assert entry["version"] == "v0.13.0-3-g1a2b3c4d5"
    new = open(images["new"], "rb").read()
    assert pi.flash("1-1.3", H723_APP, len(new)) == new


def test_transfer_error_breaks_one_transfer_in_block_n(farm, images):
    pi = farm([katapult_h723(images["old"], ["katapult-transfer-error@5"])])
    enter_katapult(pi)
    out = run_client(pi, images["new"], leave=False)
    assert "block 5 of the image" in out["error"] and "command error" in out["error"]
    again = run_client(pi, images["new"])  # the next transfer goes through
    assert again["verified"] is True
    assert usb.wait_for_mode(pi.state_dir, "1-1.3", "klipper")["version"] == "v0.13.0-3-g1a2b3c4d5"


def test_wrong_start_is_reported_and_the_bootloader_below_it_is_never_written(farm, images):
    pi = farm([katapult_h723(images["old"], ["katapult-wrong-start"])])
    enter_katapult(pi)
    before = pi.flash("1-1.3", 0x08000000, 4096)
    out = run_client(pi, images["new"], False, "below-start", "0x08000000")
    assert out["info"]["start"] == 0x08008000  # Katapult's default offset, not the board's 128 KiB
    assert "SEND_BLOCK failed after 3 tries: the device answered with a command error" in out["error"]
    assert pi.flash("1-1.3", 0x08000000, 4096) == before  # the bootloader is never written


def test_no_reenumerate_after_complete_leaves_the_port_empty(farm, images):
    pi = farm([katapult_h723(images["old"], ["no-reenumerate"])])
    enter_katapult(pi)
    run_client(pi, images["new"])
    usb.wait_for_mode(pi.state_dir, "1-1.3", "absent")
    events = [e["event"] for e in usb.events(pi.state_dir)]
    assert events[-2:] == ["unplug", "no-reenumerate"]


TERMIOS2 = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
buf = bytearray(44)
fcntl.ioctl(fd, 0x802C542A, buf)                       # TCGETS2
flags = list(struct.unpack_from("=IIII", buf))
flags[2] = (flags[2] & ~0o10017) | 0o10000             # BOTHER: a custom speed, as pyserial sets 250000
struct.pack_into("=IIII", buf, 0, *flags)
struct.pack_into("=II", buf, 36, 250000, 250000)
fcntl.ioctl(fd, 0x402C542B, bytes(buf))                # TCSETS2
back = bytearray(44)
fcntl.ioctl(fd, 0x802C542A, back)
print(struct.unpack_from("=II", back, 36)[1])
"""


def test_custom_baud_rates_work_as_on_a_cdc_acm_tty(farm, images):
    # pyserial (Katapult's flashtool) sets 250000 baud with termios2; a pty has no termios2
    pi = farm([katapult_h723(images["old"])])
    enter_katapult(pi)
    result = pi.run(sys.executable, "-c", TERMIOS2, BY_PATH)
    assert (result.returncode, result.stdout.strip()) == (0, "250000"), result.stderr
