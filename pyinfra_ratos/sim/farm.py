"""Bring a virtual RatOS farm up from a scenario file, and take it down again.

``up`` prepares everything on the controller side (a shared base layer, each Pi's overlay upper
directories and home, SSH keys, the Klipper checkout, the firmware each board runs), then starts
the farm daemon (:mod:`pyinfra_ratos.sim.daemon`) and writes ``STATE_DIR/inventory.py``. ``down``
stops exactly what the farm's pid files name; the kernel drops each Pi's mounts and network with
its namespaces. Both need root (namespaces, mounts, sshd).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pyinfra_ratos.sim import pihome, pistate, procs
from pyinfra_ratos.sim.scenario import ARCHES, BoardSpec, PiSpec, Scenario, load_scenario

PI_UID = PI_GID = 1000
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # .../pyinfra_ratos
SIM_LIB = "usr/local/lib/ratos-sim"
INTERNET_STANDIN = "127.0.2.1"
# each Pi's can0 (sim.can): an administratively scoped group, only ever on the Pi's own loopback
CAN_GROUP, CAN_PORT = "239.74.163.2", 43113
USB_BUS_DIR = "/run/usbsim"  # inside each Pi: its emulated USB bus (UMOCKDEV_DIR); short, see sim.usb  # inside an online Pi: where its outside world (git remote) answers  # inside the base layer: the sim code the Pis run

SSHD_CONFIG = """\
# sshd of a virtual RatOS Pi: started per connection in inetd mode (sshd -i) by the farm daemon.
HostKey /etc/ssh/ssh_host_ed25519_key
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
UseDNS no
PrintMotd no
# VERBOSE logs one "Starting session: command ..." line per command: tests count SSH commands with it.
LogLevel VERBOSE
MaxSessions 200
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""

SYSTEMCTL_WRAPPER = """\
#!/bin/sh
# systemctl stand-in of the virtual RatOS Pi (no systemd runs here)
PYTHONPATH=/{lib} exec /usr/bin/python3 -m pyinfra_ratos.sim.systemctl "$@"
"""


KNOB_WRAPPER = """\
#!/bin/sh
# run-time knobs of the virtual RatOS Pi (pyinfra_ratos.sim.knobs); as root
PYTHONPATH=/{lib} exec /usr/bin/python3 -m pyinfra_ratos.sim.knobs "$@"
"""


class FarmError(RuntimeError):
    """The farm cannot start or stop; the message says why and what to do."""


def _run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, capture_output=True, **kwargs)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)


# --- addresses -------------------------------------------------------------------------------


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def allocate_addresses(state_dir: Path, count: int, port: int) -> list[str]:
    """Loopback addresses 127.S.T.n for the Pis, free on ``port``; stable for a state dir."""
    seed = int(hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest(), 16)
    for attempt in range(64):
        second = 100 + (seed + attempt) % 100
        third = (seed >> 16) % 200
        addresses = [f"127.{second}.{third + i // 250}.{i % 250 + 1}" for i in range(count)]
        if all(_bindable(address, port) for address in addresses):
            return addresses
    raise FarmError(
        f"no free block of {count} loopback addresses on port {port}: "
        "is another service bound to 0.0.0.0:{port}? pass --ssh-port"
    )


# --- base layer and Pis ----------------------------------------------------------------------


UNAME_STANDIN = """#!/bin/sh
# virtual Pi: the machine of a Raspberry Pi, the rest from the real uname
case "$1" in -m|--machine) echo {machine};; *) exec /bin/uname "$@";; esac
"""


def _with_pi_user(path: str, build: Any) -> str:
    kept = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == "pi" or (len(fields) > 2 and fields[2] == str(PI_UID)):
            continue  # the Pi's own /etc has the pi user at uid 1000, whatever this machine has
        kept.append(line)
    return "\n".join(build(kept)) + "\n"


