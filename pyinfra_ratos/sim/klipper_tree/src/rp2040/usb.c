// RP2040 USB device controller.

DECL_CONSTANT("USB_SERIAL", 1);
