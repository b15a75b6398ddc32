"""ProvisionState: the system part of a provision read by the probe, with pyinfra's own facts' values."""

from __future__ import annotations

import os
import subprocess

from pyinfra.facts.server import Hostname, Timezone

from pyinfra_ratos.facts import remote
from pyinfra_ratos.facts.provision_state import ProvisionState, parse_system_state

SHOW = ["Id=klipper.service", "SubState=running", "UnitFileState=enabled", "",
        "Id=moonraker.service", "SubState=dead", "UnitFileState=enabled", "",
        "Id=klipper-mcu.service", "SubState=running", "UnitFileState=disabled"]


def test_units_read_in_one_show_are_what_systemd_status_and_enabled_say() -> None:
    system = parse_system_state({"systemd": SHOW})
    assert system["running"] == {"klipper.service": True, "moonraker.service": False, "klipper-mcu.service": True}
    assert system["enabled"] == {"klipper.service": True, "moonraker.service": True, "klipper-mcu.service": False}


def test_a_package_counts_as_installed_as_dpkg_l_shows_it_to_deb_packages() -> None:
    system = parse_system_state({"packages": {"git": "ii ", "dfu-util": "rc ", "python3-venv": "hi "}})
    assert system["packages"] == {"git": True, "dfu-util": False, "python3-venv": True}


def test_no_answer_reads_as_nothing_in_place() -> None:
    fact = ProvisionState()
    value = fact.process(["{}"])
    assert value["system"]["packages"] == {} and value["system"]["files"] == {}
    assert value == ProvisionState.default()


def test_hostname_and_timezone_are_what_pyinfra_facts_read_here() -> None:
    found = remote.probe_system({"packages": [], "units": [], "files": ["/etc/hostname", "/nonexistent"]})
    assert found["hostname"] == subprocess.run(Hostname().command(), shell=True, capture_output=True,
                                               text=True).stdout.strip()
    timezone = subprocess.run(Timezone().command(), shell=True, capture_output=True, text=True).stdout.splitlines()
    assert found["timezone"] == Timezone().process(timezone)
    assert found["files"]["/nonexistent"] is None
    if os.path.isfile("/etc/hostname"):
        assert set(found["files"]["/etc/hostname"]) == {"sha1", "mode", "user", "group"}
