"""Klipper controller boards emulated at the USB level with umockdev, one emulator process per Pi.

Real ``lsusb``, ``dfu-util``, pyusb and tty users see the boards once they run with::

    LD_PRELOAD=libumockdev-preload.so.0  UMOCKDEV_DIR=<bus_dir>

(:func:`client_env`). ``<bus_dir>`` is a symlink the emulator makes to its umockdev testbed; keep
it short (<= ~20 characters, e.g. ``/run/usbsim``): umockdev's ioctl sockets live under it and a
unix socket path is limited to 107 bytes (a by-path tty link longer than that is not emulated).

Board-spec file (JSON), ``{"boards": [...]}`` or a bare list, one object per board::

    {"port": "1-1.3",                 # USB port path; bus number = before the dash
     "board": "btt-octopus-pro-h723-11", "mcu": "stm32h723xx",
     "mode": "klipper",              # klipper | dfu | katapult | can-bridge | rp2040-boot | absent
     "serial": "29001A001151313531383332",   # chip UID (24 hex) or the RatOS board id
     "app_address": "0x08020000",    # int or string
     "dfu_flash_map": "@Internal Flash   /0x08000000/8*128Kg",   # default by MCU family
     "dfu_transfer_size": 1024,      # default by MCU family (F4: 2048)
     "image": "/path/klipper.bin",   # flashed at app_address at first start; null = blank
     "image_address": null,          # where the image starts instead (an RP2040 flat image: 0x10000000)
     "bootloader": "BTT-BOOTLOADER", # text pattern repeated below app_address; null = erased
     "faults": [],                   # dfu-exit-74 dfu-exit-251 no-reenumerate stuck-dfu
                                     # ignore-bootloader-request slow-erase corrupt-write
                                     # (corrupt-write: once per emulator run, the first byte of
                                     # the 3rd block programmed after the first erase is inverted)
     "mcu_name": "mcu",              # pistate "mcus" entry kept in sync; null = none
     "bootloader_request": "dfu",    # where the 1200-baud request leads: dfu | katapult | rp2040-boot
     "katapult_start": null,         # the application start Katapult reports (null: app_address)
     "katapult_version": "v0.0.1-110-gb0bf421"}   # Katapult's software version (CONNECT)

In ``katapult`` mode the board's tty speaks Katapult's serial protocol (``sim/usb/katapult.py``);
faults ``katapult-transfer-error[@N]`` and ``katapult-wrong-start`` act there.

State directory (``<state_dir>``)::

    <port>/flash.bin   the whole alt-0 flash (base = map start); kept across restarts
    events.jsonl       {"t", "port", "event": "mode"|"unplug"|"erase"|"mass-erase"|"write"|
                        "corrupt-write"|"leave-request"|"bootloader-request"|..., ...}
    boards.json        {port: {"mode", "devnum", "tty", "board", "version"}} now

A board in ``klipper`` mode reports the firmware decoded from its flash (``firmware.boots``);
after a DFU ``:leave`` or USB reset it comes back as Klipper only if the flash boots.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

PRELOAD = "libumockdev-preload.so.0"
PYTHON = "/usr/bin/python3"  # Debian's, it has gi + UMockdev
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def client_env(bus_dir: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that must see the emulated bus."""
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = PRELOAD
    env["UMOCKDEV_DIR"] = bus_dir
    return env


def emulator_command(spec: str, state_dir: str, bus_dir: str, pid_file: str,
                     pistate_path: str | None = None) -> list[str]:
    command = ["umockdev-wrapper", PYTHON, "-m", "pyinfra_ratos.sim.usb.emulator",
               "--spec", spec, "--state-dir", state_dir, "--bus-dir", bus_dir, "--pid-file", pid_file]
    return command + (["--pistate", pistate_path] if pistate_path else [])


def start(spec: str, state_dir: str, bus_dir: str, pid_file: str, pistate_path: str | None = None,
          log_path: str | None = None, timeout: float = 20.0) -> int:
    """Start an emulator in the background; returns its pid once the bus is populated."""
    os.makedirs(state_dir, exist_ok=True)
    if os.path.exists(pid_file):
        os.unlink(pid_file)
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop("UMOCKDEV_DIR", None)
    env.setdefault("PYTHONPATH", _PROJECT_ROOT)  # a virtual Pi passes its own copy of the sim
    log = open(log_path or os.path.join(state_dir, "emulator.log"), "ab")
    process = subprocess.Popen(emulator_command(spec, state_dir, bus_dir, pid_file, pistate_path),
                               env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                               start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while not os.path.exists(pid_file):
        if process.poll() is not None:
            raise RuntimeError(f"usb emulator exited with {process.returncode}; see {log.name}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"usb emulator did not come up in {timeout} s; see {log.name}")
        time.sleep(0.02)
    return process.pid


def stop(pid_file: str, timeout: float = 10.0) -> None:
    """SIGTERM the emulator named by its pid file and wait for it to clean up."""
    try:
        with open(pid_file) as handle:
            pid = int(handle.read().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it when it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)


def boards(state_dir: str) -> dict[str, Any]:
    """What is on the bus now, per port (``boards.json``)."""
    with open(os.path.join(state_dir, "boards.json"), encoding="utf-8") as handle:
        return json.load(handle)


def wait_for_mode(state_dir: str, port: str, mode: str, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until the board on ``port`` is enumerated in ``mode``; returns its boards.json entry."""
    deadline = time.monotonic() + timeout
    while True:
        entry = boards(state_dir).get(port, {})
        if entry.get("mode") == mode:
            return entry
        if time.monotonic() > deadline:
            raise TimeoutError(f"board on {port} is {entry.get('mode')!r}, not {mode!r}, after {timeout} s")
        time.sleep(0.05)


def events(state_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(state_dir, "events.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
