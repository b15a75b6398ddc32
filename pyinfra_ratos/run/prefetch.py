"""Facts read for many hosts at once, before a deploy plans them one by one.

pyinfra's ``add_deploy`` runs a deploy function host after host, so each fact it reads is a round
trip made in turn. A fleet run reads the facts the deploy will ask for on every host of the batch
concurrently first (see ``pyinfra_ratos.fleet.update``); the deploy then takes each value once, by the same fact
and arguments, and reads for itself whatever was not prefetched (the pyinfra CLI, a failed read).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

_LOCK = threading.Lock()
_VALUES: dict[tuple[str, str, str], Any] = {}
_READS: dict[str, list[tuple[type, dict[str, Any]]]] = {}  # host -> the (fact, kwargs) the prefetch read


def key(host_name: str, fact: type, kwargs: Mapping[str, Any]) -> tuple[str, str, str]:
    return host_name, f"{fact.__module__}.{fact.__name__}", json.dumps(kwargs, sort_keys=True, default=list)


def put(host_name: str, fact: type, kwargs: Mapping[str, Any], value: Any) -> None:
    with _LOCK:
        _VALUES[key(host_name, fact, kwargs)] = value


def get_fact(host: Any, fact: type, **kwargs: Any) -> Any:
    """The prefetched value (taken: a second read goes to the Pi), else ``host.get_fact``."""
    with _LOCK:
        found = _VALUES.pop(key(host.name, fact, kwargs), _VALUES)
    return host.get_fact(fact, **kwargs) if found is _VALUES else found


def put_reads(host_name: str, reads: list[tuple[type, dict[str, Any]]]) -> None:
    """Which facts (and arguments) were read for the host: the deploy takes them instead of
    working them out again (for the update: rendering the printer's templates)."""
    with _LOCK:
        _READS[host_name] = reads


def take_reads(host_name: str) -> list[tuple[type, dict[str, Any]]] | None:
    with _LOCK:
        return _READS.pop(host_name, None)


def discard(host_name: str) -> None:
    """Forget what was read for one host and not taken (its run is over)."""
    with _LOCK:
        _READS.pop(host_name, None)
        for found in [k for k in _VALUES if k[0] == host_name]:
            del _VALUES[found]


def clear() -> None:
    with _LOCK:
        _VALUES.clear()
        _READS.clear()
