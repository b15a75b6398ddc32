"""Printer identity, errors never swallowed and bounded backups, over real SSH on the virtual farm:
the wrong address stops a printer, `_sudo: True` fails one host only, a 1 GB file never reaches
the controller's memory, a replaced SD card is restored once the operator accepts it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.operations import backup
from pyinfra_ratos.sim import farm as sim_farm
from pyinfra_ratos.sim import pihome

from .conftest import VENV_BIN, RunningFarm, start_farm

PIS = ("id-a", "id-b", "id-c")
# the farm's Pis share the machine's /etc/machine-id (copy-on-write /etc): give each its own, as
# each real card has
MACHINE_IDS = {name: f"{index:x}" * 32 for index, name in enumerate(PIS, start=10)}
PROVISION = Path(__file__).resolve().parents[2] / "deploys" / "provision.py"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    base = tmp_path_factory.mktemp("farm-identity")
    (base / "identity.toml").write_text("".join(
        f'[[pi]]\nname = "{name}"\n[[pi.boards]]\nboard = "btt-skr-mini-e3-30"\nfirmware = "current"\n\n'
        for name in PIS))
    running = start_farm(base / "identity.toml", base / "state")
    try:
        for name, machine_id in MACHINE_IDS.items():
            running.ssh(name, f"echo {machine_id} | sudo tee /etc/machine-id >/dev/null")
        first = ratos_fleet(running, running.inventory, base / "first")
        assert first.returncode in (0, 3), first.stdout + first.stderr  # converged, or changes made
        yield running
    finally:
        sim_farm.down(base / "state")


def ratos_fleet(farm: RunningFarm, inventory: Path, report: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "ratos-fleet"), "update", str(inventory), "--report", str(report), *args],
                          capture_output=True, text=True, timeout=600)


def inventory(farm: RunningFarm, path: Path, **changes: dict[str, Any]) -> Path:
    """The farm's inventory with ``changes`` merged into the named hosts' data."""
    path.write_text(f"exec(open({str(farm.inventory)!r}).read())\n"
                    f"_changes = {changes!r}\n"
                    "pis = [(n, {**d, **_changes.get(n, {})}) for n, d in pis]\n")
    return path


def report_of(directory: Path) -> dict[str, dict[str, Any]]:
    return {p["host"]: p for p in json.loads((directory / "report.json").read_text())["printers"]}


def backups(farm: RunningFarm) -> Path:
    return farm.state / "config-backups"


def config(farm: RunningFarm, pi: str) -> Path:
    return farm.state / "pis" / pi / "home" / "pi" / "printer_data" / "config"


def test_the_first_update_recorded_each_printers_machine_id_and_host_key(farm: RunningFarm) -> None:
    records = json.loads((backups(farm) / "identities.json").read_text())["printers"]
    pinned = {line.split()[0].split("]")[0].lstrip("["): line.split()[2]
              for line in (farm.state / "known_hosts").read_text().splitlines() if line.strip()}
    for name in PIS:
        assert records[name]["machine_id"] == MACHINE_IDS[name]
        assert list(records[name]["host_keys"]) == ["ssh-ed25519"]
        # the host key is the one the farm pinned in known_hosts (the connection's, not another read)
        key = pinned[farm.pi(name)["address"]]
        import base64
        import hashlib
        fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(key)).digest()).decode().rstrip("=")
        assert records[name]["host_keys"]["ssh-ed25519"] == fingerprint
        version = backup.versions(backups(farm) / name)[-1]
        assert backup.version_identity(version)["machine_id"] == MACHINE_IDS[name]


def test_the_wrong_address_stops_that_printer_with_both_identities_and_backs_nothing_up(
        farm: RunningFarm, tmp_path: Path) -> None:
    before = {name: [v.name for v in backup.versions(backups(farm) / name)] for name in PIS}
    (config(farm, "id-b") / "notes.cfg").write_text("# only on id-b\n")  # id-b has something new to back up
    wrong = inventory(farm, tmp_path / "wrong.py", **{"id-a": {"ssh_hostname": farm.pi("id-b")["address"]}})
    result = ratos_fleet(farm, wrong, tmp_path / "report")
    status = report_of(tmp_path / "report")
    assert result.returncode == 1
    assert status["id-a"]["status"] == "failed"
    reason = status["id-a"]["reason"]
    assert f"recorded machine-id {MACHINE_IDS['id-a']}" in reason and f"seen machine-id {MACHINE_IDS['id-b']}" in reason
    assert "(the printer recorded as id-b)" in reason and "printer_identity_accept" in reason
    assert status["id-b"]["status"] in ("converged", "changed") and status["id-c"]["status"] == "converged"
    after = {name: [v.name for v in backup.versions(backups(farm) / name)] for name in PIS}
    assert after["id-a"] == before["id-a"]  # nothing stored as id-a's
    assert len(after["id-b"]) == len(before["id-b"]) + 1  # id-b's own backup, under its own name
    assert "Traceback" not in result.stderr


def test_a_name_never_recorded_that_reaches_another_printer_is_stopped(farm: RunningFarm, tmp_path: Path) -> None:
    extra = tmp_path / "extra.py"
    extra.write_text(f"exec(open({str(farm.inventory)!r}).read())\n"
                     "pis = pis + [('id-new', {**dict(pis)['id-c']})]\n")
    result = ratos_fleet(farm, extra, tmp_path / "report")
    status = report_of(tmp_path / "report")
    assert status["id-new"]["status"] == "failed", result.stdout
    assert "the Pi reached is the printer recorded as id-c" in status["id-new"]["reason"]
    assert not (backups(farm) / "id-new").exists()
    assert "id-new" not in json.loads((backups(farm) / "identities.json").read_text())["printers"]


def test_sudo_in_one_hosts_data_fails_that_host_and_the_others_converge(farm: RunningFarm, tmp_path: Path) -> None:
    sudo = inventory(farm, tmp_path / "sudo.py", **{"id-b": {"_sudo": True}})
    result = ratos_fleet(farm, sudo, tmp_path / "report")
    status = report_of(tmp_path / "report")
    assert result.returncode == 1, result.stdout
    assert status["id-b"]["status"] == "failed"
    assert "pyinfra could not plan this host" in status["id-b"]["reason"] and "_sudo" in status["id-b"]["reason"]
    assert status["id-a"]["status"] == "converged" and status["id-c"]["status"] == "converged"


def test_a_1gb_file_is_left_out_named_and_the_controller_stays_under_150_mib(farm: RunningFarm,
                                                                              tmp_path: Path) -> None:
    folder = config(farm, "id-c")
    farm.ssh("id-c", "cd ~/printer_data/config && truncate -s 1G timelapse.mkv && "
                     "head -c 60M /dev/urandom > shaper_calibrate.csv && "
                     "ln -s /etc/hostname outside.cfg && ln -s ../logs logs-link && mkdir -p shared && "
                     "echo '[gcode_macro X]' > shared/macros.cfg && ln -s shared/macros.cfg macros.cfg")
    # the 60 MiB real file fits the raised limits: it travels, and is streamed through the controller
    # (custom_data_keys: until the inventory validation knows the backup's limits)
    raised = inventory(farm, tmp_path / "raised.py", **{
        "id-c": {"config_backup_max_file_mb": 64, "config_backup_max_total_mb": 128,
                 "custom_data_keys": ["config_backup_max_file_mb", "config_backup_max_total_mb"]}})
    child = subprocess.Popen([str(VENV_BIN / "ratos-fleet"), "update", str(raised), "--report", str(tmp_path / "r")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read() if child.stdout else ""
    _, code, usage = os.wait4(child.pid, 0)
    peak_mib = usage.ru_maxrss / 1024  # KiB on Linux
    print(f"ratos-fleet update with a 1 GiB and a 60 MiB file: peak RSS {peak_mib:.1f} MiB")
    assert os.waitstatus_to_exitcode(code) == 0, output
    assert peak_mib < 150, peak_mib
    entry = report_of(tmp_path / "r")["id-c"]
    assert "timelapse.mkv (1.0 GiB, over 64.0 MiB a file)" in entry["config"]["reason"]
    assert "timelapse.mkv" in entry["config"]["backup_skipped"]
    assert re.search(r"\[id-c\].*config backup: left out timelapse\.mkv", output), output
    version = backup.versions(backups(farm) / "id-c")[-1]
    assert (version / "files/shaper_calibrate.csv").read_bytes() == (folder / "shaper_calibrate.csv").read_bytes()
    assert not (version / "files/timelapse.mkv").exists()
    # symlinks are links in the backup, never followed (nothing of /etc or ../logs came along)
    assert backup.version_links(version) == {"outside.cfg": "/etc/hostname", "logs-link": "../logs",
                                             "macros.cfg": "shared/macros.cfg"}
    assert not (version / "files/outside.cfg").exists() and not (version / "files/logs-link").exists()
    # with the default limits the 60 MiB file is left out too, and named
    again = ratos_fleet(farm, farm.inventory, tmp_path / "r2")
    entry = report_of(tmp_path / "r2")["id-c"]
    assert "shaper_calibrate.csv (60.0 MiB, over 16.0 MiB a file)" in entry["config"]["reason"], again.stdout


def test_a_replaced_card_is_stopped_until_accepted_then_gets_its_calibration_back(farm: RunningFarm,
                                                                                   tmp_path: Path) -> None:
    pi = "id-a"
    printer_cfg = config(farm, pi) / "printer.cfg"
    calibrated = printer_cfg.read_bytes()
    new_id = "f" * 32
    farm.ssh(pi, f"echo {new_id} | sudo tee /etc/machine-id >/dev/null")  # the new card...
    printer_cfg.write_text(pihome.ratos_initial_printer_cfg())  # ...as RatOS ships it
    data = {"klipper_commit": farm.info["versions"]["current"]["commit"], "printer_model": "v-core-3",
            "printer_size": 300}
    stopped = farm.pyinfra(str(PROVISION), "--limit", pi, check=False,
                           inventory=inventory(farm, tmp_path / "p1.py", **{pi: data}))
    assert stopped.returncode != 0
    assert f"recorded machine-id {MACHINE_IDS[pi]}" in stopped.stdout and f"seen machine-id {new_id}" in stopped.stdout
    assert printer_cfg.read_text() == pihome.ratos_initial_printer_cfg()  # nothing restored onto an unknown card

    accepted = farm.pyinfra(str(PROVISION), "--limit", pi, check=False, inventory=inventory(
        farm, tmp_path / "p2.py", **{pi: {**data, "printer_identity_accept": new_id}}))
    assert accepted.returncode == 0, accepted.stdout
    assert "restoring backup" in accepted.stdout
    assert printer_cfg.read_bytes() == calibrated
    record = json.loads((backups(farm) / "identities.json").read_text())["printers"][pi]
    assert record["machine_id"] == new_id and record["previous"][0]["machine_id"] == MACHINE_IDS[pi]
    rerun = ratos_fleet(farm, farm.inventory, tmp_path / "r")
    assert report_of(tmp_path / "r")[pi]["status"] == "converged", rerun.stdout


def test_two_new_names_reaching_one_machine_in_one_run_are_both_stopped(farm: RunningFarm, tmp_path: Path) -> None:
    fresh_store = tmp_path / "backups"  # nothing recorded yet: trust on first use cannot pick one
    twins = tmp_path / "twins.py"
    twins.write_text(f"exec(open({str(farm.inventory)!r}).read())\n"
                     f"_d = {{**dict(pis)['id-b'], 'config_backups': {str(fresh_store)!r}}}\n"
                     "pis = [('twin-1', _d), ('twin-2', _d)]\n")
    result = ratos_fleet(farm, twins, tmp_path / "report")
    status = report_of(tmp_path / "report")
    assert result.returncode == 1
    assert status["twin-1"]["status"] == "failed" and status["twin-2"]["status"] == "failed", result.stdout
    assert "reaches the same machine as twin-1 in this run" in status["twin-2"]["reason"]
    assert "reaches the same machine as twin-2 in this run" in result.stdout + result.stderr
    assert not (fresh_store / "identities.json").exists()
    assert not any((fresh_store / name).exists() and backup.versions(fresh_store / name) for name in ("twin-1", "twin-2"))
