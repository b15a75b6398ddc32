"""pyinfra_ratos.inventory: example inventories for real printers (``single.py``, ``farm.py``, ``group_data/``).

They are pyinfra inventory files, read by pyinfra's CLI (``pyinfra inventory/farm.py ...``) or by
:func:`pyinfra_ratos.fleet.api.load_inventory`; copy one and edit the hosts. Their data is
validated by :func:`pyinfra_ratos.fleet.hostdata.validate_inventory`.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent


def example(name: str) -> Path:
    """The path of an example inventory: ``example("farm")`` -> ``.../inventory/farm.py``."""
    path = EXAMPLES / f"{name}.py"
    if name.startswith("_") or not path.is_file():
        raise FileNotFoundError(f"no example inventory {name!r}: use one of single, farm")
    return path
