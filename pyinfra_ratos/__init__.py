"""pyinfra-ratos: provision RatOS Raspberry Pis and Klipper print farms with pyinfra."""

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("pyinfra-ratos")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
