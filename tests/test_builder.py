"""The controller's builder: once per identity, no make once an identity is cached, versions that
follow the source's tags, and manifests that do not depend on where the build ran."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyinfra_ratos.firmware.builder import DEBUG_ELF, Builder, BuildError, builds_made
from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.firmware.image import inspect_image
from pyinfra_ratos.firmware.kconfig import render_fragment
from pyinfra_ratos.sim.klipper_repo import create_template_repo

CATALOG = load_catalog()
H723 = CATALOG["btt-octopus-pro-h723-11"]
RPI = CATALOG["rpi"]
GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.invalid"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], env=GIT_ENV, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    repo = tmp_path_factory.mktemp("builder") / "klipper"
    return repo, create_template_repo(repo)["current"]["commit"]


@pytest.fixture()
def own_source(source: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """A full clone (with tags) this test may tag or damage."""
    repo, commit = source
    clone = tmp_path / "own-klipper"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    return clone, commit


def test_a_new_process_reuses_the_cached_identity_without_make(source: tuple[Path, str], tmp_path: Path) -> None:
    repo, commit = source
    first = Builder(repo, tmp_path).build(commit, H723, render_fragment(H723))
    # a later run: the build trees may be gone, the artifact is not
    shutil.rmtree(tmp_path / "trees")
    again = Builder(repo, tmp_path).build(commit, H723, render_fragment(H723))
    assert again.identity == first.identity
    assert again.image == first.image
    assert len(builds_made(tmp_path)) == 1
    assert not (tmp_path / "trees").exists()  # no clone, no make


def test_another_fragment_or_a_lost_artifact_builds_again(source: tuple[Path, str], tmp_path: Path) -> None:
    repo, commit = source
    first = Builder(repo, tmp_path).build(commit, H723, render_fragment(H723))
    other = Builder(repo, tmp_path).build(commit, H723, render_fragment(H723, {"USB_SERIAL_NUMBER": "p7"}))
    assert other.identity != first.identity
    shutil.rmtree(first.directory)
    rebuilt = Builder(repo, tmp_path).build(commit, H723, render_fragment(H723))
    assert rebuilt.identity == first.identity
    assert len(builds_made(tmp_path)) == 3


def test_a_tag_made_after_a_first_build_is_in_the_next_build(own_source: tuple[Path, str], tmp_path: Path) -> None:
    repo, commit = own_source
    cache = tmp_path / "cache"
    first = Builder(repo, cache).build(commit, H723, render_fragment(H723))
    assert first.identity.version == git(repo, "describe", "--always", "--tags", "--long", commit)
    assert first.identity.version.startswith("v0.13.0-")
    git(repo, "tag", "-a", "-m", "v0.13.1", "v0.13.1", commit)  # the release, after the first build
    again = Builder(repo, cache).build(commit, H723, render_fragment(H723))  # no cache deleted by hand
    described = git(repo, "describe", "--always", "--tags", "--long", commit)
    assert described.startswith("v0.13.1-0-g")
    assert again.identity.version == described == again.image.version
    assert json.loads((again.directory / "klipper.dict").read_text())["version"] == described
    assert len(builds_made(cache)) == 2


def test_a_shallow_source_is_refused_with_the_fix(source: tuple[Path, str], tmp_path: Path) -> None:
    repo, commit = source
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow))
    with pytest.raises(BuildError, match="shallow clone.*fetch --tags --unshallow"):
        Builder(shallow, tmp_path / "cache").build(git(shallow, "rev-parse", "HEAD"), H723, render_fragment(H723))
    assert not builds_made(tmp_path / "cache")


def test_a_tagless_source_is_refused_with_the_fix(own_source: tuple[Path, str], tmp_path: Path) -> None:
    repo, commit = own_source
    for tag in git(repo, "tag").split():
        git(repo, "tag", "-d", tag)
    with pytest.raises(BuildError, match=r"no tag below commit.*git -C .* fetch --tags"):
        Builder(repo, tmp_path / "cache").build(commit, H723, render_fragment(H723))


@pytest.mark.parametrize("board", [H723, RPI], ids=lambda board: board.id)
def test_two_builds_of_one_identity_in_different_directories_have_identical_manifests(
        source: tuple[Path, str], tmp_path: Path, board) -> None:
    repo, commit = source
    arch = "armhf" if board.interface == "linux" else None
    first = Builder(repo, tmp_path / "one").build(commit, board, render_fragment(board), arch)
    second = Builder(repo, tmp_path / "elsewhere" / "two").build(commit, board, render_fragment(board), arch)
    assert first.identity == second.identity
    assert (first.directory / "identity.json").read_bytes() == (second.directory / "identity.json").read_bytes()
    manifest = json.loads((first.directory / "identity.json").read_text())
    assert sorted(manifest["files"]) == sorted([board.firmware_file, "config"])
    # what is flashed or installed is byte-identical; the debug ELF names the build directory
    assert (first.directory / board.firmware_file).read_bytes() == (second.directory / board.firmware_file).read_bytes()
    debug = DEBUG_ELF if board.firmware_file == "klipper.elf" else "klipper.elf"
    assert (first.directory / debug).read_bytes() != (second.directory / debug).read_bytes()


def test_the_linux_mcu_installs_a_stripped_elf_that_still_carries_its_dictionary(
        source: tuple[Path, str], tmp_path: Path) -> None:
    repo, commit = source
    built = Builder(repo, tmp_path).build(commit, RPI, render_fragment(RPI), "armhf")
    stripped = (built.directory / "klipper.elf").read_bytes()
    full = (built.directory / DEBUG_ELF).read_bytes()
    assert len(stripped) < len(full) and b"DW_AT_comp_dir" in full and b"DW_AT_comp_dir" not in stripped
    info = inspect_image(stripped, "elf")
    assert not info.defects and info.version == built.identity.version and info.mcu == "linux"


def test_the_artifacts_fact_shows_an_ebb_usb_build_at_0x08000000(source: tuple[Path, str], tmp_path: Path) -> None:
    from pyinfra_ratos.facts import remote
    from pyinfra_ratos.facts.firmware import parse_firmware_artifacts

    repo, commit = source
    ebb, manta = CATALOG["btt-ebb36-12"], CATALOG["btt-manta-m8p-11"]
    built = Builder(repo, tmp_path).build(commit, ebb, render_fragment(ebb))
    # its reset handler ~30 KiB in lies inside the image at 0x08002000 too: only the config can tell
    assert built.image.vector_in_range(ebb.app_address) and built.image.vector_in_range(manta.app_address)
    shown = parse_firmware_artifacts(remote.probe_artifacts(str(tmp_path)))[built.identity.name]
    assert shown["app_address"] == 0x08000000 and shown["mcu"] == "stm32g0b1xx"
