"""A pyinfra run of ours: what the deploys and the fleet runner share on top of pyinfra's API.

Owns the operations added only when they have something to do (``planned``), facts read ahead
for a batch (``prefetch``), what each host's deploy noted for the report (``results``) and the
SSH connection's tuning (``connection``). It may import pyinfra and ``pyinfra_ratos.firmware``,
``printer`` and ``data``; never deploys, operations, facts or the fleet.
"""
