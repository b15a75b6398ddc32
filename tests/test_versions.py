"""Klipper version strings and the MCU-versus-host rule."""

from __future__ import annotations

import pytest

from pyinfra_ratos.firmware.versions import mcu_matches_host, parse_version

HOST = "v0.13.0-730-g84104bbbd"


def test_a_described_version_splits_into_tag_commits_and_sha() -> None:
    version = parse_version(HOST)
    assert (version.tag, version.commits, version.sha, version.dirty) == ("v0.13.0", 730, "84104bbbd", False)
    assert version.clean


def test_a_build_exactly_on_a_tag_still_carries_the_long_form() -> None:
    version = parse_version("v0.12.0-0-g0d67d9c45")
    assert (version.tag, version.commits) == ("v0.12.0", 0)


def test_a_tag_with_hyphens_keeps_them() -> None:
    assert parse_version("v0.13.0-rc1-4-gabcdef1").tag == "v0.13.0-rc1"


def test_a_dirty_firmware_build_has_a_timestamp_and_the_build_host() -> None:
    version = parse_version("v0.13.0-3-g1a2b3c4d5-dirty-20250601_101500-vcore-01")
    assert version.dirty and version.timestamp == "20250601_101500" and version.build_host == "vcore-01"
    assert version.sha == "1a2b3c4d5" and not version.clean


def test_a_checkout_without_tags_is_a_bare_sha() -> None:
    version = parse_version("84104bbbd")
    assert version.sha == "84104bbbd" and version.tag is None and version.clean


@pytest.mark.parametrize("text", ["?", "?-20250601_101500-vcore-01", "", "not a version"])
def test_no_git_or_garbage_is_unknown(text: str) -> None:
    assert parse_version(text).unknown and not parse_version(text).clean


def test_the_same_clean_version_matches() -> None:
    assert mcu_matches_host(HOST, HOST)


@pytest.mark.parametrize("mcu", ["v0.12.0-0-g0d67d9c45", "v0.13.0-730-g84104bbb", "", HOST + "-dirty"])
def test_any_other_version_does_not_match(mcu: str) -> None:
    assert not mcu_matches_host(mcu, HOST)


@pytest.mark.parametrize("same", [
    "v0.13.0-730-g84104bbbd-dirty",
    "v0.13.0-730-g84104bbbd-20250601_101500-vcore-01",
    "?",
    "?-20250601_101500-vcore-01",
])
def test_a_non_clean_version_never_matches_even_itself(same: str) -> None:
    assert not mcu_matches_host(same, same)
