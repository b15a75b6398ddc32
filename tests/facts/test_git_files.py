"""The probe reads HEAD, its branch and origin's URL from .git itself: always what git prints, or git is asked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pyinfra_ratos.facts import remote


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def what_git_prints(repo: Path) -> tuple[str, str, str]:
    commit, branch = git(repo, "rev-parse", "HEAD", "--abbrev-ref", "HEAD").splitlines()
    return commit, branch, git(repo, "config", "--get", "remote.origin.url")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "klipper"
    path.mkdir()
    git(path, "init", "-q", "-b", "master")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "one")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "two")
    git(path, "remote", "add", "origin", "https://github.com/Klipper3d/klipper.git")
    return path


def test_a_plain_checkout_on_a_branch_reads_as_git_prints_it(repo: Path) -> None:
    assert remote._git_files(str(repo)) == what_git_prints(repo)


def test_packed_refs_and_a_detached_head_read_as_git_prints_them(repo: Path) -> None:
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git/refs/heads/master").exists()
    assert remote._git_files(str(repo)) == what_git_prints(repo)
    git(repo, "checkout", "-q", "HEAD~1")
    assert remote._git_files(str(repo)) == what_git_prints(repo)
    assert remote._git_files(str(repo))[1] == "HEAD"


def test_the_last_origin_url_wins_as_with_git_config_get(repo: Path) -> None:
    with (repo / ".git/config").open("a") as config:
        config.write('[remote "upstream"]\n\turl = https://example.invalid/u.git\n'
                     '[remote "origin"]\n\turl = https://example.invalid/second.git\n')
    assert remote._git_files(str(repo)) == what_git_prints(repo)
    assert remote._git_files(str(repo))[2] == "https://example.invalid/second.git"


@pytest.mark.parametrize("change", ["tag master", "include", "quoted url", "no origin", "unborn", "worktree"])
def test_anything_but_the_plain_layout_is_left_to_git(repo: Path, tmp_path: Path, change: str) -> None:
    if change == "tag master":  # --abbrev-ref then says heads/master
        git(repo, "tag", "master")
    elif change == "include":
        with (repo / ".git/config").open("a") as config:
            config.write("[include]\n\tpath = other\n")
    elif change == "quoted url":
        git(repo, "remote", "set-url", "origin", 'https://example.invalid/a b;c.git')
    elif change == "no origin":
        git(repo, "remote", "remove", "origin")
    elif change == "unborn":
        git(repo, "checkout", "-q", "--orphan", "fresh")
    elif change == "worktree":
        git(repo, "worktree", "add", "-q", str(tmp_path / "wt"))
        repo = tmp_path / "wt"
    assert remote._git_files(str(repo)) is None


def test_the_probe_still_reports_through_git_when_the_files_are_not_plain(repo: Path) -> None:
    git(repo, "tag", "master")
    found = remote.probe_klipper(str(repo))
    assert (found["commit"]["out"], found["branch"]["out"], found["remote_url"]["out"]) == what_git_prints(repo)