def build_base(base: Path) -> None:
    """The layer shared by every Pi, between the machine's tree and each Pi's upper dir."""
    etc = base / "etc"
    supplementary = ("sudo", "dialout", "tty", "video", "plugdev")

    def groups(lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            fields = line.split(":")
            if fields[0] in supplementary:
                members = [m for m in fields[3].split(",") if m] + ["pi"]
                line = ":".join(fields[:3] + [",".join(members)])
            out.append(line)
        return out + [f"pi:x:{PI_GID}:"]

    _write(etc / "passwd", _with_pi_user("/etc/passwd", lambda l: l + [f"pi:x:{PI_UID}:{PI_GID}:pi:/home/pi:/bin/bash"]))
    _write(etc / "group", _with_pi_user("/etc/group", groups))
    _write(etc / "shadow", _with_pi_user("/etc/shadow", lambda l: l + ["pi:*:19700:0:99999:7:::"]), 0o640)
    _write(etc / "sudoers.d" / "010_pi-nopasswd", "pi ALL=(ALL) NOPASSWD: ALL\n", 0o440)
    # Every process of a Pi sees that Pi's emulated USB bus: ld.so.preload loads umockdev's
    # preload library into every program, setuid sudo included (sudo strips LD_PRELOAD), and it
    # acts only where UMOCKDEV_DIR is set: by sshd for every session, kept by sudo.
    _write(etc / "ld.so.preload", _umockdev_preload() + "\n")
    _write(etc / "sudoers.d" / "020_usb-bus", 'Defaults env_keep += "UMOCKDEV_DIR"\n', 0o440)
    _write(etc / "ssh" / "sshd_config", SSHD_CONFIG + f"SetEnv UMOCKDEV_DIR={USB_BUS_DIR}\n")
    _write(base / "usr" / "local" / "bin" / "systemctl", SYSTEMCTL_WRAPPER.format(lib=SIM_LIB), 0o755)
    _write(base / "usr" / "local" / "bin" / "ratos-sim-knob", KNOB_WRAPPER.format(lib=SIM_LIB), 0o755)
    lib = base / SIM_LIB / "pyinfra_ratos"
    lib.mkdir(parents=True)
    shutil.copy2(PACKAGE_DIR / "__init__.py", lib / "__init__.py")
    for name in ("sim", "boards"):
        if (PACKAGE_DIR / name).is_dir():
            shutil.copytree(PACKAGE_DIR / name, lib / name, ignore=shutil.ignore_patterns("__pycache__"))
    if (PACKAGE_DIR / "catalog.py").exists():
        shutil.copy2(PACKAGE_DIR / "catalog.py", lib / "catalog.py")
    (base / "var" / "log" / "ratos-sim").mkdir(parents=True)


def _umockdev_preload() -> str:
    found = sorted(Path("/usr/lib").glob("*/libumockdev-preload.so.0"))
    if not found:
        raise FarmError("umockdev's preload library is missing: apt-get install umockdev")
    return str(found[0])


def _chip_serial(pi: str, board: BoardSpec) -> str:
    # STM32 chip UIDs read as 24 hex digits in Klipper's by-id names
    return hashlib.sha256(f"{pi}/{board.port}".encode()).hexdigest()[:24].upper()


def _interface(builds: Any, board: BoardSpec) -> str | None:
    return builds.catalog[board.board].interface if board.board in builds.catalog else None


def _canbus_uuid(pi: str, board: BoardSpec) -> str:
    return board.canbus_uuid or hashlib.sha256(f"{pi}/{board.port}/can".encode()).hexdigest()[:12]


def _pi_image(images: Path, image: Path | None, spec: BoardSpec) -> str | None:
    """The board's first firmware, copied where the Pi's emulator reads it at its first start."""
    if image is None or not (image / "klipper.bin").exists():
        return None
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy2(image / "klipper.bin", images / f"{spec.firmware}-{spec.board}.bin")
    return f"/var/lib/ratos-sim/images/{spec.firmware}-{spec.board}.bin"


def _bootloader(spec: Any, entry: Any) -> str:
    """Where the board's 1200-baud request leads: the scenario's choice, or Katapult when the
    catalog board has it (a Katapult variant), else its ROM: BOOTSEL when the catalog knows the
    board's ``rp2040_boot`` id, else DFU."""
    if spec.bootloader != "auto":
        return spec.bootloader
    if spec.mode == "katapult" or "katapult" in entry.flash_methods or "katapult" in entry.usb:
        return "katapult"  # a Katapult variant, or a bridge with Katapult (usb.katapult)
    return "rp2040-boot" if "rp2040_boot" in entry.usb else "dfu"


def _firmware_record(build_dir: Path | None) -> dict[str, Any] | None:
    if build_dir is None:
        return None
    data = json.loads((build_dir / "klipper.dict").read_text(encoding="utf-8"))
    return {"version": data["version"], "build_versions": data["build_versions"], "config": data["config"]}


class FirmwareBuilds:
    """The images boards run at start: each (old|current, board) built once per farm."""

    def __init__(self, state_dir: Path, repo: Path, versions: dict[str, Any], catalog: dict[str, Any]) -> None:
        self.root = state_dir / "firmware"
        self.repo = repo
        self.versions = versions
        self.catalog = catalog
        self.built: dict[tuple[str, str], Path] = {}

    def get(self, kind: str, board_id: str) -> Path | None:
        if kind == "blank":
            return None
        key = (kind, board_id)
        if key not in self.built:
            from pyinfra_ratos.sim.klipper_repo import build_firmware

            board = self.catalog[board_id]
            workdir = self.root / f"{kind}-{board_id}"
            self.built[key] = build_firmware(self.repo, self.versions[kind]["commit"], board.kconfig, workdir)
        return self.built[key]


def prepare_pi(
    state_dir: Path, base: Path, pi: PiSpec, template: Path, builds: FirmwareBuilds, board_ids: list[str]
) -> dict[str, Any]:
    pi_dir = state_dir / "pis" / pi.name
    upper = pi_dir / "upper"
    home = pi_dir / "home" / "pi"
    home.mkdir(parents=True)
    (upper / "etc" / "ssh").mkdir(parents=True)
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{pi.name}",
         "-f", str(upper / "etc" / "ssh" / "ssh_host_ed25519_key"))
    hosts = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{pi.name}", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if pi.network == "online":
        # the outside world an online Pi needs answers on its own loopback (see pi_init)
        hosts.append(f"{INTERNET_STANDIN}\tgithub.com")
    _write(upper / "etc" / "hostname", pi.name + "\n")
    _write(upper / "etc" / "hosts", "\n".join(hosts) + "\n")
    _write(upper / "etc" / "resolv.conf", "nameserver 127.0.0.53\noptions timeout:1 attempts:1\n")
    (upper / "var" / "log" / "ratos-sim").mkdir(parents=True)
    # the Pi's CPU as programs ask it (the farm's kernel is this machine's): `uname -m`
    _write(upper / "usr" / "local" / "bin" / "uname", UNAME_STANDIN.format(machine=ARCHES[pi.arch]), 0o755)

    boards = [
        {"board": b.board, "mcu_name": b.mcu_name, "port": b.port, "mode": b.mode,
         "firmware": b.firmware, "faults": list(b.faults), "serial": b.serial or _chip_serial(pi.name, b),
         "canbus_uuid": _canbus_uuid(pi.name, b) if _interface(builds, b) in ("can", "usbcan") else None,
         "on_usb": _interface(builds, b) != "can"}
        for b in pi.boards
    ]
    pihome.write_home(home, pi.name, pi.model, boards, board_ids, PI_UID, PI_GID, fresh=pi.fresh)
    shutil.copy2(state_dir / "id_ed25519.pub", home / ".ssh" / "authorized_keys")
    os.chown(home / ".ssh" / "authorized_keys", PI_UID, PI_GID)
    if not pi.fresh:  # a fresh card has no Klipper checkout yet: provisioning brings it
        shutil.copytree(template, home / "klipper", symlinks=True)
        if pi.checkout == "old":  # a printer still on the previous Klipper release
            _run("git", "-C", str(home / "klipper"), "checkout", "-q", "--detach", builds.versions["old"]["commit"])
        owner = (0, 0) if pi.klipper_owner == "root" else (PI_UID, PI_GID)
        _run("chown", "-R", f"{owner[0]}:{owner[1]}", str(home / "klipper"))

    mcus, usb_boards, can_nodes = [], [], []
    can_bridge: dict[str, Any] | None = None
    images = upper / "var" / "lib" / "ratos-sim" / "images"
    for spec, board in zip(pi.boards, boards):
        entry = builds.catalog[spec.board]
        image = builds.get(spec.firmware, spec.board)
        board["image_dir"] = str(image) if image else None
        mcu = {
            "name": spec.mcu_name,
            "board": spec.board,
            "port": spec.port,
            "present": spec.mode == "klipper" and image is not None,
            "firmware": _firmware_record(image) if spec.mode == "klipper" else None,
        }
        if entry.interface == "linux":
            mcu["service"] = "klipper-mcu"  # the host MCU talks while klipper-mcu runs
        elif entry.interface == "can":  # behind a CAN bus: a node of the Pi's emulated segment
            can_nodes.append({
                "uuid": board["canbus_uuid"], "board": spec.board, "mcu": entry.mcu, "mcu_name": spec.mcu_name,
                "app_address": entry.app_address, "flash_map": entry.dfu_flash_map,
                "image": _pi_image(images, image, spec), "mode": spec.mode,
                "faults": [f for f in spec.faults if f != "bridge-never-back"],
            })
        else:
            pi_image, image_address = None, None
            if image is not None and (image / "klipper.bin").exists():
                images.mkdir(parents=True, exist_ok=True)
                shutil.copy2(image / "klipper.bin", images / f"{spec.firmware}-{spec.board}.bin")
                pi_image = f"/var/lib/ratos-sim/images/{spec.firmware}-{spec.board}.bin"
            elif image is not None and (image / "klipper.uf2").exists():  # RP2040: the pages the UF2 writes
                from pyinfra_ratos.firmware.picoboot.protocol import image_of, uf2_pages
                image_address, flat = image_of(uf2_pages((image / "klipper.uf2").read_bytes()))
                images.mkdir(parents=True, exist_ok=True)
                (images / f"{spec.firmware}-{spec.board}.bin").write_bytes(flat)
                pi_image = f"/var/lib/ratos-sim/images/{spec.firmware}-{spec.board}.bin"
            if entry.interface == "usbcan":
                can_bridge = {"bridge_port": spec.port, "bridge_uuid": board["canbus_uuid"]}
            mode = "can-bridge" if entry.interface == "usbcan" and spec.mode == "klipper" else spec.mode
            usb_boards.append({
                "port": spec.port, "board": spec.board, "mcu": entry.mcu, "mode": mode,
                "serial": board["serial"], "app_address": entry.app_address,
                "dfu_flash_map": entry.dfu_flash_map, "image": pi_image, "image_address": image_address,
                "bootloader": f"{entry.name} bootloader", "faults": list(spec.faults),
                "mcu_name": spec.mcu_name,
                "bootloader_request": _bootloader(spec, entry),
                "katapult_start": spec.katapult_start,
            })
        mcus.append(mcu)
    usb_spec: dict[str, Any] = {"boards": usb_boards}
    if can_nodes or can_bridge:
        # the Pi's can0: a user-space segment in its own network namespace (see sim.can)
        usb_spec["can"] = {"interface": "can0", "bitrate": 1000000, "txqueuelen": 128, "group": CAN_GROUP,
                           "port": CAN_PORT, "nodes": can_nodes, **(can_bridge or {"bridge_port": None})}
        _write(upper / "etc" / "ratos-can" / "can0.json", json.dumps({
            "transport": "segment", "group": CAN_GROUP, "port": CAN_PORT,
            "state_file": "/var/lib/ratos-sim/usb/can/can0.json"}, indent=1) + "\n")
    _write(upper / "var" / "lib" / "ratos-sim" / "usb-spec.json", json.dumps(usb_spec, indent=1) + "\n")
    state = {
        "hostname": pi.name,
        "print_state": pi.state,
        "print_filename": "" if pi.state == "standby" else "benchy.gcode",
        "services": {"klipper": "inactive", "moonraker": "inactive", "klipper-mcu": "inactive"},
        "allowed_services": list(pi.allowed_services),
        "klipper_path": "/home/pi/klipper",
        "klipper_user": "pi",
        "klippy_log": "/home/pi/printer_data/logs/klippy.log",
        "host_version": "",
        "host_build_versions": "",
        "mcus": mcus,
        "klippy": pi.klippy,
        "moonraker_fault": pi.moonraker_fault,
        "moonraker_hang_seconds": pi.moonraker_hang_seconds,
        "arch": pi.arch,
    }
    if pi.fresh:
        state["enabled"] = {"klipper": False}  # installed, never configured: nothing enabled it
    pistate.save(state, str(upper / "var" / "lib" / "ratos-sim" / "state.json"))
    config = {
        "name": pi.name,
        "base": str(base),
        "network": pi.network,
        "services": {"klipper": pi.klipper, "moonraker": pi.moonraker, "klipper-mcu": "active"},
        "usb_bus": USB_BUS_DIR,
        "internet": INTERNET_STANDIN,
        "boards": boards,
        "model": pi.model,
        "group": pi.group,
    }
    _write(pi_dir / "pi.json", json.dumps(config, indent=1) + "\n")
    return config


