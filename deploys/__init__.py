"""pyinfra deploys of pyinfra-ratos: ``@deploy`` functions, each module also a pyinfra deploy file.

``pyinfra -y INVENTORY deploys/firmware.py`` runs a module as a deploy file; a user's own deploy
imports the function instead (``from pyinfra_ratos.deploys.firmware import converge_firmware``).
"""

from __future__ import annotations

from typing import Any


def executed_by_pyinfra(module_globals: dict[str, Any]) -> bool:
    """True when pyinfra runs the module as a deploy file, False when it is imported.

    pyinfra executes a deploy file's code in a fresh namespace without ``__spec__``; an
    imported module always has one.
    """
    return module_globals.get("__spec__") is None


def left_alone(reason: str) -> None:
    """Say, at pyinfra's default verbosity, why the current host is left as it is (a noop's
    description shows only with ``-v``, and the gate's refusal is the operator's business)."""
    from pyinfra import host, logger

    host.log(f"left as it is: {reason}", logger.warning)
