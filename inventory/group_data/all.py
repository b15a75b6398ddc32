"""Data of every printer of the example inventories (``single.py``, ``farm.py``).

pyinfra reads every module-level name of this file as data (imports excepted), so it holds data
only: no helper variables. A host's own data, then its groups' (``canary.py``, ``production.py``),
win over what is set here; ``--data key=value`` on the command line wins over everything.
"""

from pathlib import Path as _Path  # imports are not data

# --- the fleet's Klipper ---------------------------------------------------------------------
# The commit every Pi runs (40 hex digits, `git rev-parse HEAD`): pinned in moonraker.conf, and
# the commit the firmware of every board is built from. Here: Klipper v0.13.0.
klipper_commit = "61c0c8d2ef40340781835dd53fb04cc7a454e37a"
# A Klipper checkout on the controller (this machine) that holds that commit; the firmware is
# built there, once per identity. `git clone https://github.com/Klipper3d/klipper ~/klipper-fleet`
klipper_source = "~/klipper-fleet"
# Where built firmware is kept on the controller between runs.
firmware_cache = "~/.cache/pyinfra-ratos/firmware"
# How boards in ROM DFU are written: "dfu-util" (default) or "pyusb".
flash_backend = "dfu-util"

# --- the usual printer (a host or group sets its own to differ) ------------------------------
printer_model = "v-core-3"       # v-core-3 | v-core-4 | v-minion
printer_size = 300               # build size in mm (v-core-3: 200/300/400/500)
hotend = "rapido"                # RatOS/hotends/<name>.cfg
extruder = "orbiter-v2-0"        # RatOS/extruders/<name>.cfg
probe = "bltouch"                # RatOS/z-probe/<name>.cfg
stepper_driver = "tmc2209"
stepper_current = {"x": 1.6, "y": 1.6, "z": 1.2, "e": 0.7}  # run_current in A

# --- how pyinfra reaches the Pis -------------------------------------------------------------
ssh_user = "pi"
# Host keys are pinned: a Pi is reached only when its key is in the known_hosts file beside the
# inventories (add each with `ssh-keyscan -H <pi> >> known_hosts`, then check its fingerprint on
# the Pi itself). Never "accept-new": a spoofed address would be trusted on first use.
ssh_known_hosts_file = str(_Path(__file__).resolve().parent.parent / "known_hosts")
ssh_strict_host_key_checking = "yes"
