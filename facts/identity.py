"""The Pi's machine-id, for the deploys that read no config folder (firmware, printer_config)."""

from __future__ import annotations

from pyinfra.api import FactBase
from typing_extensions import override

from pyinfra_ratos.printer.identity import parse_machine_id


class MachineId(FactBase[str]):
    """
    Returns the Pi's ``/etc/machine-id`` (32 hex digits), ``""`` when it has none. The update and
    provision read it with the config folder instead (``ConfigBackupState``'s ``machine_id``).

    .. code:: python

        "3d1219c7c4c5404aaa1f6d2a48adfda4"
    """

    @override
    def command(self) -> str:
        return "cat /etc/machine-id 2>/dev/null || true"

    @override
    def process(self, output: list[str]) -> str:
        return parse_machine_id("\n".join(output))

    @staticmethod
    def default() -> str:
        return ""
