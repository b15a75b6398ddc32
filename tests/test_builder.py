"""The controller's builder: once per identity, and no make at all once an identity is cached."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pyinfra_ratos.builder import Builder, builds_made
from pyinfra_ratos.catalog import load_catalog
from pyinfra_ratos.kconfig import render_fragment
from pyinfra_ratos.sim.klipper_repo import create_template_repo

H723 = load_catalog()["btt-octopus-pro-h723-11"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    repo = tmp_path_factory.mktemp("builder") / "klipper"
    return repo, create_template_repo(repo)["current"]["commit"]


def test_a_new_process_reuses_the_cached_identity_without_make(source: tuple[Path, str], tmp_path: Path) -> None:
    repo, commit = source
    first = Builder(repo, tmp_path).build(commit, H723, render_fragment(H723))
    # a later run: the controller's checkout and the build trees may be gone, the artifact is not
    shutil.rmtree(tmp_path / "trees")
    moved = repo.with_name("moved")
    repo.rename(moved)
    try:
        again = Builder(repo, tmp_path).build(commit, H723, render_fragment(H723))
    finally:
        moved.rename(repo)
    assert again.identity == first.identity
    assert again.image == first.image
    assert len(builds_made(tmp_path)) == 1


def test_another_fragment_or_a_lost_artifact_builds_again(source: tuple[Path, str], tmp_path: Path) -> None:
    repo, commit = source
    first = Builder(repo, tmp_path).build(commit, H723, render_fragment(H723))
    other = Builder(repo, tmp_path).build(commit, H723, render_fragment(H723, {"USB_SERIAL_NUMBER": "p7"}))
    assert other.identity != first.identity
    shutil.rmtree(first.directory)
    rebuilt = Builder(repo, tmp_path).build(commit, H723, render_fragment(H723))
    assert rebuilt.identity == first.identity
    assert len(builds_made(tmp_path)) == 3
