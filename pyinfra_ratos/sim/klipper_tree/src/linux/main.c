// Linux process: main loop and real-time scheduling.

DECL_CONSTANT_STR("MCU", "linux");
DECL_CONSTANT("PWM_MAX", 32768);
DECL_CONSTANT("ADC_MAX", 4095);
