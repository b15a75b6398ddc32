"""Build firmware once per identity on the controller, from a local Klipper checkout.

A farm has few distinct (Klipper commit, board config) pairs and many printers, so the fleet's
firmware is built here, once per pair, and shipped to every Pi that needs it. The controller's
checkout (``klipper_source``: any clone of the Klipper repository holding the Pis' commit) is
never touched: each commit is built in its own shared clone under the cache directory, with the
two make calls Klipper wants (``olddefconfig`` then the build, absolute ``KCONFIG_CONFIG`` and
``OUT``), so the version is clean and equals what the Pi's klippy reports for that commit.

The version is ``git describe --always --tags --long`` of the source at the commit, asked once per
commit and process: a tag made after a first build changes it, the commit's clone takes the
source's tags again before building, and every cache below is keyed on it, so no cache ever needs
deleting by hand. A shallow or tag-less source is refused (its versions match no Pi).

Artifacts are cached by identity under ``cache_dir/<identity>/`` (the same layout as on the Pi:
see :mod:`pyinfra_ratos.firmware.identity`), so a second run and every other printer reuse them; every real
build appends a line to ``cache_dir/builds.jsonl`` (what the "builds once" tests count).
What ``olddefconfig`` resolved for a (version, commit, board, fragment) is kept under
``cache_dir/resolved/``, so a run whose artifacts are all cached runs no make, and one git process
per commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pyinfra_ratos.firmware.arch import ARCHES, elf_fits
from pyinfra_ratos.firmware.catalog import Board
from pyinfra_ratos.firmware.image import ImageInfo, elf_header, inspect_image, strip_elf
from pyinfra_ratos.firmware.identity import (FirmwareIdentity, artifact_manifest, check_buildable_version, identity_files,
                                    identity_of)
from pyinfra_ratos.firmware.kconfig import KconfigSymbols, load_kconfig_symbols, verify_resolved

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyinfra-ratos" / "firmware"
OUTPUTS = ("klipper.bin", "klipper.uf2", "klipper.elf", "klipper.dict")
# the ELF with its debug info, kept beside the stripped klipper.elf a Linux MCU installs
DEBUG_ELF = "klipper.elf.debug"
# what `git describe --long` prints when a tag is reachable: <tag>-<count>-g<abbreviated sha>
_DESCRIBED_FROM_TAG = re.compile(r"^.+-\d+-g[0-9a-f]+\Z")


class BuildError(RuntimeError):
    """A build that must not be flashed; the message names the board and the fix."""


@dataclass(frozen=True)
class BuiltArtifact:
    identity: FirmwareIdentity
    directory: Path  # on the controller: klipper.* + klipper.dict + config + build.log + identity.json
    firmware_file: str  # the file the board flashes (the catalog's firmware_file)
    image: ImageInfo
    resolved_config: str

    def files(self) -> list[str]:
        return sorted(name for name in os.listdir(self.directory) if not name.startswith("."))


def _run(argv: list[str], cwd: Path, log: list[str]) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    log.append(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed (exit {done.returncode}) in {cwd}: "
                         f"{(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


class Builder:
    """Builds (commit, board, fragment) once per process and once per identity on disk."""

    def __init__(self, source: str | Path, cache_dir: str | Path | None = None, allow_unclean: bool = False) -> None:
        self.source = Path(source).expanduser().resolve()
        self.cache = Path(cache_dir or DEFAULT_CACHE).expanduser().resolve()
        self.allow_unclean = allow_unclean
        self._lock = threading.Lock()
        self._done: dict[tuple[str, str, str], BuiltArtifact] = {}
        self._versions: dict[str, str] = {}
        self._kconfig: dict[Path, KconfigSymbols] = {}

    def build(self, commit: str, board: Board, fragment: str, target: str | None = None) -> BuiltArtifact:
        """Build (or find) ``board`` at ``commit``; ``target``: the Pi's architecture, required for a
        Linux host MCU (compiled with Debian's cross compiler for it) and ignored for any other."""
        target = self._target(board, target)
        key = (commit, board.id, fragment, target)
        with self._lock:
            if key not in self._done:
                self._done[key] = self._build(commit, board, fragment, target)
            return self._done[key]

    @staticmethod
    def _target(board: Board, target: str | None) -> str:
        if board.interface != "linux":
            return ""
        if target not in ARCHES:
            raise BuildError(f"board {board.id}: the Pi's architecture is {target or 'unknown'}; a host MCU is "
                             f"built here for {' or '.join(ARCHES)} only (uname -m armv7l/aarch64 on the Pi). "
                             "Fix: check the Pi answers the audit, or build on the Pi (firmware_build = \"pi\")")
        return target

    # --- steps -----------------------------------------------------------------------------

    def _git(self, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)

    def _is_shallow(self) -> bool:
        git_dir = self.source / ".git"
        if git_dir.is_dir():  # the common case, without a process
            return (git_dir / "shallow").exists()
        return self._git(self.source, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"

    def source_version(self, commit: str) -> str:
        """``git describe --always --tags --long`` of the source at ``commit``: what a build reports.

        Raises :class:`BuildError` with the fix for a source that is no git checkout, lacks the
        commit, is shallow or has no tag below the commit.
        """
        if commit in self._versions:
            return self._versions[commit]
        if not (self.source / ".git").exists():
            raise BuildError(f"klipper_source {self.source} is not a git checkout of Klipper; "
                             "clone https://github.com/Klipper3d/klipper there (with tags)")
        if self._is_shallow():
            raise BuildError(f"klipper_source {self.source} is a shallow clone: git describe miscounts or finds no "
                             "tag, so its builds report versions no Pi reports. "
                             f"Fix: git -C {self.source} fetch --tags --unshallow")
        described = self._git(self.source, "describe", "--always", "--tags", "--long", f"{commit}^{{commit}}")
        if described.returncode != 0:
            if "dubious ownership" in described.stderr:
                raise BuildError(f"git refuses klipper_source {self.source}: it belongs to another user "
                                 "(dubious ownership). Fix: build as its owner, or git config --global --add "
                                 f"safe.directory {self.source}")
            raise BuildError(f"the controller's Klipper checkout {self.source} lacks commit {commit} "
                             "that the Pi runs: git fetch (with tags) in it, or update the Pis")
        version = described.stdout.strip()
        if not _DESCRIBED_FROM_TAG.match(version):
            raise BuildError(f"klipper_source {self.source} has no tag below commit {commit[:12]} (describes as "
                             f"{version!r}): a clone without tags builds versions no Pi reports. "
                             f"Fix: git -C {self.source} fetch --tags --unshallow (or git fetch --tags)")
        self._versions[commit] = version
        return version

    def _checkout(self, commit: str, version: str) -> Path:
        """A clean shared clone of ``source`` at ``commit`` that describes as ``version``.

        The clone is made once per commit; its tags are those of the source when it was made, so
        when the source's describe has changed since (a new tag), it takes the source's tags again.
        """
        tree = self.cache / "trees" / commit
        log: list[str] = []
        if not (tree / ".git").exists():
            if tree.exists():
                shutil.rmtree(tree)
            tree.parent.mkdir(parents=True, exist_ok=True)
            _run(["git", "clone", "-q", "--shared", "--no-checkout", str(self.source), str(tree)], self.cache, log)
            _run(["git", "checkout", "-q", "--detach", commit], tree, log)
        if self._git(tree, "describe", "--always", "--tags", "--long").stdout.strip() != version:
            _run(["git", "fetch", "-q", "--force", "--prune", "--no-tags", str(self.source),
                  "+refs/tags/*:refs/tags/*"], tree, log)
        return tree

    def _kconfig_symbols(self, tree: Path) -> KconfigSymbols:
        if tree not in self._kconfig:
            self._kconfig[tree] = load_kconfig_symbols(tree)
        return self._kconfig[tree]

    def _resolution(self, version: str, commit: str, board: Board, fragment: str, target: str = "") -> Path:
        # what olddefconfig gave for these inputs, so that a later run that finds the artifact in
        # the cache needs no make (0.1-0.2 s per identity and run); keyed on the version, so a new
        # tag is a new key
        inputs = json.dumps([version, commit, repr(board), fragment] + ([target] if target else []))
        return self.cache / "resolved" / (hashlib.sha256(inputs.encode()).hexdigest()[:32] + ".json")

    def _cached(self, version: str, commit: str, board: Board, fragment: str, arch: str = "") -> BuiltArtifact | None:
        """The artifact of an earlier run for exactly these inputs, checked as a new build is."""
        try:
            known = json.loads(self._resolution(version, commit, board, fragment, arch).read_text(encoding="utf-8"))
            target = self.cache / known["identity"]
            resolved = (target / "config").read_text(encoding="utf-8")
            manifest = json.loads((target / "identity.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if verify_resolved(board, fragment, resolved) or known.get("version") != version:
            return None  # build again: it raises with the problems
        if sorted(manifest.get("files", {})) != sorted(identity_files(board.firmware_file, board.sd_firmware_name)):
            return None  # an artifact of an older layout: its manifest listed debug files too
        identity = identity_of(check_buildable_version(version, self.allow_unclean), resolved, board, arch)
        return self._load(target, identity, board) if identity.name == known["identity"] else None

    def _build(self, commit: str, board: Board, fragment: str, arch: str = "") -> BuiltArtifact:
        expected = self.source_version(commit)
        cached = self._cached(expected, commit, board, fragment, arch)
        if cached is not None:
            return cached
        tree = self._checkout(commit, expected)
        work = self.cache / "work" / hashlib.sha256(f"{commit}\0{board.id}\0{fragment}\0{arch}".encode()).hexdigest()[:16]
        if work.exists():
            shutil.rmtree(work)
        out = work / "out"
        out.mkdir(parents=True)
        config = work / "config"
        config.write_text(fragment, encoding="utf-8")
        log: list[str] = []
        make = ["make", f"KCONFIG_CONFIG={config}", f"OUT={out}/"]
        if arch:  # a host MCU: the Pi's CPU, never the controller's (Klipper's CC is $(CROSS_PREFIX)gcc)
            make.append(f"CROSS_PREFIX={ARCHES[arch].cross_prefix}")
        _run(make + ["olddefconfig"], tree, log)  # never in the same make call as the build
        resolved = config.read_text(encoding="utf-8")
        problems = verify_resolved(board, fragment, resolved, self._kconfig_symbols(tree))
        if problems:
            raise BuildError(f"board {board.id}: Kconfig did not resolve as asked: "
                             + "; ".join(str(problem) for problem in problems))
        version = _run(["git", "describe", "--always", "--tags", "--long", "--dirty"], tree, log).strip()
        identity = identity_of(check_buildable_version(version, self.allow_unclean), resolved, board, arch)
        if version != expected and not self.allow_unclean:
            raise BuildError(f"the build tree {tree} describes as {version}, the source {self.source} at "
                             f"{commit[:12]} as {expected}: delete {tree} and build again")
        target = self.cache / identity.name
        manifest_ok = False
        try:
            manifest = json.loads((target / "identity.json").read_text(encoding="utf-8"))
            manifest_ok = sorted(manifest["files"]) == sorted(identity_files(board.firmware_file, board.sd_firmware_name))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not manifest_ok:
            started = time.monotonic()
            try:
                _run(make + [f"-j{os.cpu_count() or 1}"], tree, log)
            except BuildError as error:
                prefix = ARCHES[arch].cross_prefix if arch else ""
                if arch and f"{prefix}gcc" in str(error) and "not found" in str(error):
                    raise BuildError(f"board {board.id}: no {prefix}gcc on this controller to build the {arch} host "
                                     f"MCU. Fix: apt-get install --no-install-recommends {ARCHES[arch].package}, "
                                     "or build on the Pi (firmware_build = \"pi\")") from error
                raise
            self._store(target, identity, board, out, resolved, log)
            with open(self.cache / "builds.jsonl", "a", encoding="utf-8") as record:
                record.write(json.dumps({"identity": identity.name, "board": board.id, "commit": commit,
                                         "seconds": round(time.monotonic() - started, 3)}) + "\n")
        shutil.rmtree(work, ignore_errors=True)
        resolution = self._resolution(expected, commit, board, fragment, arch)
        resolution.parent.mkdir(parents=True, exist_ok=True)
        staged = resolution.with_suffix(f".{os.getpid()}.partial")
        staged.write_text(json.dumps({"identity": identity.name, "version": version}), encoding="utf-8")
        staged.replace(resolution)
        return self._load(target, identity, board)

    def _store(self, target: Path, identity: FirmwareIdentity, board: Board, out: Path, resolved: str,
               log: list[str]) -> None:
        staging = target.with_name(target.name + ".partial")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        for name in OUTPUTS:
            if (out / name).exists():
                shutil.copy2(out / name, staging / name)
        if board.firmware_file == "klipper.elf" and (staging / "klipper.elf").exists():
            # a Linux MCU installs the ELF: debug info names the build directories, so what is
            # installed (and hashed) is the stripped file; the full one stays for debugging
            (staging / "klipper.elf").rename(staging / DEBUG_ELF)
            (staging / "klipper.elf").write_bytes(strip_elf((staging / DEBUG_ELF).read_bytes()))
            header = elf_header((staging / "klipper.elf").read_bytes()) or (None, None, None)
            misfit = elf_fits(identity.target, *header) if identity.target else None
            if misfit:  # a compiler that ignored CROSS_PREFIX: never file it under the Pi's identity
                raise BuildError(f"board {board.id}: built for the wrong CPU: {misfit}")
        if board.sd_firmware_name and (staging / board.firmware_file).exists():
            # named as the board's SD bootloader reads it: the operator copies this very file
            shutil.copy2(staging / board.firmware_file, staging / board.sd_firmware_name)
        (staging / "config").write_text(resolved, encoding="utf-8")
        (staging / "build.log").write_text("".join(log), encoding="utf-8")
        if not (staging / board.firmware_file).exists():
            raise BuildError(f"board {board.id}: the build made no {board.firmware_file} (see {staging}/build.log)")
        # the identity covers what is flashed or installed and the config; klipper.elf (debug
        # info with absolute paths), the dictionary and the log differ between build directories
        hashes = {name: hashlib.sha256((staging / name).read_bytes()).hexdigest()
                  for name in identity_files(board.firmware_file, board.sd_firmware_name)}
        dictionary = json.loads((staging / "klipper.dict").read_text(encoding="utf-8"))
        if dictionary.get("version") != identity.version:
            raise BuildError(f"board {board.id}: the build reports version {dictionary.get('version')!r}, "
                             f"the checkout describes as {identity.version!r} (a dirty or unreadable tree?)")
        manifest = artifact_manifest(identity, str(dictionary.get("config", {}).get("MCU", "")), hashes)
        (staging / "identity.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # a half-written artifact never carries an identity's name

    def _load(self, target: Path, identity: FirmwareIdentity, board: Board) -> BuiltArtifact:
        data = (target / board.firmware_file).read_bytes()
        image = inspect_image(data, board.firmware_file.rsplit(".", 1)[1])
        return BuiltArtifact(identity, target, board.firmware_file, image,
                             (target / "config").read_text(encoding="utf-8"))


def builds_made(cache_dir: str | Path) -> list[dict[str, object]]:
    """The real builds recorded in a cache directory (one JSON object per build)."""
    path = Path(cache_dir) / "builds.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# One builder per (source, cache, allow_unclean) for the whole process: pyinfra plans hosts
# concurrently and runs a deploy file afresh for each, so the registry lives here, in a module
# imported once, and every host shares its builds.
_SHARED: dict[tuple[str, str, bool], Builder] = {}
_SHARED_LOCK = threading.Lock()


# absolute paths as given -> their builder: a fleet's printers name the same two paths, resolved once
_AS_GIVEN: dict[tuple[str, str, bool], Builder] = {}


def shared_builder(source: str | Path, cache_dir: str | Path | None = None, allow_unclean: bool = False) -> Builder:
    given = (str(source), str(cache_dir or DEFAULT_CACHE), allow_unclean)
    found = _AS_GIVEN.get(given)
    if found is not None:
        return found
    absolute = all(Path(p).is_absolute() for p in given[:2])  # a relative or ~ path depends on cwd, HOME
    key = (str(Path(source).expanduser().resolve()), str(Path(cache_dir or DEFAULT_CACHE).expanduser().resolve()),
           allow_unclean)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Builder(source, cache_dir, allow_unclean)
        if absolute:
            _AS_GIVEN[given] = _SHARED[key]
        return _SHARED[key]
