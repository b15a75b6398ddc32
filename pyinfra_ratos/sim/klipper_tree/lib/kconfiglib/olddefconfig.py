"""Resolve a Kconfig configuration file in place (stand-in for Klipper's vendored script).

Reads $KCONFIG_CONFIG (default .config), fills in defaults, drops values whose prompt is not
visible, and writes it back (the previous file kept as <file>.old), with kconfiglib's messages.
Usage: python3 lib/kconfiglib/olddefconfig.py src/Kconfig
"""

import sys

import kconfiglib


def main():
    kconf = kconfiglib.standard_kconfig(__doc__)
    print(kconf.load_config())
    print(kconf.write_config())


if __name__ == "__main__":
    sys.exit(main())
