"""Data rules: what a value in host data, or a string from a Pi, may hold.

Owns the table-driven value rules every settings module uses (``rules``), the boards list of a
host (``board_entries``) and the control-character hygiene for text that reaches a terminal
(``hygiene``). It may import ``pyinfra_ratos.firmware.catalog``/``kconfig`` and
``pyinfra_ratos.printer.klipper_config`` (module by module, never a circle), nothing else of ours.
"""
