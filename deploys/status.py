"""Read-only: print each Pi's hostname, Klipper host version and Moonraker's view of klippy.

    pyinfra -y INVENTORY deploys/status.py

Changes nothing on any Pi (one SSH command per Pi).
"""

from __future__ import annotations

import json

from pyinfra import host
from pyinfra.facts.server import Command

# one round trip: hostname, the version klippy computes, and Moonraker's printer/info
STATUS_COMMAND = (
    "hostname; "
    "git -C ~/klipper describe --always --tags --long --dirty 2>/dev/null || echo '?'; "
    "curl -s -m 3 http://127.0.0.1:7125/printer/info || echo '{}'"
)

lines = host.get_fact(Command, STATUS_COMMAND).splitlines()
hostname, version = lines[0], lines[1]
try:
    info = json.loads("\n".join(lines[2:]))
except ValueError:
    info = {}
if "result" in info:
    moonraker = f"klippy {info['result']['state']}"
elif "error" in info:
    moonraker = f"error {info['error'].get('code')}: {info['error'].get('message')}"
else:
    moonraker = "not answering"
print(f"[{host.name}] hostname={hostname} klipper={version} moonraker: {moonraker}", flush=True)
