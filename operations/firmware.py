"""
Ship built firmware to a Pi and flash its boards, one board at a time, never while printing.

These operations turn a decision into commands: the decision itself (skip, refuse, or the flash
steps) is :func:`pyinfra_ratos.firmware.plan.plan_flash`, made from facts read once per host (pyinfra
runs an operation's body twice, so reading facts inside would double every round trip). The
deploy :mod:`pyinfra_ratos.deploys.firmware` does all of it for every board of every host.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationError, QuoteString, StringCommand, operation

from pyinfra_ratos.firmware import dfu, picoboot
from pyinfra_ratos.firmware import agent as flash_agent
from pyinfra_ratos.firmware import methods
from pyinfra_ratos.firmware.builder import DEFAULT_CACHE, BuiltArtifact
from pyinfra_ratos.firmware.plan import DFU_CLIENT_VENV, FlashPlan, with_backend

# relative to the SSH user's home: sftp paths and the agent's image paths resolve against it
ARTIFACTS_DIR = "printer_data/firmware"
_MAIN_GUARD = 'if __name__ == "__main__":'


def agent_source() -> str:
    """The printer agent as shipped: ``firmware/agent.py`` with the Pi side (``pi_source``) of every
    registered flash method that brings its own runner, inserted before the agent's entry point.

    One string per set of registered methods, shared: every printer's transaction command holds it
    (~107 KB), and a fleet update keeps up to a window of printers' commands at once."""
    sources: list[str] = []  # each file once, in order (two methods may ship one client)
    for method in methods.METHODS.values():
        for source in (method.pi_source,) if isinstance(method.pi_source, str) else method.pi_source or ():
            if source not in sources:
                sources.append(source)
    return _agent_source(tuple(sources))


@functools.lru_cache(maxsize=4)
def _agent_source(sources: tuple[str, ...]) -> str:
    text = Path(flash_agent.__file__).read_text(encoding="utf-8")
    extra = [Path(source).read_text(encoding="utf-8") for source in sources]
    if not extra:
        return text
    head, guard, tail = text.rpartition(_MAIN_GUARD)
    return head + "\n\n".join(extra) + "\n\n" + guard + tail
# the sha256 of the installed client bundle, written last: no stamp, no (complete) client
DFU_CLIENT_STAMP = f"{DFU_CLIENT_VENV}/pyinfra-ratos-dfu.sha256"
_CLIENT_INIT = (b'"""pyinfra-ratos on a Pi: only the pyusb clients (pyinfra_ratos.firmware.dfu, .picoboot) are '
                b'installed here."""\n')


def artifact_path(artifact: BuiltArtifact, name: str | None = None) -> str:
    """Where a file of the artifact lives on the Pi, relative to the SSH user's home."""
    return f"{ARTIFACTS_DIR}/{artifact.identity.name}/{name or artifact.firmware_file}"


def _tarball(artifact: BuiltArtifact) -> str:
    """The artifact directory as one tar file next to it (made once): one upload per Pi."""
    path = artifact.directory.with_name(artifact.directory.name + ".tar")
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        with tarfile.open(partial, "w") as tar:
            for name in artifact.files():
                tar.add(artifact.directory / name, arcname=name)
        os.replace(partial, path)
    return str(path)


def fail(reason: str) -> StringCommand:
    """A command that fails this host alone, saying why (an exception would stop every host)."""
    return StringCommand("echo", QuoteString(reason), ">&2", "&&", "exit", "1")


@operation()
def refuse(reason: str):
    """
    Fail this host alone, before anything changes on it, saying why.

    + reason: what is wrong and how to fix it

    pyinfra stops every host when an operation raises, so a printer-specific problem found while
    planning (a build that cannot be made for it, a checkout in a state that would brick nothing
    but match nothing) is a command that fails instead.

    **Example:**

    .. code:: python

        firmware.refuse(name="Firmware", reason="cannot tell which Klipper the Pi runs")
    """
    yield fail(reason)


BUILT_PREFIX = "RATOS-BUILT "


