"""Data of the ``production`` group of ``farm.py``: printers that earn money, changed after the canaries."""

# A printing production printer is left alone: a later run that finds it idle writes its files
# ("write", the default, would write them now and restart Klipper later).
printer_when_busy = "defer"
# More history of each replaced configuration file.
printer_backups = 10
