"""The virtual RatOS farm: namespaced Pis with real sshd, a Moonraker stand-in and emulated boards.

Owns the test bed and the demo's farm, never anything the product needs on a real Pi: the farm
itself (``farm``, ``daemon``, ``pi_init``, ``procs``, ``scenario``, ``pihome``), the Pi's state file
(``pistate``) and its knobs (``knobs``), the stand-ins for systemd (``systemctl``, ``units``,
``mainproc``), for klippy as Moonraker sees it (``klippy``) and for Moonraker (``moonraker``,
``hangpool``), the virtual Pi's Klipper checkout (``klipper_repo``, ``klipper_tree/``) and the
emulated USB boards (``usb/``). It may import the product's core (``pyinfra_ratos.firmware``,
``printer``, ``data``) to build like it; the product imports it only from the CLI's ``sim`` and
``demo`` commands.
"""