def pi_build_script(fragment: str, klipper_path: str, allow_unclean: bool, commit: str | None = None,
                    target: str = "") -> str:
    """The shell script that builds one fragment on the Pi and files it under its identity.

    Two make calls with absolute ``KCONFIG_CONFIG``/``OUT`` (never olddefconfig and the build in
    one), identity = version from the built dictionary + sha256 of the resolved config, and the
    artifact appears under its identity only once complete. Prints ``RATOS-BUILT <identity>``.
    A host MCU (``target``: the Pi's architecture, its native compiler's) gets it as a suffix.
    """
    checks = "" if allow_unclean else (
        'case "$version" in "?"*|*-dirty*|*-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]_[0-9]*)\n'
        '  echo "the Pi\'s checkout builds as $version (dirty, undescribable or unclean): not filing it;'
        ' commit or stash the changes there, or set allow_unclean_build" >&2; exit 1;; esac\n')
    return "\n".join([
        "set -e",
        f'K="$HOME"/{shlex.quote(klipper_path[2:])}' if klipper_path.startswith("~/") else f"K={shlex.quote(klipper_path)}",
        f'root="$HOME/{ARTIFACTS_DIR}"; mkdir -p "$root"',
        'work=$(mktemp -d "$root/.build-XXXXXX"); trap \'rm -rf "$work"\' EXIT',
        *([] if commit is None else [
            # the commit the Pi will run, in a worktree: the checkout itself moves only later, in
            # the printer agent, once everything is prepared
            f'c={shlex.quote(commit)}',
            'git -C "$K" worktree add -q --detach "$work/src" "$c" > "$work/worktree.log" 2>&1'
            ' || { tail -3 "$work/worktree.log" >&2; exit 1; }',
            'trap \'git -C "$K" worktree remove --force "$work/src" 2>/dev/null; rm -rf "$work"\' EXIT',
            'K="$work/src"',
        ]),
        f"printf '%s' {shlex.quote(fragment)} > \"$work/config\"",
        'make -C "$K" KCONFIG_CONFIG="$work/config" OUT="$work/out/" olddefconfig > "$work/build.log" 2>&1',
        'make -C "$K" KCONFIG_CONFIG="$work/config" OUT="$work/out/" -j"$(nproc)" >> "$work/build.log" 2>&1'
        ' || { tail -5 "$work/build.log" >&2; exit 1; }',
        'version=$(python3 -c \'import json,sys; print(json.load(open(sys.argv[1]))["version"])\''
        ' "$work/out/klipper.dict")',
        checks,
        'identity="$version-$(sha256sum "$work/config" | cut -c1-12)"' + (f"-{shlex.quote(target)}" if target else ""),
        'if [ ! -d "$root/$identity" ]; then',
        '  mkdir "$work/artifact"',
        '  for f in klipper.bin klipper.uf2 klipper.elf klipper.dict; do'
        ' if [ -f "$work/out/$f" ]; then cp "$work/out/$f" "$work/artifact/"; fi; done',
        '  cp "$work/config" "$work/build.log" "$work/artifact/"',
        '  mv "$work/artifact" "$root/$identity"',
        "fi",
        f'echo "{BUILT_PREFIX}$identity"',
    ])


@operation()
def build(fragment: str, klipper_path: str = "~/klipper", allow_unclean: bool = False, commit: str | None = None,
          target: str = ""):
    """
    Build a board's firmware on the Pi from its own Klipper checkout, filed under its identity.

    + fragment: the board's Kconfig fragment (``FirmwareTarget.fragment``)
    + klipper_path: the Pi's Klipper checkout; the build runs as the SSH user, who must own it
      (as root, git would refuse a checkout owned by pi and the version would silently become ``?``)
    + allow_unclean: also file builds of a dirty or undescribable checkout
    + commit: build this commit (already fetched) from a worktree, leaving the checkout where it is
      (an update builds for the commit it will move to before moving anything); default: HEAD
    + target: a host MCU's architecture (``armhf``/``aarch64``), named in its identity

    The artifact lands in ``~/printer_data/firmware/<version>-<sha256(config)[:12]>/`` (the same
    layout the controller ships). Already built: the make calls find nothing to do. Prints
    ``RATOS-BUILT <identity>`` for the flash planned after it.

    **Example:**

    .. code:: python

        firmware.build(name="Build on the Pi", fragment=target.fragment)
    """
    if commit is not None and not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise OperationError(f"commit={commit!r}: 40 lower-case hex digits")
    if target and not re.fullmatch(r"[a-z0-9_]+", target):
        raise OperationError(f"target={target!r}: an architecture name such as armhf or aarch64")
    yield StringCommand("sh", "-c", QuoteString(pi_build_script(fragment, klipper_path, allow_unclean, commit, target)))


