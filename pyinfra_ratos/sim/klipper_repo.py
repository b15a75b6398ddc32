"""The virtual Pi's ``~/klipper``: a git repository of the stand-in Klipper tree, and builds of it.

``create_template_repo`` writes the same history (same shas) on every machine: fixed authors,
dates and file modes, git's user configuration ignored. Tags ``v0.12.0`` and ``v0.13.0`` exist
and HEAD is a few commits past ``v0.13.0``, so ``git describe`` gives Klipper-like versions
(``v0.13.0-3-g1a2b3c4d5``). Between the two tags the ``queue_step`` command changed format, so
an MCU built from ``v0.12.0`` is protocol-incompatible with a ``v0.13.0`` host.

``build_firmware`` builds one commit for one Kconfig fragment the way a user would (two make
calls with absolute ``KCONFIG_CONFIG`` and ``OUT``), in a clean clone, so its version has no
suffix. The farm uses it at start-up for the images its boards run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import kconfiglib

TREE = Path(__file__).resolve().parent / "klipper_tree"
ORIGIN = "https://github.com/Klipper3d/klipper.git"
AUTHOR = ("Klipper Stand-in", "stand-in@ratos-farm.invalid")

# Kept here rather than as a dot-file in the package, which package_data globs would skip
GITIGNORE = "out\n*.so\n*.pyc\n__pycache__/\n.config\n.config.old\nklippy/.version\n"
EXECUTABLES = frozenset({"scripts/fakebuild.py"})


def _drop_line(needle: str) -> Callable[[str], str]:
    return lambda text: "".join(line for line in text.splitlines(True) if needle not in line)


def _first_paragraph(text: str) -> str:
    return text.split("\n\n", 1)[0] + "\n"


# The first commit holds the tree as it was at v0.12.0: HEAD's files passed through these
# (None: the file did not exist yet). Each later commit restores some paths to HEAD's content.
_INITIAL_STATE: Mapping[str, Callable[[str], str] | None] = {
    "src/stepper.c": lambda text: text.replace(" add2=%hi", ""),
    "docs/Config_Changes.md": lambda text: text.split("\n20250301", 1)[0],
    "README.md": _first_paragraph,
    "klippy/README.md": None,
    "src/stm32/main.c": _drop_line("CLOCK_REF_FREQ"),
    "docs/Build.md": None,
}

# (subject, date, tag, paths restored to HEAD)
_HISTORY: tuple[tuple[str, str, str | None, tuple[str, ...]], ...] = (
    ("Initial import of the stand-in Klipper build interface", "2024-03-11T12:00:00+00:00", "v0.12.0", ()),
    ("docs: Explain what the stand-in checkout is", "2024-08-20T09:30:00+00:00", None, ("README.md",)),
    ("stepper: Add second-order step timing to queue_step", "2025-03-01T10:00:00+00:00", "v0.13.0",
     ("src/stepper.c", "docs/Config_Changes.md")),
    ("klippy: Add a home for host-only changes", "2025-04-14T15:45:00+00:00", None, ("klippy/README.md",)),
    ("stm32: Report the crystal frequency in the data dictionary", "2025-05-02T08:15:00+00:00", None,
     ("src/stm32/main.c",)),
    ("docs: Describe the two-step build", "2025-06-23T17:20:00+00:00", None, ("docs/Build.md",)),
)


def _git(repo: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    full_env = {
        **os.environ,
        # the user's or system's git configuration (hooks, templates, signing) must not leak in
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        **(env or {}),
    }
    result = subprocess.run(
        ["git", "-c", "safe.directory=*", *args], cwd=repo, env=full_env,
        check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return result.stdout.strip()


def _head_files() -> dict[str, str]:
    files = {
        path.relative_to(TREE).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(TREE.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }
    files[".gitignore"] = GITIGNORE
    # vendored like Klipper vendors it: the installed kconfiglib resolves configurations
    files["lib/kconfiglib/kconfiglib.py"] = Path(kconfiglib.__file__).read_text(encoding="utf-8")
    return files


def _write(repo: Path, relpath: str, text: str | None) -> None:
    path = repo / relpath
    if text is None:
        if path.exists():
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755 if relpath in EXECUTABLES else 0o644)


def _commit(repo: Path, subject: str, date: str, tag: str | None) -> None:
    env = {
        "GIT_AUTHOR_NAME": AUTHOR[0], "GIT_AUTHOR_EMAIL": AUTHOR[1], "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_NAME": AUTHOR[0], "GIT_COMMITTER_EMAIL": AUTHOR[1], "GIT_COMMITTER_DATE": date,
    }
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--no-verify", "-m", subject, env=env)
    if tag:
        _git(repo, "tag", tag)


def describe(repo: Path, commit: str = "HEAD") -> str:
    """Klipper's version of a commit, as a clean build of it would report it."""
    return _git(repo, "describe", "--always", "--tags", "--long", commit)


def create_template_repo(dest: Path) -> dict[str, dict[str, str]]:
    """Create the stand-in ``~/klipper`` at ``dest`` (absent or empty) with its fixed history."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; create the template repository in a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    head = _head_files()
    _git(dest, "init", "-q", "-b", "master")
    _git(dest, "remote", "add", "origin", ORIGIN)
    for relpath, text in head.items():
        change = _INITIAL_STATE.get(relpath, lambda same: same)
        _write(dest, relpath, None if change is None else change(text))
    for subject, date, tag, restored in _HISTORY:
        for relpath in restored:
            _write(dest, relpath, head[relpath])
        _commit(dest, subject, date, tag)
    old = _git(dest, "rev-parse", "v0.12.0^{commit}")
    current = _git(dest, "rev-parse", "HEAD")
    return {
        "old": {"commit": old, "version": describe(dest, old)},
        "current": {"commit": current, "version": describe(dest, current)},
    }


def _make(tree: Path, config: Path, out: Path, *targets: str) -> None:
    argv = ["make", f"KCONFIG_CONFIG={config}", f"OUT={out}/", *targets]
    result = subprocess.run(argv, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed in {tree}:\n{result.stdout}")


def build_firmware(repo: Path, commit: str, fragment: str, workdir: Path) -> Path:
    """Build ``commit`` of ``repo`` for a Kconfig ``fragment``; return the OUT folder.

    The build runs in a clean clone under ``workdir`` (so the version is the bare describe
    output), with olddefconfig and the build as two make calls, as Klipper requires. Calling
    it again for the same commit and fragment reuses the result.
    """
    repo, workdir = Path(repo).resolve(), Path(workdir).resolve()
    sha = _git(repo, "rev-parse", f"{commit}^{{commit}}")
    key = hashlib.sha256(f"{sha}\0{fragment}".encode()).hexdigest()[:16]
    tree = workdir / f"klipper-{sha[:12]}"
    if not (tree / ".git").exists():
        if tree.exists():
            shutil.rmtree(tree)
        workdir.mkdir(parents=True, exist_ok=True)
        _git(workdir, "clone", "-q", "--shared", "--no-checkout", str(repo), str(tree))
        _git(tree, "checkout", "-q", "--detach", sha)
    config, out = workdir / f"{key}.config", workdir / "build" / key
    if not (out / "klipper.dict").exists():
        config.write_text(fragment, encoding="utf-8")
        _make(tree, config, out, "olddefconfig")
        _make(tree, config, out)
    return out
