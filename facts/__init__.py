"""pyinfra facts about RatOS Pis, each one SSH command that exits 0 in every state.

- ``boards.AttachedBoards``: controller boards on USB, keyed by port path, with mode and catalog id
- ``klipper.KlipperHost``: the ``~/klipper`` checkout (version as Klipper computes it, ownership)
- ``klipper.McuFirmware``: every MCU's firmware version against the host's (Moonraker, klippy.log)
- ``printer.PrinterActivity``: the job state and the ``busy`` flag disruptive operations obey
- ``network.NetworkReachability``: route, DNS, git remote and Moonraker reachability
- ``firmware.FirmwareArtifacts``: firmware builds on the Pi, identified by their own bytes
- ``can.CanBus``: the CAN interface, the nodes the printer's config expects, whether each answers
- ``audit.FleetAudit``: the first five and CanBus in one SSH command, for fleet audits

All run the stdlib-only probe ``remote.py`` on the Pi (see ``probe.py``) and parse its JSON with
pure ``parse_*`` functions.
"""