def built_identity(meta: Any) -> str | None:
    """The identity a completed :func:`build` printed, or None."""
    for line in meta.stdout_lines if meta is not None and meta.is_complete() else []:
        if line.startswith(BUILT_PREFIX):
            return line[len(BUILT_PREFIX):].strip()
    return None


@operation()
def upload(artifact: BuiltArtifact, present: Mapping[str, Any] | None = None):
    """
    Put a built firmware artifact into ``~/printer_data/firmware/<identity>/`` on the Pi.

    + artifact: the artifact built on the controller (:class:`pyinfra_ratos.firmware.builder.BuiltArtifact`)
    + present: the Pi's ``FirmwareArtifacts`` entry for this identity, if any

    Nothing happens when the Pi already holds every file with the same sha256. Otherwise the
    artifact travels as one tar file, is unpacked into a staging directory, checked against its
    manifest's sha256 sums and only then renamed to its identity: a half-copied artifact never
    carries an identity's name.

    **Example:**

    .. code:: python

        firmware.upload(
            name="Ship the H723 firmware",
            artifact=builder.build(commit, board, fragment),
            present=host.get_fact(FirmwareArtifacts).get(identity_name),
        )
    """
    manifest = json.loads((artifact.directory / "identity.json").read_text(encoding="utf-8"))
    wanted = manifest["files"]
    have = {name: entry.get("sha256") for name, entry in ((present or {}).get("files") or {}).items()}
    if all(have.get(name) == sha for name, sha in wanted.items() if name != "identity.json"):
        host.noop(f"firmware {artifact.identity.name} is already on the Pi")
        return
    final = f"{ARTIFACTS_DIR}/{artifact.identity.name}"
    staging = f"{ARTIFACTS_DIR}/.incoming-{artifact.identity.name}"
    tar_remote = f"{staging}.tar"
    yield StringCommand("mkdir", "-p", QuoteString(ARTIFACTS_DIR))
    yield FileUploadCommand(_tarball(artifact), tar_remote)
    sums = [QuoteString(f"{sha}  {name}") for name, sha in sorted(wanted.items())]
    yield StringCommand(
        "rm", "-rf", QuoteString(staging), "&&", "mkdir", "-p", QuoteString(staging),
        "&&", "tar", "-xf", QuoteString(tar_remote), "-C", QuoteString(staging),
        "&&", "rm", "-f", QuoteString(tar_remote),
        "&&", "(", "cd", QuoteString(staging), "&&", "printf", "'%s\\n'", *sums,
        "|", "sha256sum", "--quiet", "--strict", "-c", "-", ")",
        "&&", "rm", "-rf", QuoteString(final), "&&", "mv", QuoteString(staging), QuoteString(final),
    )


def _python_files(package_dir: Path) -> list[Path]:
    return sorted(path for path in package_dir.rglob("*.py") if "__pycache__" not in path.parts)


@functools.lru_cache(maxsize=1)
def dfu_client_bundle() -> tuple[bytes, str]:
    """(tar.gz bytes, sha256) of what the client venv's site-packages must hold.

    ``usb/`` is the controller's own pyusb (pure Python; the Pi needs only its libusb) and
    ``pyinfra_ratos/firmware/dfu/`` and ``picoboot/`` the clients (DfuSe, RP2040 PICOBOOT), under
    stub package ``__init__.py`` files: nothing on
    the Pi is ever fetched from the network. The tar is reproducible (sorted names, no
    timestamps or owners), so its sha256 says whether the Pi already has this exact client.
    """
    import usb  # the controller's pyusb: a dependency of this package

    members: list[tuple[str, bytes]] = [("pyinfra_ratos/__init__.py", _CLIENT_INIT),
                                        ("pyinfra_ratos/firmware/__init__.py", _CLIENT_INIT)]
    for package, prefix in ((Path(usb.__file__).parent, "usb"),
                            (Path(dfu.__file__).parent, "pyinfra_ratos/firmware/dfu"),
                            (Path(picoboot.__file__).parent, "pyinfra_ratos/firmware/picoboot")):
        members += [(f"{prefix}/{path.relative_to(package).as_posix()}", path.read_bytes())
                    for path in _python_files(package)]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    data = gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)
    return data, hashlib.sha256(data).hexdigest()


