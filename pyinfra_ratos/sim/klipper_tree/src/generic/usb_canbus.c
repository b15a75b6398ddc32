// USB to CAN bus bridge (gs_usb).

DECL_CONSTANT("CANBUS_BRIDGE", 1);
