"""One meaning of converged: one normalised compare for status, the report and the audit deploy."""

from __future__ import annotations

from pyinfra_ratos.firmware.converged import at_pin, firmware_word
from pyinfra_ratos.deploys.audit import audit_lines

PIN = "8ec72c2e1f3a9b0c4d5e6f708192a3b4c5d6e7f8"
NEW, OLD = "v0.13.0-3-g8ec72c2", "v0.12.0-0-gfb8cc95"


def test_a_version_is_at_the_pin_whatever_length_git_abbreviated_its_hash_to() -> None:
    assert at_pin(NEW, PIN) is True
    assert at_pin("v0.13.0-3-g8ec72c2e1f3a", PIN) is True
    assert at_pin(OLD, PIN) is False
    assert at_pin("8ec72c2", PIN) is True  # a shallow clone: no tag, the same commit


def test_unclean_versions_never_match_even_the_pins_own_text() -> None:
    assert at_pin(f"{NEW}-dirty", PIN) is False
    assert at_pin(f"{NEW}-20250601_101500-vcore-01", PIN, NEW) is False
    assert at_pin("?", PIN) is False


def test_without_a_version_or_a_pin_the_answer_is_unknown() -> None:
    assert firmware_word("", PIN) == "unknown" and firmware_word(NEW, None) == "unknown"
    assert firmware_word(NEW, None, NEW) == "at pin"


def test_the_audit_deploy_uses_the_same_compare_and_reads_klippy_log_versions_too() -> None:
    audit = {"klipper": {"version": OLD}, "activity": {"busy": False}, "network": {"default_route": True},
             "boards": {}, "mcu_firmware": {"klippy_state": "", "host_version": OLD,
                                            "mcus": {"mcu": {"version": OLD, "matches_host": None}}}}
    lines = audit_lines("p", audit, PIN)
    assert lines[0].startswith(f"[p] klipper {OLD} (behind)")
    assert lines[-1].endswith("behind")
    assert audit_lines("p", audit)[-1].endswith("at pin")  # no pin: against the host's own version


def test_the_audit_deploy_ends_with_the_configuration_word_and_why() -> None:
    audit = {"klipper": {"version": NEW}, "activity": {"busy": False}, "network": {"default_route": True},
             "boards": {}, "mcu_firmware": {"klippy_state": "ready", "host_version": NEW, "mcus": {}}}
    assert audit_lines("p", audit, PIN, config={"state": "up to date", "reason": ""})[-1] == "[p]   config up to date"
    invalid = {"state": "invalid", "reason": "invalid configuration, nothing was written:\n  - RatOS.cfg line 3: x"}
    assert audit_lines("p", audit, PIN, config=invalid)[-2:] == [
        "[p]   config invalid  invalid configuration, nothing was written:", "[p]     - RatOS.cfg line 3: x"]
    assert not any("config" in line for line in audit_lines("p", audit, PIN))