def _dfu_client_tarball() -> tuple[str, str]:
    """(local path, sha256) of the bundle, written once under the controller's cache."""
    data, sha = dfu_client_bundle()
    path = DEFAULT_CACHE.parent / "dfu-client" / f"{sha}.tar.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)
    return str(path), sha


@operation()
def dfu_client(present: Sequence[str] | str | None = None):
    """
    Install the pyusb clients (``pyinfra_ratos.firmware.dfu`` and ``.picoboot``) in a venv on the Pi, for
    ``backend="pyusb"`` DFU boards and for RP2040 boards (PICOBOOT).

    + present: what the Pi's stamp file holds (``host.get_fact(FileContents, path=DFU_CLIENT_STAMP)``)

    The venv is ``~/.local/share/pyinfra-ratos/venv`` (``python3 -m venv --without-pip``); its
    site-packages get pyusb and the client, shipped from the controller as one tar file, checked
    by sha256 on the Pi before unpacking. No network is used on the Pi. Nothing happens when the
    stamp already names this bundle's sha256; the stamp is written last, so a half-made venv is
    made again on the next run.

    **Example:**

    .. code:: python

        firmware.dfu_client(
            name="Install the pyusb DFU client",
            present=host.get_fact(FileContents, path=firmware.DFU_CLIENT_STAMP),
        )
    """
    local, sha = _dfu_client_tarball()
    lines = [present] if isinstance(present, str) else list(present or [])
    if any(line.strip() == sha for line in lines):
        host.noop(f"the pyusb DFU client {sha[:12]} is already installed")
        return
    top = os.path.dirname(DFU_CLIENT_VENV)
    tar_remote = f"{top}/dfu-client.tar.gz"
    venv = QuoteString(DFU_CLIENT_VENV)
    yield StringCommand("mkdir", "-p", QuoteString(top))
    yield FileUploadCommand(local, tar_remote)
    site = StringCommand(QuoteString(f"{DFU_CLIENT_VENV}/bin/python"), "-I", "-c",
                         QuoteString("import sysconfig; print(sysconfig.get_path('purelib'))"))
    yield StringCommand(
        "printf", "'%s\\n'", QuoteString(f"{sha}  {tar_remote}"), "|", "sha256sum", "--quiet", "--strict", "-c", "-",
        "&&", "rm", "-rf", venv, "&&", "python3", "-m", "venv", "--without-pip", venv,
        "&&", "site=$(", site, ")", "&&", "tar", "-xzf", QuoteString(tar_remote), "-C", '"$site"',
        "&&", "rm", "-f", QuoteString(tar_remote),
        "&&", "echo", sha, ">", QuoteString(DFU_CLIENT_STAMP),
    )


def _step(step: Any) -> dict[str, Any]:
    return {"step": type(step).__name__, **dataclasses.asdict(step)}


def agent_board(plan: FlashPlan, mcu_name: str) -> dict[str, Any]:
    """One board of the agent's plan (see :mod:`pyinfra_ratos.firmware.agent`)."""
    return {
        "board": plan.board_id,
        "mcu_name": mcu_name,
        "method": plan.method,
        "port": plan.port,
        "expected_version": plan.expected_version,
        "before_version": plan.before_version,
        "sha256": plan.image_sha256,
        "steps": [_step(step) for step in plan.steps],
    }


def agent_plan(plan: FlashPlan, mcu_name: str, moonraker_url: str) -> dict[str, Any]:
    """The JSON the agent runs to flash one board (no checkout)."""
    return {"moonraker": moonraker_url, "boards": [agent_board(plan, mcu_name)]}


def agent_command(payload: Mapping[str, Any]) -> StringCommand:
    """Run the printer agent on the Pi as root with ``payload`` as its plan: the one place where
    Klipper is stopped, restarted or moved and boards are flashed (it re-checks the printer first)."""
    # "$HOME" is the SSH user's (expanded before sudo): the agent finds the artifacts under it
    return StringCommand("sudo", "-n", "python3", "-c", QuoteString(agent_source()),
                         QuoteString(json.dumps({"lock_wait_s": 5, **payload}, sort_keys=True)), '"$HOME"')


def checked_backend(plan: FlashPlan, backend: str | None) -> FlashPlan:
    if backend is None:
        return plan
    try:
        return with_backend(plan, backend)
    except ValueError as error:
        raise OperationError(str(error)) from None


