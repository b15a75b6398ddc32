"""The printer identity rules: first use records, a different machine stops, a swap is accepted once."""

from __future__ import annotations

import json
from pathlib import Path

from pyinfra_ratos.printer.identity import Identity, IdentityStore, decide, parse_machine_id

A = Identity("a" * 32, "ssh-ed25519 SHA256:keyA")
B = Identity("b" * 32, "ssh-ed25519 SHA256:keyB")
# the virtual farm's Pis (and cloned cards) share a machine-id: only the host key tells them apart
A_CLONE = Identity("a" * 32, "ssh-ed25519 SHA256:keyC")


def test_the_first_backup_of_a_name_records_what_it_reaches() -> None:
    verdict = decide("pi-a", A, {})
    assert verdict.action == "record"
    assert verdict.record["machine_id"] == "a" * 32 and verdict.record["host_keys"] == {"ssh-ed25519": "SHA256:keyA"}


def test_the_recorded_machine_goes_on() -> None:
    assert decide("pi-a", A, {"pi-a": A.as_record()}).action == "match"


def test_another_machine_stops_the_printer_naming_both_identities_and_the_fix() -> None:
    verdict = decide("pi-a", B, {"pi-a": A.as_record(), "pi-b": B.as_record()}, store="/b/identities.json")
    assert verdict.action == "stop"
    assert "recorded machine-id " + "a" * 32 + ", host key ssh-ed25519 SHA256:keyA" in verdict.message
    assert "seen machine-id " + "b" * 32 + ", host key ssh-ed25519 SHA256:keyB" in verdict.message
    assert "(the printer recorded as pi-b)" in verdict.message
    assert 'printer_identity_accept: "' + "b" * 32 + '"' in verdict.message
    assert '"pi-a" from /b/identities.json' in verdict.message
    assert "\n" not in verdict.message  # one line: the report's reason


def test_a_new_host_key_with_the_same_machine_id_is_another_machine() -> None:
    assert decide("pi-a", A_CLONE, {"pi-a": A.as_record()}).action == "stop"


def test_a_name_never_recorded_that_reaches_another_printer_is_stopped() -> None:
    verdict = decide("pi-a", B, {"pi-b": B.as_record()})
    assert verdict.action == "stop" and "is the printer recorded as pi-b" in verdict.message
    # a shared machine-id alone is not "the same machine"
    assert decide("pi-c", A_CLONE, {"pi-a": A.as_record()}).action == "record"


def test_an_accepted_card_is_recorded_once_and_the_old_one_kept() -> None:
    records = {"pi-a": {**A.as_record(), "recorded_at": "t0", "previous": []}}
    verdict = decide("pi-a", B, records, accept="b" * 32, now="t1")
    assert verdict.action == "record"
    assert verdict.record["machine_id"] == "b" * 32
    assert verdict.record["previous"] == [{**A.as_record(), "recorded_at": "t0", "replaced_at": "t1"}]
    # the flag names one machine-id: any other card is still stopped
    assert decide("pi-a", Identity("c" * 32, "ssh-ed25519 SHA256:keyX"), records, accept="b" * 32).action == "stop"


def test_another_key_type_of_the_same_machine_is_learned() -> None:
    rsa = Identity("a" * 32, "rsa-sha2-512 SHA256:rsaA")
    verdict = decide("pi-a", rsa, {"pi-a": A.as_record()})
    assert verdict.action == "record"
    assert verdict.record["host_keys"] == {"ssh-ed25519": "SHA256:keyA", "rsa-sha2-512": "SHA256:rsaA"}


def test_a_machine_without_any_identity_is_not_changed() -> None:
    assert decide("pi-a", Identity("", ""), {}).action == "stop"


def test_machine_id_parsing_refuses_anything_but_32_hex_digits() -> None:
    assert parse_machine_id("3D1219C7C4C5404AAA1F6D2A48ADFDA4\n") == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    for bad in ("", "x" * 32, "a" * 31, "a" * 32 + "\na", None, 5):
        assert parse_machine_id(bad) == ""


def test_the_store_is_written_atomically_and_decides_again_under_its_lock(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path / "backups")
    assert store.record("pi-a", A).action == "record"
    assert store.record("pi-a", A).action == "match"
    assert store.record("pi-b", A).action == "stop"  # pi-a has this machine now
    document = json.loads((tmp_path / "backups" / "identities.json").read_text())
    assert list(document["printers"]) == ["pi-a"] and document["format"] == 1
    assert [p.name for p in (tmp_path / "backups").iterdir() if p.name.startswith(".identities.json.")] == \
        [".identities.json.lock"]  # no temporary file left behind
