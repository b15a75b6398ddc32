"""The printer: its model and configuration text, the gate, its identity and config backups.

Owns what a printer is apart from its boards' firmware: the printer model and template data
(``model``), Klipper config text with its SAVE_CONFIG block (``klipper_config``), the one gate every
entry point asks before disrupting a printer (``gate``), the printer's identity (machine-id and
SSH host key: ``identity``), the controller's store of config backups (``backups``) and the
provisioning keys of host data (``provision_settings``). Pure Python: it may import
``pyinfra_ratos.firmware`` and ``pyinfra_ratos.data``, never pyinfra, facts, operations, deploys
or the fleet.
"""
