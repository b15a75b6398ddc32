"""Klipper version strings: what they say, and when an MCU's firmware matches its host.

Klipper computes its version with ``git describe --always --tags --long --dirty`` (the host in
klippy, the firmware at build time in ``scripts/buildcommands.py``). A firmware build that is not
clean (dirty tree, no git, unknown toolchain) gets ``-YYYYMMDD_HHMMSS-<hostname>`` appended, and
without git the version is ``?``. So::

    v0.13.0-3-g1a2b3c4d5                          clean, 3 commits past v0.13.0
    v0.13.0-3-g1a2b3c4d5-dirty                    uncommitted changes
    v0.13.0-3-g1a2b3c4d5-dirty-20250601_101500-vcore-01   a dirty firmware build
    1a2b3c4d5                                     no tag reachable (shallow clone)
    ?  /  ?-20250601_101500-vcore-01              no git (or "dubious ownership")

Comparison rule (:func:`mcu_matches_host`): an MCU is up to date when its version string is
exactly the host's and both are clean. A dirty, ``?`` or timestamp-suffixed version never matches,
even against an identical string: it names no reproducible commit, so the answer is "rebuild".
Pure Python, no pyinfra import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STAMP = re.compile(r"^(?P<base>.*?)-(?P<stamp>\d{8}_\d{6})-(?P<host>[^\s]+)\Z")
_DESCRIBE = re.compile(r"^(?P<tag>.+)-(?P<commits>\d+)-g(?P<sha>[0-9a-f]{4,40})(?P<dirty>-dirty)?\Z")
_BARE_SHA = re.compile(r"^(?P<sha>[0-9a-f]{4,40})(?P<dirty>-dirty)?\Z")


@dataclass(frozen=True)
class KlipperVersion:
    raw: str
    tag: str | None = None           # "v0.13.0"; None without a reachable tag
    commits: int | None = None       # commits past the tag
    sha: str | None = None           # abbreviated commit, as git printed it
    dirty: bool = False
    timestamp: str | None = None     # "20250601_101500" of a non-clean firmware build
    build_host: str | None = None    # hostname of that build
    unknown: bool = False            # "?" (no git, or git refused the checkout), or unparsable

    @property
    def clean(self) -> bool:
        """Names exactly one commit with no local changes: the only kind that can match."""
        return not (self.unknown or self.dirty or self.timestamp or self.sha is None)


def parse_version(text: str) -> KlipperVersion:
    """Split a Klipper version string; never raises (unparsable text is ``unknown``)."""
    raw = (text or "").strip()
    base, timestamp, build_host = raw, None, None
    stamped = _STAMP.match(raw)
    if stamped:
        base, timestamp, build_host = stamped["base"], stamped["stamp"], stamped["host"]
    described = _DESCRIBE.match(base)
    if described:
        return KlipperVersion(
            raw=raw, tag=described["tag"], commits=int(described["commits"]), sha=described["sha"],
            dirty=bool(described["dirty"]), timestamp=timestamp, build_host=build_host,
        )
    bare = _BARE_SHA.match(base)
    if bare:
        return KlipperVersion(raw=raw, sha=bare["sha"], dirty=bool(bare["dirty"]),
                              timestamp=timestamp, build_host=build_host)
    return KlipperVersion(raw=raw, timestamp=timestamp, build_host=build_host, unknown=True)


def mcu_matches_host(mcu_version: str, host_version: str) -> bool:
    """Whether an MCU runs firmware built from exactly the host's (clean) commit."""
    if not mcu_version or mcu_version != host_version:
        return False
    return parse_version(mcu_version).clean
