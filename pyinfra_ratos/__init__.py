"""pyinfra-ratos: provision RatOS Raspberry Pis and Klipper print farms with pyinfra."""
