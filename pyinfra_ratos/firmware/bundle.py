"""Git bundles of the fleet's Klipper commit, made on the controller for Pis that cannot fetch it.

An offline Pi (or one whose fetch from GitHub fails) gets Klipper from the controller instead:
``git bundle create`` from the controller's ``klipper_source`` holding the pinned commit and every
tag it contains, so ``git describe`` on the Pi gives exactly the version it gives on the
controller (the version the firmware is built with). A bundle is made once per commit and kept
in a cache folder; the Pi fetches from it like from a remote.

A bundle can only carry refs, never a bare commit: the bundle is cut in a scratch repository that
borrows the source's objects (``objects/info/alternates``), so the user's checkout never gains a ref.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path("~/.cache/pyinfra-ratos/bundles")
# The ref the pinned commit travels under; the Pi fetches it to the same name.
BUNDLE_REF = "refs/pyinfra-ratos/pinned"
_COMMIT = re.compile(r"^[0-9a-f]{40}\Z")
# pyinfra serves hosts from greenlets of one process: the first to need a commit's bundle makes
# it, the others wait for it (threading's lock is gevent's once pyinfra has patched the stdlib)
_LOCKS: dict[str, threading.Lock] = {}


class BundleError(RuntimeError):
    """The bundle cannot be made; the message says why and what to fix."""


@dataclass(frozen=True)
class KlipperBundle:
    path: Path
    commit: str
    sha256: str
    size: int
    version: str  # ``git describe --always --tags --long`` of the commit in the source
    tags: tuple[str, ...]

    @property
    def remote_name(self) -> str:
        """The file name on the Pi: one bundle per commit."""
        return f"klipper-{self.commit[:12]}.bundle"


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], env=env,
                              check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise BundleError("git is not installed on the controller") from None
    except subprocess.CalledProcessError as error:
        raise BundleError(f"git {' '.join(args)} in {repo} failed: {error.stderr.strip()[-400:]}") from None
    return done.stdout.strip()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def objects_dir(source: Path) -> Path:
    """The object store of a checkout or bare repository (worktrees resolve too)."""
    common = Path(_git(source, "rev-parse", "--git-common-dir"))
    return (common if common.is_absolute() else source / common).resolve() / "objects"


def contained_tags(source: Path, commit: str) -> list[tuple[str, str]]:
    """``(tag ref, object)`` of every tag whose commit is an ancestor of ``commit`` (or it)."""
    out = _git(source, "for-each-ref", "--merged", commit, "--format=%(refname) %(objectname)", "refs/tags")
    return [tuple(line.split(" ", 1)) for line in out.splitlines() if " " in line]  # type: ignore[misc]


def _cut(source: Path, commit: str, tags: Sequence[tuple[str, str]], target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="klipper-bundle-", dir=target.parent) as scratch:
        repo = Path(scratch) / "repo.git"
        _git(Path(scratch), "init", "-q", "--bare", str(repo))
        (repo / "objects" / "info" / "alternates").write_text(f"{objects_dir(source)}\n", encoding="utf-8")
        _git(repo, "update-ref", BUNDLE_REF, commit)
        for ref, obj in tags:
            _git(repo, "update-ref", ref, obj)
        partial = Path(scratch) / target.name  # renamed into place whole: never a half bundle
        _git(repo, "bundle", "create", "-q", str(partial), BUNDLE_REF, *(ref for ref, _ in tags))
        _git(repo, "bundle", "verify", "-q", str(partial))
        os.replace(partial, target)


def klipper_bundle(source: str | Path, commit: str, cache: str | Path | None = None) -> KlipperBundle:
    """The bundle of ``commit`` (and the tags it contains) from ``source``, made once per commit.

    Raises :class:`BundleError` when ``source`` is not a git checkout or lacks the commit.
    """
    if not _COMMIT.match(commit or ""):
        raise BundleError(f"{commit!r} is not a full commit hash (40 lower-case hex digits)")
    source = Path(source).expanduser()
    if not source.is_dir():
        raise BundleError(f"klipper_source {source} does not exist on the controller")
    try:
        _git(source, "cat-file", "-e", f"{commit}^{{commit}}")
    except BundleError:
        raise BundleError(f"klipper_source {source} does not hold commit {commit[:12]}: "
                          f"`git -C {source} fetch` it first") from None
    folder = Path(cache or DEFAULT_CACHE).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    tags = contained_tags(source, commit)
    target = folder / f"klipper-{commit}.bundle"
    with _LOCKS.setdefault(commit, threading.Lock()):
        if not target.exists():
            _cut(source, commit, tags, target)
    return KlipperBundle(
        path=target, commit=commit, sha256=_sha256(target), size=target.stat().st_size,
        version=_git(source, "describe", "--always", "--tags", "--long", commit),
        tags=tuple(ref.removeprefix("refs/tags/") for ref, _ in tags),
    )


def remove_stale(cache: str | Path, keep: Sequence[str]) -> list[Path]:
    """Delete cached bundles of commits not in ``keep``; returns what was removed."""
    folder = Path(cache).expanduser()
    removed = []
    for path in sorted(folder.glob("klipper-*.bundle")):
        if path.stem.removeprefix("klipper-") not in keep:
            path.unlink()
            removed.append(path)
    for leftover in folder.glob("klipper-bundle-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return removed


def describe(source: str | Path, commit: str) -> str | None:
    """The controller's ``git describe`` of ``commit`` (the version firmware is built with), or None."""
    try:
        return _git(Path(source).expanduser(), "describe", "--always", "--tags", "--long", commit)
    except BundleError:
        return None
