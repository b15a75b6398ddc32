// RP2040 startup and bootloader request.

DECL_CONSTANT("ADC_MAX", 4095);
DECL_CONSTANT("PWM_MAX", 255);
