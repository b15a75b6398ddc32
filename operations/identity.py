"""The printer identity check each deploy makes before its first change (see ``printer_identity``)."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from pyinfra import host
from pyinfra.api import QuoteString, State, StringCommand, operation
from pyinfra.context import ctx_state

from pyinfra_ratos.facts.identity import MachineId
from pyinfra_ratos.printer.identity import (
    ACCEPT_KEY,
    Identity,
    IdentityStore,
    IdentityStoreError,
    Verdict,
    connection_host_key,
    decide,
    parse_machine_id,
)

DEFAULT_ROOT = "~/.local/share/pyinfra-ratos/config-backups"  # = backup.DEFAULT_ROOT

# per pyinfra state: each host's verdict; per run (one pyinfra run, or all the printers' States of
# one ratos-fleet run): the hosts that reached each machine
_VERDICTS: weakref.WeakKeyDictionary[State, dict[str, bool]] = weakref.WeakKeyDictionary()
_SEEN: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], list[str]]] = weakref.WeakKeyDictionary()


def _machine_keys(seen: Identity) -> list[tuple[str, str]]:
    """Where ``seen`` is filed, so that the hosts :func:`same_machine` would pair with it are found
    by key, not by comparing with every host of a 250-printer run: by its machine-id and host key
    (what a seen host key must equal), and by its machine-id alone (what a host seen without a key
    is compared by)."""
    keys = [("id", seen.machine_id)] if seen.machine_id else []
    return keys + ([("id+key", f"{seen.machine_id} {seen.host_key}")] if seen.host_key else [])


def _note_seen(run_state: Any, name: str, seen: Identity) -> None:
    found = _SEEN.setdefault(_run(run_state), {})
    for key in _machine_keys(seen):
        if name not in found.setdefault(key, []):
            found[key].append(name)


def store_root(dest_root: str | None = None) -> str:
    """The identity store's folder: the host's backup folder (``config_backups``)."""
    return str(dest_root or host.data.get("config_backups") or DEFAULT_ROOT)


def seen_identity(machine_id: Any) -> Identity:
    """The current host's identity: ``machine_id`` as the Pi printed it, the connection's host key."""
    return Identity(parse_machine_id(machine_id), connection_host_key(host))


def _run(run_state: Any) -> Any:
    """The run a State belongs to: the fleet's (:class:`pyinfra_ratos.run.results.FleetRun`, one
    State per printer) when it set one, else the State itself (one pyinfra run)."""
    return getattr(run_state, "fleet_run", None) or run_state


def seen_elsewhere(run_state: Any, name: str, seen: Identity) -> list[str]:
    """Other hosts of this run that reached the same machine."""
    key = ("id+key", f"{seen.machine_id} {seen.host_key}") if seen.host_key else ("id", seen.machine_id)
    if not seen.machine_id and not seen.host_key:
        return []
    return sorted(other for other in _SEEN.get(_run(run_state), {}).get(key, []) if other != name)


def judge(name: str, seen: Identity, root: str, run_state: Any = None) -> Verdict:
    """The verdict for ``name`` from the store and this run's other hosts (never raises)."""
    store = IdentityStore(root)
    try:
        verdict = decide(name, seen, store.records(), host.data.get(ACCEPT_KEY), str(store.path))
    except IdentityStoreError as error:
        return Verdict("stop", f"{name}: {error}")
    twins = seen_elsewhere(run_state, name, seen) if run_state is not None else []
    if verdict.action == "record" and twins:
        # neither name has this machine yet: which one it is, only the inventory's author knows
        return Verdict("stop", f"{name}: reaches the same machine as {twins[0]} in this run ({seen.describe()}): "
                               f"not changing it; nothing was changed. Fix: give each printer its own address "
                               "(ssh_hostname) in the inventory")
    return verdict


def verified(current: Mapping[str, Any] | None = None, dest_root: str | None = None) -> bool:
    """Whether the current host is the printer its name recorded: once per host and run. When it
    is not, adds an operation that fails this host alone (naming both identities and the fix) and
    returns False: the deploy then adds nothing more.

    + current: the host's ``ConfigBackupState`` when the caller read it (its ``machine_id``: no
      command); else the machine-id is read (:class:`MachineId`, one command) when the store
      holds a record this Pi could match (its name's, or one with this connection's host key)
    + dest_root: the backup folder holding the store (default: host data ``config_backups``)

    Records nothing: the config backup records a name's first identity (``backup.config_dir``).
    """
    run_state = ctx_state.get()
    done = _VERDICTS.setdefault(run_state, {})
    if host.name in done:
        return done[host.name]
    root = store_root(dest_root)
    machine = (current or {}).get("machine_id")
    if machine is None:
        machine = host.get_fact(MachineId) if _needs_machine_id(host.name, root) else ""
    seen = seen_identity(machine)
    verdict = judge(host.name, seen, root, run_state)
    _note_seen(run_state, host.name, seen)
    done[host.name] = verdict.action != "stop"
    if verdict.action == "stop":
        stop(name="Printer identity", message=verdict.message)
    return done[host.name]


def _needs_machine_id(name: str, root: str) -> bool:
    """Whether the check must read the machine-id: the name has a record, or another record has
    this connection's host key. Otherwise nothing recorded can be this Pi (no command spent)."""
    key = connection_host_key(host)
    try:
        records = IdentityStore(root).records()
    except IdentityStoreError:
        return False  # the check stops the host with the store's error anyway
    fingerprint = key.partition(" ")[2]
    return not key or name in records or any(
        fingerprint in (record.get("host_keys") or {}).values() for record in records.values())


@operation(is_idempotent=False)
def stop(message: str):
    """
    Fail this host, and only it, with ``message`` (the identity check's verdict): pyinfra then
    runs nothing more on it.

    + message: what was found and the fix
    """
    yield StringCommand("printf", "'%s\\n'", QuoteString(f"pyinfra-ratos: {message}"), ">&2;", "exit", "1")
