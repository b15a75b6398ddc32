// ARM Cortex-M vector table and reset handler.

DECL_CONSTANT_STR("MCU", CONFIG_MCU);
