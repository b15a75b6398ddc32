"""A print farm: canaries are updated first, production printers after them.

    ratos-fleet status inventory/farm.py
    ratos-fleet status inventory/farm.py --limit canary

Groups are pyinfra's: each list below is a group (``canary``, ``production``), with its data in
``group_data/<group>.py`` and everyone's in ``group_data/all.py``. Data keys: see ``single.py``.
Two identical boards on one Pi need their USB ``port`` to be told apart.
"""

canary = [
    ("vcore3-01", {
        "ssh_hostname": "10.20.0.11",
        "boards": [
            {"board": "btt-octopus-pro-h723-11", "port": "1-1.3"},
            {"board": "btt-ebb42-12", "port": "1-1.4"},
        ],
    }),
    ("vminion-01", {
        "ssh_hostname": "10.20.0.21",
        "printer_model": "v-minion",
        "printer_size": 180,
        "boards": [{"board": "btt-skr-mini-e3-30", "port": "1-1.2"}],
    }),
]

production = [
    ("vcore3-02", {
        "ssh_hostname": "10.20.0.12",
        "boards": [{"board": "btt-octopus-pro-h723-11", "port": "1-1.3"}],
    }),
    ("vcore3-03", {
        "ssh_hostname": "10.20.0.13",
        "printer_size": 500,
        "boards": [{"board": "btt-octopus-pro-446", "port": "1-1.3"}, {"board": "rpi"}],
    }),
    ("vcore4-01", {
        "ssh_hostname": "10.20.0.14",
        "printer_model": "v-core-4",
        "printer_size": 400,
        "boards": [
            {"board": "btt-octopus-max-ez", "port": "1-1.1"},
            {"board": "btt-ebb36-12-can", "mcu_name": "toolboard_t0", "canbus_uuid": "a1b2c3d4e5f6"},
        ],
    }),
]