@operation()
def transaction(
    boards: Sequence[tuple[FlashPlan, str]] = (),
    klipper: Mapping[str, str] | None = None,
    restart: bool = False,
    moonraker_url: str = "http://127.0.0.1:7125",
    backend: str | None = None,
):
    """
    Disrupt a printer once, as a whole: flash its boards, move its Klipper, restart it, verify.

    + boards: ``(flash plan, mcu name)`` of every board to flash, in the order to flash them
      (plans that are not ``flash`` are left out: :func:`flash` reports those)
    + klipper: ``{"path", "user", "from", "to"}``: check the Klipper checkout out at commit ``to``
      (already fetched: :func:`pyinfra_ratos.operations.klipper.fetch`) as its owner ``user``
    + restart: restart Klipper even when nothing is flashed or moved (a configuration change)
    + moonraker_url: Moonraker as seen from the Pi
    + backend: ``dfu-util`` or ``pyusb`` for every DFU board (default: each plan's)

    The printer agent runs it as root (:mod:`pyinfra_ratos.firmware.agent`): it takes the printer's
    lock and each board's USB port lock, re-checks on the Pi that the printer is positively idle,
    re-checks what was prepared (image sha256, the commit present, a clean tree), then stops
    Klipper, flashes each board (keeping a read of the firmware it ran, reading every write back),
    checks Klipper out, starts it and verifies it (a new main PID, klippy ready, every MCU on its
    new version). Any failure after the first disruptive step puts the previous commit and
    firmware back. The host fails unless everything was done: exit 75 when the printer was not
    idle (nothing touched), 1 when it failed or was rolled back (the reason and what to do on
    stderr). Nothing to do: no command.

    **Example:**

    .. code:: python

        firmware.transaction(
            name="Update the printer",
            boards=[(plan, "mcu")],
            klipper={"path": "/home/pi/klipper", "user": "pi", "from": old, "to": new},
        )
    """
    flashes = [(checked_backend(plan, backend), mcu) for plan, mcu in boards if plan.action == "flash"]
    moves = bool(klipper) and klipper["to"] != klipper.get("from")  # type: ignore[index]
    if not (flashes or moves or restart):
        host.noop("nothing to flash, move or restart")
        return
    yield agent_command({
        "moonraker": moonraker_url,
        "boards": [agent_board(plan, mcu) for plan, mcu in flashes],
        "klipper": dict(klipper) if moves else None,  # type: ignore[arg-type]
    })


@operation()
def flash(plan: FlashPlan, mcu_name: str = "mcu", moonraker_url: str = "http://127.0.0.1:7125",
          backend: str | None = None):
    """
    Carry out a board's flash plan on the Pi: skip, refuse, or flash and verify.

    + plan: the board's :class:`pyinfra_ratos.firmware.plan.FlashPlan` (``plan_flash`` on facts)
    + mcu_name: Klipper's name for the board's MCU (``mcu``, ``toolboard_t0``...), for verification
    + moonraker_url: Moonraker as seen from the Pi
    + backend: how a DFU board is written: ``dfu-util`` or ``pyusb`` (the client installed by
      ``dfu_client``); both read every write back and compare it before the board leaves DFU;
      default: the plan's (``plan_flash(backend=...)``)

    A skip yields nothing (``host.noop`` says why). A refusal by policy (printer busy, a board that
    is never flashed unattended) is reported the same way; any other refusal (an image that does
    not fit the board, a board not found) fails this host alone, before any command touches it.
    A flash is a :func:`transaction` of this one board: the printer agent re-checks that the
    printer is idle, flashes by USB port with read-back, restarts Klipper on every exit path,
    verifies the version through Moonraker and puts the old firmware back when anything failed;
    its board line is ``RATOS-RESULT {...}`` (see :mod:`pyinfra_ratos.firmware.agent`).

    **Example:**

    .. code:: python

        firmware.flash(
            name="Flash the mainboard",
            plan=plan_flash(board, audit["boards"], mcu, audit["activity"], artifact),
        )
    """
    if plan.action == "skip" or (plan.action == "refuse" and plan.hold):
        host.noop(plan.reason)
        return
    if plan.action == "refuse":
        yield fail(f"not flashing: {plan.reason}")
        return
    if plan.action != "flash":
        raise OperationError(f"unknown flash plan action {plan.action!r}")
    yield agent_command(agent_plan(checked_backend(plan, backend), mcu_name, moonraker_url))
