"""The fleet: ``ratos-fleet`` and what it does over many printers.

Owns the CLI (``cli``), the validation of a whole inventory before any SSH command (``hostdata``),
pyinfra's API driven over a batch of printers (``api``), the canary-then-batches update and plan
(``update``) and the report it writes (``report``). The top of the house: it may import
everything of ours (deploys, operations, facts, ``run``, the core); nothing imports it but the
virtual farm's demo, which is handed the CLI's entry point instead of importing it.
"""
