"""Firmware identity: which build a board needs, named by Klipper version and resolved config.

``<version>-<first 12 hex of sha256(resolved .config)>`` names a build exactly, since Klipper
builds are bit-reproducible for the same tree, config and toolchain. A Linux host MCU is also
built for a CPU the config does not name (the compiler decides: ``CROSS_PREFIX``), so its identity
carries the target architecture as a suffix (``...-armhf``, ``...-aarch64``). It is the name of the
artifact directory ``~/printer_data/firmware/<identity>/``. A fleet needs one build per distinct
(version, board, fragment), however many printers share it. Pure Python, no pyinfra import.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.kconfig import OverrideValue, render_fragment

HASH_CHARS = 12
# Klipper appends "-YYYYMMDD_HHMMSS-<hostname>" to any build that is not clean
_TIMESTAMP_SUFFIX = re.compile(r"-\d{8}_\d{6}-[A-Za-z0-9.-]+$")  # hostnames may hold "-"
# what an identity name may contain, so it is safe as a directory name and in a shell word
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9._+-]+\Z")


class BuildVersionError(ValueError):
    """A checkout whose version would make a build that never matches the host; says the fix."""


def config_sha256(resolved_text: str) -> str:
    """sha256 of the resolved ``.config`` exactly as olddefconfig wrote it."""
    return hashlib.sha256(resolved_text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FirmwareIdentity:
    version: str
    config_sha256: str
    board: str
    target: str = ""  # the CPU architecture a Linux host MCU is built for ("armhf", "aarch64")

    @property
    def name(self) -> str:
        suffix = f"-{self.target}" if self.target else ""
        return f"{self.version}-{self.config_sha256[:HASH_CHARS]}{suffix}"


def identity_of(version: str, resolved_text: str, board: Board | str, target: str = "") -> FirmwareIdentity:
    """The identity of a build of ``version`` with this resolved config, for a board (or its id),
    and for a Linux host MCU the architecture it is compiled for (``target``)."""
    if not version or not _SAFE_VERSION.match(version):
        raise BuildVersionError(f"version {version!r} cannot name a firmware artifact "
                                "(empty or has characters other than letters, digits, '.', '_', '+', '-')")
    board_id = board if isinstance(board, str) else board.id
    if target and not _SAFE_VERSION.match(target):
        raise BuildVersionError(f"target architecture {target!r} cannot name a firmware artifact")
    return FirmwareIdentity(version, config_sha256(resolved_text), board_id, target)


def check_buildable_version(version: str, allow_unclean: bool = False) -> str:
    """Return ``version`` if a build of it can ever match the host; raise with the fix if not.

    An unknown version (``?``, empty) is never allowed: it tells nothing about the source. A
    dirty tree or a timestamp-suffixed version builds firmware that no host version equals,
    so the printer would look out of date forever; allowed only when the operator asks.
    """
    if not version or version.startswith("?"):
        raise BuildVersionError(
            f"Klipper version is {version!r}: git could not describe the checkout (no .git, a shallow "
            "clone without tags, or git refusing a checkout owned by another user: 'dubious ownership'). "
            "Fix: build as the checkout's owner (e.g. pi), or mark it safe.directory, "
            "or clone with full history")
    if allow_unclean:
        return version
    if _TIMESTAMP_SUFFIX.search(version):
        raise BuildVersionError(
            f"Klipper version {version!r} carries Klipper's unclean-build timestamp: the tree was dirty "
            "or a tool failed during the build, and no host ever reports this version. "
            "Fix: commit or stash local changes in the checkout and build as its owner, "
            "or pass allow_unclean=True to flash it anyway")
    if re.search(r"-dirty(?:$|-)", version):
        raise BuildVersionError(
            f"Klipper version {version!r} is dirty: the checkout has uncommitted changes, so the build "
            "gets a timestamp suffix and never matches the host. "
            "Fix: commit or stash the changes, or pass allow_unclean=True to build it anyway")
    return version


def identity_files(firmware_file: str, sd_name: str | None = None) -> tuple[str, ...]:
    """The files of an artifact its manifest hashes: what is flashed or installed (and its copy
    under the name a board's SD-card bootloader reads, ``sd_name``), and the config.

    Not ``klipper.elf`` next to a ``.bin``/``.uf2`` nor the full ELF of a Linux MCU (its debug
    info holds the build's absolute paths), the dictionary (inside the image already) or the log:
    they differ between two builds of one identity made in different directories.
    """
    if sd_name and sd_name != firmware_file:
        return (firmware_file, sd_name, "config")
    return (firmware_file, "config")


def artifact_manifest(identity: FirmwareIdentity, mcu: str, files: Mapping[str, str]) -> dict[str, object]:
    """The ``identity.json`` of an artifact directory; ``files`` maps file name -> sha256 hex
    (:func:`identity_files`), so two builds of one identity give byte-identical manifests."""
    manifest: dict[str, object] = {
        "version": identity.version,
        "config_sha256": identity.config_sha256,
        "mcu": mcu,
        "board": identity.board,
        "files": dict(sorted(files.items())),
    }
    if identity.target:
        manifest["target"] = identity.target
    return manifest


# ---------------------------------------------------------------- build once, flash many

@dataclass(frozen=True)
class BuildTarget:
    """One board of one printer that should run ``version``."""

    host: str
    mcu_name: str            # Klipper's name for it: "mcu", "toolboard_t0", ...
    version: str
    board: Board
    overrides: Mapping[str, OverrideValue] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildRequest:
    """One build: equal requests resolve to the same config, hence the same identity."""

    version: str
    board_id: str
    fragment: str

    @property
    def key(self) -> str:
        """Short stable name for the build's work directory (before its identity is known)."""
        digest = hashlib.sha256(f"{self.version}\0{self.board_id}\0{self.fragment}".encode()).hexdigest()
        return f"{self.board_id}-{digest[:HASH_CHARS]}"


def builds_needed(targets: Iterable[BuildTarget]) -> dict[BuildRequest, tuple[tuple[str, str], ...]]:
    """The distinct builds a fleet needs -> the (host, mcu_name) pairs each one serves.

    Keyed on the rendered fragment, not the overrides as given, so overrides written in
    another order or repeating the catalog's own value do not cause another build.
    """
    users: dict[BuildRequest, list[tuple[str, str]]] = {}
    for target in targets:
        request = BuildRequest(target.version, target.board.id, render_fragment(target.board, target.overrides))
        users.setdefault(request, []).append((target.host, target.mcu_name))
    return {request: tuple(pairs) for request, pairs in users.items()}
