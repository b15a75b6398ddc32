"""Flash methods: one module per way of writing a board, behind one interface.

A method (a :class:`FlashMethod` subclass, registered with :func:`register`) declares the
bootloader states it writes from (``modes``: the ``AttachedBoards`` modes; none for a board that
is not on USB), the preflight it needs before anything is written (:meth:`FlashMethod.preflight`),
the steps it contributes to the printer agent's plan (:meth:`FlashMethod.steps`) and how a write is
proven (``verifies``). Its Pi side is a runner in the printer agent (``pyinfra_ratos.firmware.agent``
``RUNNERS``, keyed by the plan's ``method``); a method whose runner is not built in ships it in
``pi_source``, a stdlib-only file appended to the agent. The catalog names a board's methods in order
of preference (``flash_methods``); the plan takes the first one registered. Adding a method is one
new module here and one catalog value: nothing else branches on a method's name.

Built in: ``dfu`` (STM32 ROM DfuSe, written with dfu-util or the pyusb client), ``katapult``
(Katapult over USB), ``katapult-can`` (a CAN toolboard through Katapult over CAN), ``can-bridge``
(a USB-to-CAN bridge mainboard: its bootloader asked for over CAN, written over USB), ``linux``
(the Raspberry Pi's own host MCU), ``rp2040`` (an RP2040 in its BOOTSEL ROM, over PICOBOOT with the
pyusb client) and ``manual-sd`` (nothing written: the file and the procedure for a person, the
board held); the Pi sides of katapult, katapult-can and can-bridge are shipped in ``pi_source``.
Imports only the firmware room's data modules (``catalog``, ``steps``, ``dfu.memory``).
"""

from __future__ import annotations

from pyinfra_ratos.firmware.methods import (  # noqa: F401 - the built-in methods register themselves
    can_bridge, dfu, katapult, katapult_can, linux, manual_sd, rp2040,
)
from pyinfra_ratos.firmware.methods.base import (  # noqa: F401 - the interface
    METHODS, UNSUPPORTED, UNSUPPORTED_MODES, FlashMethod, Options, method_for, mode_refusal, register,
    unsupported_reason,
)
