"""What "converged" means, one rule for ``ratos-fleet status``, the fleet report and the audit deploy.

A printer is converged when its Klipper runs the fleet's pinned commit (``klipper_commit``), every
board's MCU runs firmware built from that same commit, and its configuration is the one the
update would write. Versions are compared here, once, normalised: a Klipper version string
(``v0.13.0-3-g8ec72c2``, see :mod:`pyinfra_ratos.firmware.versions`) is at the pin when it is clean (not
dirty, not ``?``, not a timestamped build) and names the pinned commit, whatever the length git
abbreviated its hash to; or when it equals the pin's own ``git describe`` (the controller's
checkout, when there is one). Pure Python, no pyinfra import.
"""

from __future__ import annotations

import re

from pyinfra_ratos.firmware.versions import parse_version

AT_PIN, BEHIND, UNKNOWN = "at pin", "behind", "unknown"
MEANING = ("converged = Klipper at the fleet's pinned commit (klipper_commit), every board's firmware "
           "built from that commit, and the configuration as the update writes it")
_HEX = re.compile(r"^[0-9a-f]{7,40}$")


def at_pin(version: str | None, pin_commit: str | None, pin_version: str | None = None) -> bool | None:
    """Whether a Klipper version (host or MCU) names the pinned commit; None when there is no
    version to judge (an MCU not read) or no pin."""
    text = (version or "").strip()
    if not text or not (pin_commit or pin_version):
        return None
    parsed = parse_version(text)
    if not parsed.clean:
        return False  # names no reproducible commit: rebuild
    if pin_version and text == pin_version.strip():
        return True
    sha, pin = (parsed.sha or "").lower(), (pin_commit or "").strip().lower()
    if not _HEX.match(sha) or not _HEX.match(pin):
        return False
    return pin.startswith(sha) or sha.startswith(pin)


def firmware_word(version: str | None, pin_commit: str | None, pin_version: str | None = None) -> str:
    """``at pin`` / ``behind`` / ``unknown`` for a table cell."""
    found = at_pin(version, pin_commit, pin_version)
    return UNKNOWN if found is None else AT_PIN if found else BEHIND
