"""Firmware identities: naming a build, refusing versions that never match, one build per identity."""

from __future__ import annotations

import hashlib

import pytest

from pyinfra_ratos.firmware.catalog import load_catalog
from pyinfra_ratos.firmware.identity import (
    BuildTarget,
    BuildVersionError,
    artifact_manifest,
    builds_needed,
    check_buildable_version,
    identity_of,
)

CATALOG = load_catalog()
H723 = CATALOG["btt-octopus-pro-h723-11"]
EBB = CATALOG["btt-ebb36-12"]
RPI = CATALOG["rpi"]
RESOLVED = 'CONFIG_MACH_STM32=y\nCONFIG_MCU="stm32h723xx"\n'


def test_identity_name_is_version_and_twelve_hex_of_the_resolved_config() -> None:
    identity = identity_of("v0.13.0-3-gb846a96", RESOLVED, H723)
    digest = hashlib.sha256(RESOLVED.encode()).hexdigest()
    assert identity.config_sha256 == digest and identity.board == H723.id
    assert identity.name == f"v0.13.0-3-gb846a96-{digest[:12]}"


def test_any_config_change_changes_the_identity() -> None:
    assert identity_of("v1", RESOLVED, H723) != identity_of("v1", RESOLVED + "CONFIG_X=y\n", H723)


def test_a_version_unsafe_as_a_directory_name_is_refused() -> None:
    with pytest.raises(BuildVersionError):
        identity_of("v1/../../etc", RESOLVED, H723)


def test_clean_versions_are_buildable() -> None:
    assert check_buildable_version("v0.13.0-3-gb846a96") == "v0.13.0-3-gb846a96"
    assert check_buildable_version("v0.12.0-0-g097b935") == "v0.12.0-0-g097b935"


@pytest.mark.parametrize("version", ["?", "?-20260301_120000-vcore-01", ""])
def test_unknown_version_is_refused_even_when_unclean_builds_are_allowed(version: str) -> None:
    with pytest.raises(BuildVersionError, match="owner.*safe.directory"):
        check_buildable_version(version, allow_unclean=True)


def test_timestamp_suffixed_version_is_refused_with_the_fix() -> None:
    with pytest.raises(BuildVersionError, match="commit or stash.*allow_unclean"):
        check_buildable_version("v0.13.0-3-gb846a96-dirty-20260301_120000-vcore-01")
    with pytest.raises(BuildVersionError, match="timestamp"):
        check_buildable_version("v0.13.0-3-gb846a96-20260301_120000-vcore-01")


def test_dirty_checkout_is_refused_unless_allowed() -> None:
    with pytest.raises(BuildVersionError, match="uncommitted.*commit or stash.*allow_unclean"):
        check_buildable_version("v0.13.0-3-gb846a96-dirty")
    assert check_buildable_version("v0.13.0-3-gb846a96-dirty", allow_unclean=True)


def test_a_branch_named_dirty_is_not_mistaken_for_a_dirty_tree() -> None:
    assert check_buildable_version("v0.13.0-3-gdirty12")


def test_manifest_is_the_identity_json_of_the_artifact_directory() -> None:
    identity = identity_of("v0.13.0-3-gb846a96", RESOLVED, H723)
    manifest = artifact_manifest(identity, "stm32h723xx", {"klipper.dict": "bb", "klipper.bin": "aa"})
    assert manifest == {
        "version": "v0.13.0-3-gb846a96", "config_sha256": identity.config_sha256, "mcu": "stm32h723xx",
        "board": H723.id, "files": {"klipper.bin": "aa", "klipper.dict": "bb"},
    }


def test_a_farm_of_100_pis_with_3_distinct_identities_needs_exactly_3_builds() -> None:
    targets = []
    for number in range(100):
        host = f"vcore-{number:03d}"
        targets.append(BuildTarget(host, "mcu", "v0.13.0-3-gb846a96", H723))
        targets.append(BuildTarget(host, "toolboard_t0", "v0.13.0-3-gb846a96", EBB, {"USB_SERIAL_NUMBER": EBB.id}))
        targets.append(BuildTarget(host, "rpi", "v0.13.0-3-gb846a96", RPI))
    builds = builds_needed(targets)
    assert len(builds) == 3
    assert all(len(users) == 100 for users in builds.values())
    assert len({request.key for request in builds}) == 3


def test_other_overrides_or_version_mean_another_build() -> None:
    builds = builds_needed([
        BuildTarget("a", "mcu", "v0.13.0-3-gb846a96", H723),
        BuildTarget("b", "mcu", "v0.13.0-3-gb846a96", H723, {"USB_SERIAL_NUMBER": "printer-b"}),
        BuildTarget("c", "mcu", "v0.12.0-0-g097b935", H723),
    ])
    assert len(builds) == 3
