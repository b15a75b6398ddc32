"""Data of the ``canary`` group of ``farm.py``: the printers an update reaches first."""

# A canary gets its new files even while printing; Klipper restarts once it is idle.
printer_when_busy = "write"
