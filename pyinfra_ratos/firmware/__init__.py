"""Firmware: the board catalog, Kconfig, builds and their identities, images, the flash plan and
the printer agent.

Owns everything about what runs on a controller board: the catalog of boards (``catalog``, data
in ``boards/``), Kconfig rendering and checking (``kconfig``), builds once per identity
(``builder``, ``identity``, ``bundle`` for Klipper source bundles), reading images (``image``),
version comparison (``versions``), the firmware keys of host data (``settings``), the flash
decision (``plan``), the flash methods (``methods``: one module per way of writing a board), the
printer agent that runs every disruptive step on the Pi (``agent``, stdlib only) and the pyusb
DfuSe client shipped to Pis (``dfu``). Pure Python: it may import ``pyinfra_ratos.data`` and
``pyinfra_ratos.printer.klipper_config``, never pyinfra, facts, operations, deploys or the fleet.
"""
