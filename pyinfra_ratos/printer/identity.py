"""Which machine a printer's inventory name reaches: its SD card's identity, recorded and checked.

A printer's identity is the Pi's ``/etc/machine-id`` and the SSH host key of the connection
pyinfra made (read from paramiko's transport on the controller: no extra command). The
controller keeps one record per inventory name in ``<config_backups>/identities.json``::

    {"format": 1, "printers": {"vcore-01": {
        "machine_id": "3d1219c7c4c5404aaa1f6d2a48adfda4",
        "host_keys": {"ssh-ed25519": "SHA256:Vb3..."},
        "recorded_at": "2026-12-05T09:50:00Z",
        "previous": [{"machine_id": ..., "host_keys": ..., "recorded_at": ..., "replaced_at": ...}]}}}

written atomically (temporary file + rename, under a lock file). The rules (:func:`decide`):

- the first backup of a name (``update``, ``provision``) records what it reaches (trust on first
  use, as SSH's ``accept-new``), unless that machine is already recorded under another name;
- every later run, before any change, compares: a different machine-id or host key (of the same
  key type) stops that printer alone, naming both identities and the fix; so does reaching a
  machine recorded under another name (the wrong-address case);
- an SD card replaced on purpose has a new machine-id and host key, so it is stopped too, also by
  ``provision``: a fresh card at a wrong address must never get another printer's calibration (its
  z offset, its mesh). The operator, who pins the new card's host key in ``known_hosts`` anyway
  (``ssh-keyscan``), sets the host data ``printer_identity_accept`` to the new machine-id the
  message names (or deletes the name's entry from ``identities.json``) and runs ``provision`` again:
  that run is the new card's "first provision": it records the card (the old identity kept under
  ``previous``), restores the newest calibrated backup of that printer (the old card's backups are
  its own: same name, a previous identity) and converges. The flag accepts that one machine-id
  only: left in the inventory it accepts nothing else.

Pure Python; the store reads and writes files on the controller, nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STORE_NAME = "identities.json"
ACCEPT_KEY = "printer_identity_accept"
_MACHINE_ID = re.compile(r"[0-9a-f]{32}")


def parse_machine_id(text: Any) -> str:
    """``/etc/machine-id`` as written by systemd (32 lower-case hex digits), else ``""``."""
    value = text.strip().lower() if isinstance(text, str) else ""
    return value if _MACHINE_ID.fullmatch(value) else ""


@dataclass(frozen=True)
class Identity:
    machine_id: str  # "" when the Pi has none
    host_key: str = ""  # "ssh-ed25519 SHA256:...", "" without an SSH connection

    @property
    def key_type(self) -> str:
        return self.host_key.partition(" ")[0]

    @property
    def fingerprint(self) -> str:
        return self.host_key.partition(" ")[2]

    @property
    def known(self) -> bool:
        return bool(self.machine_id or self.host_key)

    def describe(self) -> str:
        return f"machine-id {self.machine_id or '(none)'}, host key {self.host_key or '(none)'}"

    def as_record(self) -> dict[str, Any]:
        return {"machine_id": self.machine_id, "host_keys": {self.key_type: self.fingerprint} if self.host_key else {}}


def describe_record(record: Mapping[str, Any]) -> str:
    keys = record.get("host_keys") or {}
    shown = ", ".join(f"{kind} {fp}" for kind, fp in sorted(keys.items())) or "(none)"
    return f"machine-id {record.get('machine_id') or '(none)'}, host key {shown}"


def matches(record: Mapping[str, Any], seen: Identity) -> bool:
    """Same machine-id, and the same host key where the record knows a key of the seen type."""
    if (record.get("machine_id") or "") != seen.machine_id:
        return False
    known = (record.get("host_keys") or {}).get(seen.key_type) if seen.host_key else None
    return known is None or known == seen.fingerprint


def same_machine(record: Mapping[str, Any], seen: Identity) -> bool:
    """Certainly the recorded machine: the machine-id and a host key both equal. (Cloned cards, and
    the virtual farm, share a machine-id: the machine-id alone never says "the same machine".)"""
    if not seen.host_key:
        return bool(seen.machine_id) and record.get("machine_id") == seen.machine_id
    return record.get("machine_id") == seen.machine_id and \
        (record.get("host_keys") or {}).get(seen.key_type) == seen.fingerprint


@dataclass(frozen=True)
class Verdict:
    action: str  # "match": go on; "record": go on, the record is written; "stop": fail the printer
    message: str = ""
    record: dict[str, Any] = field(default_factory=dict)  # the name's new record ("record")


def _fix(name: str, seen: Identity, store: str) -> str:
    accept = seen.machine_id or seen.fingerprint
    return (f"Fix: if {name}'s address is wrong, correct it (ssh_hostname) in the inventory; if {name}'s SD card "
            f"was replaced on purpose, set the host data {ACCEPT_KEY}: \"{accept}\" for {name} and run "
            f"again (or delete \"{name}\" from {store})")


def decide(name: str, seen: Identity, records: Mapping[str, Mapping[str, Any]], accept: Any = None,
           store: str = STORE_NAME, now: str = "") -> Verdict:
    """What to do with the printer ``name`` whose Pi shows ``seen``; ``records``: the store's."""
    record = records.get(name)
    if not seen.known:
        return Verdict("stop", f"{name}: cannot tell which machine this is (no /etc/machine-id, no SSH host key): "
                               "not changing it. Fix: reach the Pi over SSH; check /etc/machine-id on it")
    if record is not None and matches(record, seen):
        if seen.host_key and seen.key_type not in (record.get("host_keys") or {}):
            learned = {**record, "host_keys": {**record.get("host_keys", {}), seen.key_type: seen.fingerprint}}
            return Verdict("record", record=learned)  # one more key type of the same machine
        return Verdict("match")
    accepted = isinstance(accept, str) and accept.strip() and accept.strip() in (seen.machine_id, seen.fingerprint)
    if accepted:
        previous = list((record or {}).get("previous", []))
        if record is not None:
            previous.append({k: v for k, v in record.items() if k != "previous"} | {"replaced_at": now})
        return Verdict("record", record={**seen.as_record(), "recorded_at": now, "previous": previous})
    others = sorted(other for other, rec in records.items() if other != name and same_machine(rec, seen))
    where = f" (the printer recorded as {others[0]})" if others else ""
    if record is not None:
        return Verdict("stop", (
            f"{name}: the Pi reached is not the printer recorded as {name}: recorded {describe_record(record)}; "
            f"seen {seen.describe()}{where}; nothing was changed. " + _fix(name, seen, store)))
    if others:
        return Verdict("stop", (
            f"{name}: the Pi reached is the printer recorded as {others[0]} ({seen.describe()}): not touching it "
            f"as {name}; nothing was changed. " + _fix(name, seen, store)))
    return Verdict("record", record={**seen.as_record(), "recorded_at": now, "previous": []})


