// USB CDC-ACM serial transport.

DECL_CONSTANT("USB_CDC", 1);
