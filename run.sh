#!/usr/bin/env bash
# pyinfra-ratos on a fresh Debian 12 machine, as root:
#   bash run.sh demo   the main job on the built-in virtual farm (no hardware)
#   bash run.sh test   the test suite
# Installs what it needs first: Debian packages (only the missing ones) and a venv in .venv.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(
  python3 python3-venv python3-pip       # the controller's venv; Debian's python3 runs the Pi side
  openssh-server openssh-client sudo     # each virtual Pi is a real sshd with a sudo-capable pi user
  util-linux iproute2 procps             # unshare/nsenter/mount, ip, ps
  git make curl ca-certificates          # ~/klipper builds; Moonraker over HTTP
  umockdev gir1.2-umockdev-1.0 python3-gi  # USB boards emulated in user space
  dfu-util usbutils                      # the real flashing and listing tools
  chromium                               # the test suite opens report.html in a real headless browser
)

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "run.sh: the virtual farm needs root (namespaces, mounts, sshd): sudo bash run.sh $*" >&2
    exit 2
  fi
}

install_system() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ] || [ "${CI:-}" = true ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  fi
}

install_python() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
}

case "${1:-}" in
  demo)
    need_root "$@"; install_system; install_python
    exec .venv/bin/ratos-fleet demo "${@:2}"
    ;;
  test)
    need_root "$@"; install_system; install_python
    exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "${@:2}"
    ;;
  *)
    echo "usage: bash run.sh demo|test" >&2
    exit 2
    ;;
esac