def chain(record: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The identities a name has had: its record and those it replaced (its backups' sources)."""
    if not record:
        return []
    return [record, *record.get("previous", [])]


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class IdentityStoreError(RuntimeError):
    """The store cannot be read (not JSON, not the expected shape): the message says where."""


# path -> ((device, inode, size, mtime), the printers it held): the store as last parsed
_PARSED: dict[str, tuple[tuple[int, int, int, int], dict[str, dict[str, Any]]]] = {}


class IdentityStore:
    """``identities.json`` in a backup root: read, and changed atomically under a lock."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.path = self.root / STORE_NAME

    def records(self) -> dict[str, dict[str, Any]]:
        """Every name's record (a new dict each call; the records themselves are shared: never
        changed in place). The file is parsed again only when it changed (its inode, size or
        mtime): a fleet run reads it twice per printer, and it holds every printer."""
        try:
            with open(self.path, "rb") as handle:
                info = os.fstat(handle.fileno())
                key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
                cached = _PARSED.get(str(self.path))
                if cached is not None and cached[0] == key:
                    return dict(cached[1])
                text = handle.read().decode("utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as error:
            raise IdentityStoreError(f"cannot read {self.path}: {error}") from error
        try:
            document = json.loads(text)
        except ValueError as error:
            raise IdentityStoreError(f"{self.path} is not JSON ({error}): restore it from a copy") from error
        printers = document.get("printers") if isinstance(document, dict) else None
        if not isinstance(printers, dict) or not all(isinstance(v, dict) for v in printers.values()):
            raise IdentityStoreError(f"{self.path} has no \"printers\" object: restore it from a copy")
        _PARSED[str(self.path)] = (key, printers)
        return dict(printers)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{STORE_NAME}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put(self, name: str, record: Mapping[str, Any]) -> None:
        with self._locked():
            printers = self.records()
            printers[name] = dict(record)
            self._write({"format": 1, "printers": printers})

    def record(self, name: str, seen: Identity, accept: Any = None) -> Verdict:
        """Decide again with the store as it is now, under its lock, and write a ``record`` verdict."""
        with self._locked():
            verdict = decide(name, seen, self.records(), accept, str(self.path), utc_now())
            if verdict.action == "record":
                printers = self.records()
                printers[name] = verdict.record
                self._write({"format": 1, "printers": printers})
            return verdict

    def _write(self, document: Mapping[str, Any]) -> None:
        handle, temporary = tempfile.mkstemp(prefix=f".{STORE_NAME}.", dir=self.root)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=1, sort_keys=True)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def connection_host_key(host: Any) -> str:
    """The host key of the host's SSH connection, as ``"<type> SHA256:<base64>"`` (OpenSSH's
    fingerprint), from paramiko's transport; ``""`` without a live SSH connection."""
    client = getattr(getattr(host, "connector", None), "client", None)
    try:
        transport = client.get_transport() if client is not None else None
        key = transport.get_remote_server_key() if transport is not None and transport.is_active() else None
    except Exception:  # noqa: BLE001 - paramiko raises SSHException before key exchange
        return ""
    return f"{key.get_name()} {key.fingerprint}" if key is not None else ""
