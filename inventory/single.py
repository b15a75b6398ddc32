"""One RatOS printer, by hostname or IP address: the smallest inventory.

    ratos-fleet status inventory/single.py
    pyinfra -y inventory/single.py deploys/printer_config.py

Data keys a printer may set (validated for every host before any SSH command, see
``pyinfra_ratos.fleet.hostdata``; shared defaults in ``group_data/all.py``):

    boards            the printer's MCUs, the control board first (required):
                        board        catalog id, a file name of pyinfra_ratos/firmware/boards/*.toml
                        mcu_name     Klipper's name; default mcu, toolboard_t0..., rpi (host MCU)
                        port         USB port path ("1-1.3"), to tell identical boards apart
                        serial       explicit serial path (skips the USB lookup)
                        canbus_uuid  12 hex digits, for CAN boards
                        kconfig      {symbol: value} firmware build overrides
    printer_model     v-core-3 | v-core-4 | v-minion        printer_size  build size in mm
    hotend, extruder, probe, stepper_driver, stepper_current    RatOS component files and currents
    klipper_commit    the fleet's Klipper commit (40 hex digits)
    klipper_source    a Klipper checkout on the controller holding that commit
    printer_user_config  keep | adopt | regenerate   what to do with an existing printer.cfg
    printer_when_busy    write | defer               a printing printer: write now or later
    ssh_hostname, ssh_user, ssh_port, ssh_key ...     how pyinfra connects (pyinfra's ssh_* keys);
                      host keys are pinned in known_hosts beside this file (group_data/all.py): add a Pi
                      with `ssh-keyscan -H <pi> >> known_hosts` and check its fingerprint

Never here: ``attended_flash`` (a per-run operator flag: ``--data attended_flash=true``).
"""

printers = [
    (
        "vcore-workshop",                      # the name reports use
        {
            "ssh_hostname": "192.168.1.50",   # or "ratos.local"
            "printer_model": "v-core-3",
            "printer_size": 300,
            "boards": [
                # the control board; its USB port from `ls -l /dev/serial/by-path` on the Pi
                {"board": "btt-octopus-pro-h723-11", "port": "1-1.3"},
                # a USB toolboard, named toolboard_t0 by default
                {"board": "btt-ebb42-12", "port": "1-1.4"},
                # the Pi itself as an MCU (ADXL345, GPIOs): mcu_name "rpi"
                {"board": "rpi"},
            ],
        },
    ),
]