# --- up / down --------------------------------------------------------------------------------


def running(state_dir: Path) -> bool:
    return procs.pidfile_alive(str(state_dir / "daemon.pid")) is not None


def _check_state_dir(state_dir: Path) -> None:
    text = str(state_dir.resolve())
    if any(ch in text for ch in ":,\n "):
        raise FarmError(f"state dir {text!r}: overlayfs cannot take ':', ',' or spaces in paths; pick another")


def inventory_text(state_dir: Path, pis: list[dict[str, Any]], port: int, commit: str) -> str:
    """A pyinfra inventory of the farm: one list per scenario group, the fleet data in ``_ssh``."""
    state = state_dir.resolve()
    lines = [
        f'"""pyinfra inventory of the virtual RatOS farm in {state} (written by `ratos-fleet sim up`)."""',
        "",
        "_ssh = {",
        '    "ssh_user": "pi",',
        f'    "ssh_port": {port},',
        f'    "ssh_key": "{state / "id_ed25519"}",',
        f'    "ssh_known_hosts_file": "{state / "known_hosts"}",',
        '    "ssh_strict_host_key_checking": "yes",',
        '    "ssh_allow_agent": False,',
        '    "ssh_look_for_keys": False,',
        "    # the fleet's pinned Klipper and the controller side of the farm: its Klipper checkout,",
        "    # build cache, git bundles and config backups",
        f'    "klipper_commit": "{commit}",',
        f'    "klipper_source": "{state / "klipper-template"}",',
        f'    "firmware_cache": "{state / "firmware-cache"}",',
        f'    "klipper_bundle_cache": "{state / "bundles"}",',
        f'    "config_backups": "{state / "config-backups"}",',
        "}",
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for pi in pis:
        groups.setdefault(pi.get("group", "pis"), []).append(pi)
    for group, members in groups.items():
        lines += ["", f"{group} = ["]
        for pi in members:
            boards = [{"board": b["board"], "mcu_name": b["mcu_name"], "port": b["port"]}
                      if not b.get("canbus_uuid") else
                      {"board": b["board"], "mcu_name": b["mcu_name"], "canbus_uuid": b["canbus_uuid"],
                       **({"port": b["port"]} if b.get("on_usb") else {})} for b in pi["boards"]]
            lines.append(f'    ("{pi["name"]}", {{**_ssh, "ssh_hostname": "{pi["address"]}", '
                         f'"printer_model": "{pi.get("model", "v-core-3")}", "boards": {boards!r}}}),')
        lines.append("]")
    return "\n".join(lines) + "\n"


def known_hosts_text(state_dir: Path, pis: list[dict[str, Any]], port: int) -> str:
    lines = []
    for pi in pis:
        key = (state_dir / "pis" / pi["name"] / "upper/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        host = pi["address"] if port == 22 else f"[{pi['address']}]:{port}"
        lines.append(f"{host} {key[0]} {key[1]}")
    return "\n".join(lines) + "\n"


def up(scenario_path: str | Path, state_dir: str | Path, ssh_port: int = 22, timeout: float | None = None) -> dict[str, Any]:
    """Start the farm of a scenario; returns the farm description (also in farm.json)."""
    if os.geteuid() != 0:
        raise FarmError("the virtual farm needs root (namespaces, mounts, sshd); run it with sudo")
    from pyinfra_ratos.firmware.catalog import load_catalog

    catalog = load_catalog()
    scenario: Scenario = load_scenario(scenario_path, board_known=catalog.__contains__)
    state_dir = Path(state_dir)
    _check_state_dir(state_dir)
    if running(state_dir):
        raise FarmError(f"a farm already runs in {state_dir}; run `ratos-fleet sim down --state {state_dir}` first")
    down(state_dir)  # leftovers of a crashed run
    for stale in ("pis", "base", "firmware", "ready", "failed", "farm.json", "inventory.py", "known_hosts"):
        path = state_dir / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    state_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    addresses = allocate_addresses(state_dir, len(scenario.pis), ssh_port)
    if not (state_dir / "id_ed25519").exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ratos-fleet-sim", "-f", str(state_dir / "id_ed25519"))
    base = state_dir / "base"
    build_base(base)
    from pyinfra_ratos.sim.klipper_repo import create_template_repo

    template = state_dir / "klipper-template"
    if template.exists():
        shutil.rmtree(template)
    versions = create_template_repo(template)
    builds = FirmwareBuilds(state_dir, template, versions, catalog)
    pis = []
    for pi, address in zip(scenario.pis, addresses):
        config = prepare_pi(state_dir, base, pi, template, builds, sorted(catalog))
        pis.append({**config, "address": address})
    farm = {
        "scenario": str(Path(scenario_path).resolve()),
        "ssh_port": ssh_port,
        "sim_lib": str(base / SIM_LIB),
        "versions": versions,
        "pis": pis,
    }
    _write(state_dir / "farm.json", json.dumps(farm, indent=1) + "\n")
    with open(state_dir / "daemon.log", "ab") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "pyinfra_ratos.sim.daemon", str(state_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
        )
    deadline = time.monotonic() + (timeout or 90 + 2 * len(pis))
    while not (state_dir / "ready").exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            failed = (state_dir / "failed").read_text().split() if (state_dir / "failed").exists() else []
            details = "".join(
                f"\n--- {name}: init.log\n" + (state_dir / "pis" / name / "init.log").read_text()[-2000:]
                for name in failed[:3]
            )
            log_tail = (state_dir / "daemon.log").read_text()[-2000:]
            down(state_dir)
            raise FarmError(f"the farm did not come up (failed Pis: {failed or 'none'}){details}\n{log_tail}")
        time.sleep(0.05)
    _write(state_dir / "known_hosts", known_hosts_text(state_dir, pis, ssh_port))
    _write(state_dir / "inventory.py", inventory_text(state_dir, pis, ssh_port, versions["current"]["commit"]))
    farm["seconds"] = round(time.monotonic() - started, 2)
    return farm


def down(state_dir: str | Path) -> dict[str, int]:
    """Stop everything the farm in ``state_dir`` started, whatever state it was left in."""
    state_dir = Path(state_dir)
    stopped = {"daemon": 0, "pis": 0}
    pi_dirs = sorted((state_dir / "pis").iterdir()) if (state_dir / "pis").is_dir() else []
    # the namespaces to see emptied, whoever kills their PID 1 (us, or the daemon as it stops)
    namespaces = set()
    for pi_dir in pi_dirs:
        pid = procs.pidfile_alive(str(pi_dir / "init.pid"))
        if pid is not None and (namespace := procs.pid_namespace(pid)) is not None:
            namespaces.add(namespace)
    if procs.stop_pidfile(str(state_dir / "daemon.pid"), signal.SIGTERM):
        stopped["daemon"] = 1
    for pi_dir in pi_dirs:
        if procs.stop_pidfile(str(pi_dir / "init.pid"), signal.SIGKILL):
            stopped["pis"] += 1
        for name in ("init.pid", "ready"):
            (pi_dir / name).unlink(missing_ok=True)
    stopped["pis"] = max(stopped["pis"], len(namespaces))
    procs.wait_namespaces_empty(namespaces)
    for name in ("daemon.pid", "ready", "failed"):
        (state_dir / name).unlink(missing_ok=True)
    return stopped
